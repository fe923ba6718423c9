/**
 * Cost of block mode's host-device check (storage/host-device.ts), the work every block-mode attach
 * and every reconcile round does per attached device before anything else: stat, realpath,
 * sysfs, the allow-list, /proc/self/mountinfo, /proc/swaps, holders and the O_EXCL probe. Runs
 * on a free loop device (admitted) and on one with ext4 mounted (refused with DEVICE_IN_USE).
 * Needs root (losetup, mount). Prints min / median / p99 / max; asserts nothing.
 *
 *   npm run bench:host-device-check -- [<rounds>]   (default 200)
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { hostDeviceCheck, hostDevicePolicy } from '../storage/host-device.js';
import { createLoopDevice, TEST_BED_ALLOWED_DEVICES } from '../test/env/loop.js';
import { hostContext, printTable, summarize } from './figures.js';

const run = promisify(execFile);
const rounds = Number(process.argv.slice(2).find((a) => /^\d+$/.test(a)) ?? 200);
const check = hostDeviceCheck(hostDevicePolicy(TEST_BED_ALLOWED_DEVICES));

async function time(path: string): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const t0 = performance.now();
    await check(path, { signal: new AbortController().signal }).catch(() => undefined);
    out.push(performance.now() - t0);
  }
  return out;
}

const free = await createLoopDevice(32 * 1024 * 1024);
const used = await createLoopDevice(32 * 1024 * 1024);
const dir = await mkdtemp(join(tmpdir(), 'vmp-bench-hd-'));
try {
  await run('mkfs.ext4', ['-q', '-F', used.path]);
  await run('mount', ['-t', 'ext4', used.path, dir]);
  try {
    const freeMs = await time(free.path);
    const usedMs = await time(used.path);
    process.stdout.write(`${hostContext()}\n`);
    printTable(`host-device check, ${rounds} rounds each`, [
      ['free loop device (admitted)', summarize(freeMs)],
      ['mounted loop device (409)', summarize(usedMs)],
    ]);
  } finally {
    await run('umount', [dir]);
  }
} finally {
  await rm(dir, { recursive: true, force: true });
  await free.detach();
  await used.detach();
}
