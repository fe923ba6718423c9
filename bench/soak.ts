/**
 * Soak (issue 10): attach/detach cycles through vmplugd's REST API on one real Kata-shaped
 * sandbox, rotating both modes (rbd on the test Ceph, block on a loop device) and both buses
 * (scsi, virtio-blk). Samples vmplugd's RSS (/proc VmRSS), V8 heap used (its /metrics,
 * nodejs_heap_size_used_bytes) and open fds (/proc/<pid>/fd) every `--sample-every` cycles, and
 * prints start, max and end of each, plus failures and cycle times. Asserts nothing; exits 1 when
 * a cycle failed. Everything it started is removed however it ends.
 *
 * `--max-minutes` stops early (between cycles) on a slow machine, and says so.
 *
 *   npm run bench:soak [-- --cycles 1000 --sample-every 25 --max-minutes 15]
 */
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type CephCluster, startCeph } from '../test/env/ceph.js';
import { type DaemonProcess, startServingDaemon } from '../test/env/daemon.js';
import { createLoopDevice, type LoopDevice } from '../test/env/loop.js';
import { rbdRequest } from '../test/env/rbd-request.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../test/env/sandbox.js';
import { hostContext, summarize } from './figures.js';

const MiB = 1024 * 1024;

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const v = i === -1 ? undefined : Number(process.argv[i + 1]);
  return v !== undefined && Number.isFinite(v) && v > 0 ? v : fallback;
}

interface Sample {
  cycle: number;
  rssKiB: number;
  heapBytes: number;
  fds: number;
}

async function sample(d: DaemonProcess, cycle: number): Promise<Sample> {
  const status = await readFile(`/proc/${d.pid}/status`, 'utf8');
  const rssKiB = Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? Number.NaN);
  const fds = (await readdir(`/proc/${d.pid}/fd`)).length;
  const metrics = await d.call<string>('GET', '/metrics');
  const heapBytes = Number(
    /^nodejs_heap_size_used_bytes\s+(\S+)/m.exec(String(metrics.body))?.[1] ?? Number.NaN,
  );
  return { cycle, rssKiB, heapBytes, fds };
}

function line(what: string, values: number[], unit: string, scale = 1): string {
  const f = (v: number | undefined) =>
    v === undefined ? '-' : `${(v / scale).toFixed(scale === 1 ? 0 : 1)}`;
  return `${what.padEnd(10)} start ${f(values[0])} ${unit}, max ${f(Math.max(...values))} ${unit}, end ${f(values.at(-1))} ${unit}`;
}

async function main(): Promise<void> {
  const cycles = arg('cycles', 1000);
  const every = arg('sample-every', 25);
  const maxMs = arg('max-minutes', Number.POSITIVE_INFINITY) * 60_000;
  let root: TestRoot | undefined;
  let sandbox: KataSandbox | undefined;
  let ceph: CephCluster | undefined;
  let daemon: DaemonProcess | undefined;
  let loop: LoopDevice | undefined;
  let dir: string | undefined;
  const image = `soak-${process.pid}`;
  try {
    root = await createTestRoot();
    [ceph, sandbox] = await Promise.all([startCeph(), startKataSandbox(root, { bootTimeoutMs: 180_000 })]);
    await ceph.createImage(image, 16 * MiB);
    loop = await createLoopDevice(16 * MiB);
    dir = await mkdtemp(join(tmpdir(), 'vmp-soak-'));
    daemon = await startServingDaemon(root, sandbox.id, dir);
    const kinds = [
      { name: 'rbd/scsi', body: rbdRequest(ceph, image, { bus: 'scsi' }) },
      {
        name: 'block/scsi',
        body: { mode: 'block', bus: 'scsi', source: { type: 'hostDevice', path: loop.path } },
      },
      { name: 'rbd/virtio-blk', body: rbdRequest(ceph, image, { bus: 'virtio-blk' }) },
      {
        name: 'block/virtio-blk',
        body: { mode: 'block', bus: 'virtio-blk', source: { type: 'hostDevice', path: loop.path } },
      },
    ];
    console.log(`soak: ${cycles} attach/detach cycles on ${sandbox.id}; ${hostContext()}`);
    const samples: Sample[] = [await sample(daemon, 0)];
    const times: Record<string, number[]> = {};
    const failures: string[] = [];
    const started = performance.now();
    let done = 0;
    for (let c = 1; c <= cycles; c++) {
      if (performance.now() - started > maxMs) {
        console.log(`stopped after ${done} cycles: --max-minutes reached`);
        if (samples.at(-1)?.cycle !== done) samples.push(await sample(daemon, done));
        break;
      }
      done = c;
      const kind = kinds[(c - 1) % kinds.length] as (typeof kinds)[number];
      const path = `/v1/sandboxes/${sandbox.id}/volumes/soak-vol`;
      const t0 = performance.now();
      const put = await daemon.call('PUT', path, kind.body, 120_000);
      const del = await daemon.call('DELETE', path, undefined, 120_000);
      const t = times[kind.name] ?? [];
      t.push(performance.now() - t0);
      times[kind.name] = t;
      if (put.status !== 201)
        failures.push(`cycle ${c} ${kind.name}: PUT ${put.status} ${JSON.stringify(put.body)}`);
      if (del.status !== 204)
        failures.push(`cycle ${c} ${kind.name}: DELETE ${del.status} ${JSON.stringify(del.body)}`);
      if (c % every === 0 || c === cycles) {
        samples.push(await sample(daemon, c));
        const s = samples.at(-1) as Sample;
        console.log(
          `  cycle ${c}: rss ${(s.rssKiB / 1024).toFixed(1)} MiB, heap ${(s.heapBytes / MiB).toFixed(1)} MiB, fds ${s.fds}, failures ${failures.length}, ${Math.round((performance.now() - started) / 1000)} s`,
        );
      }
    }
    const wall = performance.now() - started;
    console.log(`\n${done} cycles in ${(wall / 1000).toFixed(0)} s, ${failures.length} failure(s)`);
    console.log(
      line(
        'RSS',
        samples.map((s) => s.rssKiB),
        'MiB',
        1024,
      ),
    );
    console.log(
      line(
        'heap used',
        samples.map((s) => s.heapBytes),
        'MiB',
        MiB,
      ),
    );
    console.log(
      line(
        'open fds',
        samples.map((s) => s.fds),
        '',
      ),
    );
    for (const [name, t] of Object.entries(times)) {
      const s = summarize(t);
      console.log(
        `${name.padEnd(17)} cycle (attach+detach) median ${s.median.toFixed(0)} ms, p99 ${s.p99.toFixed(0)} ms, max ${s.max.toFixed(0)} ms, n=${t.length}`,
      );
    }
    for (const f of failures.slice(0, 10)) console.log(`  ${f}`);
    if (failures.length > 0) process.exitCode = 1;
  } finally {
    await daemon?.stop().catch(() => undefined);
    await sandbox?.stop().catch(() => undefined);
    await root?.cleanup().catch(() => undefined);
    await loop?.detach().catch(() => undefined);
    if (ceph) {
      await ceph.removeImage(image).catch(() => undefined);
      await ceph.stop().catch(() => undefined);
    }
    if (dir) await rm(dir, { recursive: true, force: true });
  }
}

await main();
