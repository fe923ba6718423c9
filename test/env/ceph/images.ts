import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CephEnvError } from './errors.js';
import { runProgram } from './run.js';

export interface ImageTarget {
  dir: string;
  pool: string;
  adminArgs: readonly string[];
}

const imageName = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$/;
const cliTimeoutMs = 60_000;

function checkName(name: string): void {
  if (!imageName.test(name))
    throw new CephEnvError('CEPH_BAD_IMAGE_NAME', `bad image name ${JSON.stringify(name)}`);
}

function rbd(t: ImageTarget, args: string[], signal?: AbortSignal) {
  return runProgram('rbd', [...t.adminArgs, ...args], { timeoutMs: cliTimeoutMs, signal });
}

export async function createImage(t: ImageTarget, name: string, sizeBytes: number): Promise<void> {
  checkName(name);
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 512 !== 0) {
    throw new CephEnvError(
      'CEPH_BAD_SIZE',
      `image size must be a positive multiple of 512, got ${sizeBytes}`,
    );
  }
  await rbd(t, ['create', '--pool', t.pool, '--size', `${sizeBytes}B`, name]);
}

export async function removeImage(t: ImageTarget, name: string): Promise<void> {
  checkName(name);
  await rbd(t, ['rm', '--no-progress', '--pool', t.pool, name]);
}

interface RbdInfo {
  size: number;
  object_size: number;
  block_name_prefix: string;
  stripe_unit?: number;
  stripe_count?: number;
}

async function info(t: ImageTarget, name: string): Promise<RbdInfo> {
  checkName(name);
  const { stdout } = await rbd(t, ['info', '--format', 'json', '--pool', t.pool, name]);
  return JSON.parse(stdout.toString('utf8')) as RbdInfo;
}

export async function imageSize(t: ImageTarget, name: string): Promise<number> {
  return (await info(t, name)).size;
}

export async function listImages(t: ImageTarget): Promise<string[]> {
  const { stdout } = await rbd(t, ['ls', '--format', 'json', '--pool', t.pool]);
  return JSON.parse(stdout.toString('utf8')) as string[];
}

/** Scratch files live in the cluster's dir, so `stop()` removes whatever a crash left behind. */
async function withScratch<T>(t: ImageTarget, fn: (file: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(t.dir, 'scratch-'));
  try {
    return await fn(join(dir, randomBytes(4).toString('hex')));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export async function exportImage(t: ImageTarget, name: string): Promise<Buffer> {
  checkName(name);
  return withScratch(t, async (file) => {
    await rbd(t, ['export', '--no-progress', '--pool', t.pool, name, file]);
    return readFile(file);
  });
}

/** Creates a new image holding exactly `data` (`rbd import`). */
export async function importImage(t: ImageTarget, name: string, data: Buffer): Promise<void> {
  checkName(name);
  await withScratch(t, async (file) => {
    await writeFile(file, data, { mode: 0o600 });
    await rbd(t, ['import', '--no-progress', '--dest-pool', t.pool, file, name]);
  });
}

/**
 * Reads a range straight from the image's RADOS objects, so a test can check a few blocks of a
 * large image without exporting it. Objects never written do not exist and read as zeros.
 */
export async function readImage(
  t: ImageTarget,
  name: string,
  offset: number,
  length: number,
): Promise<Buffer> {
  const i = await info(t, name);
  if (offset < 0 || length < 0 || offset + length > i.size) {
    throw new CephEnvError(
      'CEPH_BAD_RANGE',
      `range ${offset}+${length} outside image ${name} of ${i.size} bytes`,
    );
  }
  if ((i.stripe_count ?? 1) !== 1 || (i.stripe_unit ?? i.object_size) !== i.object_size) {
    // Fancy striping interleaves objects; not worth mapping for tests.
    return (await exportImage(t, name)).subarray(offset, offset + length);
  }
  const out = Buffer.alloc(length);
  const first = Math.floor(offset / i.object_size);
  const last = length === 0 ? first - 1 : Math.floor((offset + length - 1) / i.object_size);
  await withScratch(t, async (file) => {
    for (let n = first; n <= last; n++) {
      const obj = `${i.block_name_prefix}.${n.toString(16).padStart(16, '0')}`;
      const data = await readObject(t, obj, file);
      if (!data) continue;
      const objStart = n * i.object_size;
      const from = Math.max(offset, objStart);
      const to = Math.min(offset + length, objStart + i.object_size);
      // An object may be shorter than object_size: its tail was never written.
      data.subarray(from - objStart, Math.min(to - objStart, data.length)).copy(out, from - offset);
    }
  });
  return out;
}

async function readObject(t: ImageTarget, obj: string, file: string): Promise<Buffer | null> {
  try {
    await runProgram('rados', [...t.adminArgs, '--pool', t.pool, 'get', obj, file], {
      timeoutMs: cliTimeoutMs,
    });
  } catch (e) {
    if (e instanceof CephEnvError && /No such file or directory|\(2\)/.test(e.message)) return null;
    throw e;
  }
  try {
    return await readFile(file);
  } finally {
    await rm(file, { force: true });
  }
}
