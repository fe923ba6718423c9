/**
 * Guest hot-resize latency on real TCG guests, through the same resizers vmplugd uses:
 *   - Kata-shaped sandbox over vmplug's private monitor (QmpResizer): memory +128 MiB (pc-dimm)
 *     request -> reply, and -> the guest's MemTotal grew; -128 MiB -> reply (the guest released
 *     the DIMM) and -> MemTotal back; vCPU 1 -> 2 -> reply, and -> the guest lists the new CPU in
 *     sysfs (it comes up offline without udev: onlining is the guest's job, not timed here).
 *   - libvirt test domain (LibvirtResizer): memory +128 MiB and vCPU 1 -> 2 the same way.
 * vCPU removal is off under TCG (QEMU 7.2 was seen to crash after one), so each guest gets one
 * vCPU sample unless `--vcpu-unplug` lets the bench remove it between rounds (at that risk).
 * Guest-side times include the guest command round trip (a few ms). Prints min / median / max;
 * asserts nothing.
 *
 *   npm run bench:guest-resize -- [<rounds>] [--vcpu-unplug] [--no-libvirt]   (default 5)
 */
import { performance } from 'node:perf_hooks';
import { LibvirtResizer } from '../daemon/resize/libvirt-resizer.js';
import { QmpResizer } from '../daemon/resize/qmp-resizer.js';
import type { GuestResizer } from '../daemon/resize/types.js';
import { LibvirtConnection } from '../libvirt/index.js';
import { QmpClient } from '../qmp/index.js';
import type { GuestAgent } from '../test/env/guest.js';
import { startTestDomain } from '../test/env/libvirt.js';
import { createTestRoot, startKataSandbox } from '../test/env/sandbox.js';
import { hostContext, printTable, type Summary, summarize } from './figures.js';

const args = process.argv.slice(2);
const rounds = Number(args.find((a) => /^\d+$/.test(a)) ?? 5);
const vcpuUnplug = args.includes('--vcpu-unplug');
const withLibvirt = !args.includes('--no-libvirt');
const memTotal = "awk '/^MemTotal:/ {print $2}' /proc/meminfo";

async function waitGuest(guest: GuestAgent, cmd: string, done: (out: string) => boolean): Promise<void> {
  const deadline = performance.now() + 60_000;
  for (;;) {
    if (done((await guest.run(cmd, { timeoutMs: 20_000 })).stdout.trim())) return;
    if (performance.now() > deadline) throw new Error(`guest never satisfied: ${cmd}`);
  }
}

interface Samples {
  [key: string]: number[];
}

function add(s: Samples, key: string, ms: number): void {
  const list = s[key] ?? [];
  list.push(ms);
  s[key] = list;
}

async function measure(label: string, resizer: GuestResizer, guest: GuestAgent, s: Samples): Promise<void> {
  const unplugOk = resizer.kind === 'kata';
  for (let i = 0; i < rounds; i++) {
    const view = await resizer.inspect({});
    // Without a release (libvirt's guest keeps normal-zone memory) slots and maxmem run out.
    if (view.freeMemorySlots === 0 || view.memoryMiB + 128 > view.maxMemoryMiB) break;
    const base = Number((await guest.run(memTotal)).stdout.trim());
    let t0 = performance.now();
    await resizer.setMemory(view.memoryMiB + 128, view, {});
    add(s, `${label} memory +128 MiB: reply`, performance.now() - t0);
    await waitGuest(guest, memTotal, (o) => Number(o) >= base + 120 * 1024);
    add(s, `${label} memory +128 MiB: guest MemTotal`, performance.now() - t0);
    if (unplugOk) {
      const grown = await resizer.inspect({});
      t0 = performance.now();
      await resizer.setMemory(view.memoryMiB, grown, {});
      add(s, `${label} memory -128 MiB: reply (released)`, performance.now() - t0);
      await waitGuest(guest, memTotal, (o) => Number(o) <= base);
      add(s, `${label} memory -128 MiB: guest MemTotal`, performance.now() - t0);
    }
    if (i === 0 || vcpuUnplug) {
      const v = await resizer.inspect({});
      if (v.vcpus < v.maxVcpus) {
        const n = v.vcpus;
        t0 = performance.now();
        await resizer.setVcpus(n + 1, v, {});
        add(s, `${label} vCPU +1: reply`, performance.now() - t0);
        await waitGuest(guest, `[ -e /sys/devices/system/cpu/cpu${n} ] && echo y`, (o) => o === 'y');
        add(s, `${label} vCPU +1: guest lists it`, performance.now() - t0);
        if (vcpuUnplug) await resizer.setVcpus(n, await resizer.inspect({}), {});
      }
    }
  }
}

const samples: Samples = {};
const root = await createTestRoot();
try {
  const sandbox = await startKataSandbox(root, { vcpus: 1, maxVcpus: 2 });
  const qmp = await QmpClient.connect(sandbox.vmplugQmpPath, { timeoutMs: 10_000 });
  await measure('kata', new QmpResizer(qmp, { vcpuUnplugWithoutKvm: vcpuUnplug }), sandbox.guest, samples);
  await qmp.close();
  await sandbox.stop();
  if (withLibvirt) {
    const domain = await startTestDomain({ vcpus: 1, maxVcpus: 2 });
    try {
      const conn = await LibvirtConnection.connect(domain.uri);
      const { uuid } = await conn.lookupByName(domain.name);
      await measure(
        'libvirt',
        new LibvirtResizer(conn, uuid, { vcpuUnplugWithoutKvm: vcpuUnplug }),
        domain.guest,
        samples,
      );
      await conn.close();
    } finally {
      await domain.destroy();
    }
  }
} finally {
  await root.cleanup();
}
const rows = Object.entries(samples).map(([k, v]) => [k, summarize(v)] as [string, Summary]);
printTable(`guest hot-resize, ${rounds} round(s), TCG guests`, rows);
process.stdout.write(`${hostContext()}\n`);
