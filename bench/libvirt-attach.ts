/**
 * Figures for volumes into a libvirt domain through vmplugd (in process, --libvirt-uri at the
 * host's libvirtd) and a TCG test domain: for block (loop device, scsi) and rbd (own Ceph,
 * virtio-blk), the PUT's answer, PUT until the guest sees the disk, the DELETE's answer (it
 * waits for libvirt's deviceRemoved), and DELETE until the guest lost the disk. Prints a table;
 * asserts nothing.
 *
 *   npx tsx bench/libvirt-attach.ts [rounds]
 */
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { resolveConfig } from '../daemon/config.js';
import { createLogger } from '../daemon/logger.js';
import { startVmplugd } from '../daemon/main.js';
import type { Attachment } from '../storage/attach-service.js';
import { startCeph } from '../test/env/ceph.js';
import { apiCall } from '../test/env/daemon.js';
import { startTestDomain } from '../test/env/libvirt.js';
import { createLoopDevice } from '../test/env/loop.js';
import { hostContext, printTable, type Summary, summarize } from './figures.js';

const rounds = Number(process.argv[2] ?? 10);
const MiB = 1024 * 1024;

async function main(): Promise<void> {
  const [ceph, domain] = await Promise.all([startCeph(), startTestDomain()]);
  const dir = await mkdtemp(join(tmpdir(), 'vmplvb-'));
  await chmod(dir, 0o711);
  const loop = await createLoopDevice(32 * MiB);
  const config = resolveConfig(
    {
      socket: join(dir, 'vmplug.sock'),
      stateDir: join(dir, 'state'),
      monitorDir: join(dir, 'mon'),
      kataVmRoot: join(dir, 'vc', 'vm'),
      libvirtUri: domain.uri,
      reconcileIntervalMs: '0',
    },
    {},
    null,
  ).config;
  const vmplugd = await startVmplugd({ config, logger: createLogger({ level: 'warn' }) });
  const call = <T>(m: string, p: string, b?: unknown) => apiCall<T>(config.socket, m, p, b, 60_000);
  try {
    for (let i = 0; i < 300; i++) {
      if ((await call('GET', `/v1/sandboxes/${domain.name}`)).status === 200) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    await ceph.createImage('bench-lv', 64 * MiB);
    const bodies = {
      block: { mode: 'block', source: { type: 'hostDevice', path: loop.path } },
      rbd: {
        mode: 'rbd',
        bus: 'virtio-blk',
        source: {
          type: 'rbd',
          pool: ceph.pool,
          image: 'bench-lv',
          monitors: ceph.monitors,
          user: ceph.clientUser,
          key: ceph.clientKey,
        },
      },
    } as const;
    const rows: [string, Summary][] = [];
    for (const mode of ['block', 'rbd'] as const) {
      const put: number[] = [];
      const seen: number[] = [];
      const del: number[] = [];
      const gone: number[] = [];
      for (let i = 0; i < rounds; i++) {
        const path = `/v1/sandboxes/${domain.name}/volumes/bench-${mode}`;
        const t0 = performance.now();
        const r = await call<Attachment>('PUT', path, bodies[mode]);
        put.push(performance.now() - t0);
        if (r.status !== 201) throw new Error(`attach: ${r.status} ${JSON.stringify(r.body)}`);
        const disk = await domain.guest.waitForDisk((d) => d.serial === r.body.serial, { timeoutMs: 30_000 });
        seen.push(disk.seenAt - t0);
        const t1 = performance.now();
        const d = await call('DELETE', path);
        del.push(performance.now() - t1);
        if (d.status !== 204) throw new Error(`detach: ${d.status} ${JSON.stringify(d.body)}`);
        await domain.guest.waitForDiskGone(disk.name, { timeoutMs: 30_000 });
        gone.push(performance.now() - t1);
      }
      rows.push(
        [`${mode}: PUT answered`, summarize(put)],
        [`${mode}: PUT -> guest sees disk`, summarize(seen)],
        [`${mode}: DELETE answered (deviceRemoved)`, summarize(del)],
        [`${mode}: DELETE -> guest lost disk`, summarize(gone)],
      );
    }
    printTable(`libvirt attach through vmplugd (${rounds} rounds each)`, rows);
    process.stdout.write(`${hostContext()}\n`);
  } finally {
    await vmplugd.stop();
    await domain.destroy();
    await loop.detach();
    await ceph.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
