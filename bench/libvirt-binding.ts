/**
 * Figures for vmplug's libvirt addon against the host's libvirtd and a test domain (TCG guest):
 * call round trip, live scsi attach until the guest sees the disk, detach until DEVICE_REMOVED
 * and until the guest lost it, and lifecycle event latency. Prints medians; asserts nothing.
 *
 *   npm run bench:libvirt-binding [-- <rounds>]
 */
import { truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { DomainModify, LibvirtConnection, parseLibvirtUuid } from '../libvirt/index.js';
import { ensureLibvirtd, startTestDomain } from '../test/env/libvirt.js';

const rounds = Number(process.argv[2] ?? 10);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}
const fmt = (xs: number[]): string =>
  `median ${median(xs).toFixed(1)} ms (min ${Math.min(...xs).toFixed(1)}, max ${Math.max(...xs).toFixed(1)}, n=${xs.length})`;

async function main(): Promise<void> {
  const { uri } = await ensureLibvirtd();
  const conn = await LibvirtConnection.connect(uri);
  const domain = await startTestDomain();
  try {
    const uuid = parseLibvirtUuid(domain.uuid);
    const rt: number[] = [];
    for (let i = 0; i < 200; i++) {
      const t0 = performance.now();
      await conn.getState(uuid);
      rt.push(performance.now() - t0);
    }

    const attachSeen: number[] = [];
    const detachEvent: number[] = [];
    const detachGone: number[] = [];
    const image = join(domain.dir, 'bench.raw');
    await writeFile(image, '', { mode: 0o600 });
    await truncate(image, 16 * 1024 * 1024);
    for (let i = 0; i < rounds; i++) {
      const alias = `ua-vmplug-bench${i}`;
      const xml = `<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='${image}'/><target dev='sdb' bus='scsi'/><serial>bench${i}</serial><alias name='${alias}'/></disk>`;
      const before = new Set(domain.guest.disks().map((d) => d.name));
      const t0 = performance.now();
      await conn.attachDeviceFlags(uuid, xml, DomainModify.LIVE);
      const disk = await domain.guest.waitForDisk((d) => !before.has(d.name), { timeoutMs: 30_000 });
      attachSeen.push(disk.seenAt - t0);

      const removed = conn.waitForEvent((e) => e.kind === 'deviceRemoved' && e.alias === alias, {
        timeoutMs: 30_000,
      });
      const t1 = performance.now();
      await conn.detachDeviceFlags(uuid, xml, DomainModify.LIVE);
      detachEvent.push((await removed).receivedAt - t1);
      detachGone.push((await domain.guest.waitForDiskGone(disk.name, { timeoutMs: 30_000 })).at - t1);
    }

    const suspendEv: number[] = [];
    const resumeEv: number[] = [];
    for (let i = 0; i < rounds; i++) {
      for (const [op, event, into] of [
        ['suspend', 'suspended', suspendEv],
        ['resume', 'resumed', resumeEv],
      ] as const) {
        const seen = conn.waitForEvent(
          (e) => e.kind === 'lifecycle' && e.domain.uuid === uuid && e.event === event,
          { timeoutMs: 30_000 },
        );
        const t0 = performance.now();
        await conn[op](uuid);
        into.push((await seen).receivedAt - t0);
      }
    }

    const out = [
      `libvirt binding, TCG test guest, ${rounds} rounds`,
      `getState round trip:                     ${fmt(rt)}`,
      `attachDeviceFlags(scsi, live) -> guest:  ${fmt(attachSeen)}`,
      `detachDeviceFlags -> DEVICE_REMOVED:     ${fmt(detachEvent)}`,
      `detachDeviceFlags -> guest lost disk:    ${fmt(detachGone)}`,
      `suspend call -> 'suspended' event:       ${fmt(suspendEv)}`,
      `resume call -> 'resumed' event:          ${fmt(resumeEv)}`,
    ];
    process.stdout.write(`${out.join('\n')}\n`);
  } finally {
    await domain.destroy();
    await conn.close();
  }
}

await main();
