/**
 * The qemu-storage-daemon backend against a real (test) Ceph, no guest:
 *   - ensureExport of a blank image with formatIfBlank ext4 (daemon start, image open, FUSE
 *     export, blkid, mkfs.ext4, vhost-user-blk export, device node);
 *   - ensureExport of the same image after a stop (holds ext4 now: probe only, no mkfs);
 *   - ensureExport repeated on a serving export (what a CSI retry costs);
 *   - stopExport (no client connected);
 *   - the RSS of each storage daemon while all exports serve.
 * Prints the figures; asserts nothing. `measureStorageDaemon()` is exported for
 * bench/pod-publish.ts.
 *
 *   npx tsx bench/storage-daemon.ts [volumes] [image MiB] [ceph descriptor JSON]
 *   (default 4 volumes of 1024 MiB, and a Ceph cluster started for the run)
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createStorageDaemonBackend } from '../storage/storage-daemon/backend.js';
import { exportNameOf } from '../storage/storage-daemon/naming.js';
import type { ExportRequest } from '../storage/storage-daemon/types.js';
import {
  attachCeph,
  type CephCluster,
  type CephDescriptor,
  rbdSourceOf,
  startCeph,
} from '../test/env/ceph.js';
import { hostContext, printTable, type Summary, summarize } from './figures.js';

export interface StorageDaemonFigures {
  ensureFormatMs: Summary;
  ensureNoFormatMs: Summary;
  ensureRepeatMs: Summary;
  stopMs: Summary;
  /** VmRSS of each daemon while its export serves, in MiB. */
  rssMiB: Summary;
}

async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1]);
  return kb / 1024;
}

export async function measureStorageDaemon(
  ceph: CephCluster,
  volumes: number,
  imageBytes: number,
): Promise<StorageDaemonFigures> {
  const dir = await mkdtemp(join(tmpdir(), 'vmp-qsdb-'));
  const backend = createStorageDaemonBackend({ stateDir: join(dir, 's'), store: join(dir, 'vu') });
  const images: string[] = [];
  const f = {
    format: [] as number[],
    noFormat: [] as number[],
    repeat: [] as number[],
    stop: [] as number[],
  };
  const rss: number[] = [];
  const timed = async <T>(into: number[], fn: () => Promise<T>): Promise<T> => {
    const t = performance.now();
    const r = await fn();
    into.push(performance.now() - t);
    return r;
  };
  try {
    const reqs: ExportRequest[] = [];
    for (let i = 0; i < volumes; i++) {
      const image = `bench-qsd-${process.pid}-${i}`;
      await ceph.createImage(image, imageBytes);
      images.push(image);
      reqs.push({
        key: exportNameOf('bench', image),
        source: rbdSourceOf(ceph, image),
        readOnly: false,
        formatIfBlank: 'ext4',
      });
    }
    for (const req of reqs) await timed(f.format, () => backend.ensureExport(req));
    for (const req of reqs) await timed(f.stop, () => backend.stopExport(req.key));
    for (const req of reqs) await timed(f.noFormat, () => backend.ensureExport(req));
    for (const req of reqs) await timed(f.repeat, () => backend.ensureExport(req));
    for (const info of await backend.list()) rss.push(await rssMiB(info.pid));
    for (const req of reqs) await timed(f.stop, () => backend.stopExport(req.key));
  } finally {
    await backend.supervise([]).catch(() => {});
    await backend.close();
    for (const image of images) await ceph.removeImage(image).catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
  return {
    ensureFormatMs: summarize(f.format),
    ensureNoFormatMs: summarize(f.noFormat),
    ensureRepeatMs: summarize(f.repeat),
    stopMs: summarize(f.stop),
    rssMiB: summarize(rss),
  };
}

async function main(): Promise<void> {
  const volumes = Number(process.argv[2] ?? 4);
  const imageMiB = Number(process.argv[3] ?? 1024);
  const descriptor = process.argv[4];
  const ceph = descriptor
    ? attachCeph(JSON.parse(readFileSync(descriptor, 'utf8')) as CephDescriptor)
    : await startCeph();
  try {
    process.stdout.write(
      `${hostContext()}\n${volumes} volumes of ${imageMiB} MiB, one storage daemon each\n`,
    );
    const fig = await measureStorageDaemon(ceph, volumes, imageMiB * 1024 * 1024);
    printTable('storage-daemon backend', [
      ['ensureExport, blank image + mkfs.ext4', fig.ensureFormatMs],
      ['ensureExport, holds ext4 (no format)', fig.ensureNoFormatMs],
      ['ensureExport repeated (serving)', fig.ensureRepeatMs],
      ['stopExport (no client)', fig.stopMs],
    ]);
    const r = fig.rssMiB;
    process.stdout.write(
      `\nstorage daemon RSS per volume (MiB): min ${r.min.toFixed(1)} median ${r.median.toFixed(1)} max ${r.max.toFixed(1)} (n=${r.n})\n`,
    );
  } finally {
    if (!descriptor) await ceph.stop();
  }
}

if (process.argv[1]?.endsWith('storage-daemon.ts')) {
  main().catch((e: unknown) => {
    process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  });
}
