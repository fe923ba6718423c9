/**
 * ext4 filesystems made on the host without mounting them (mkfs.ext4 -d) and read back the same
 * way (debugfs): what a volume holds before a guest mounts it, and what the guest left there.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { createLoopDevice, type LoopDevice } from './loop.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

/** mkfs.ext4 of `target` (a device or a file), populated with `files` without mounting it. */
export async function mkfsExt4(target: string, files: Record<string, string>): Promise<void> {
  const src = await mkdtemp(join(tmpdir(), 'vmp-ext4-'));
  try {
    for (const [name, text] of Object.entries(files)) await writeFile(join(src, name), text);
    await run('mkfs.ext4', ['-q', '-F', '-d', src, target], { timeout: 30_000 });
  } finally {
    await rm(src, { recursive: true, force: true });
  }
}

/** A loop device (64 MiB unless told) holding an ext4 with `files`. */
export async function ext4Loop(files: Record<string, string>, sizeBytes = 64 * MiB): Promise<LoopDevice> {
  const loop = await createLoopDevice(sizeBytes);
  try {
    await mkfsExt4(loop.path, files);
  } catch (err) {
    await loop.detach().catch(() => undefined);
    throw err;
  }
  return loop;
}

/** An ext4 filesystem image (a regular file) holding `files`. */
export async function ext4Image(
  path: string,
  sizeBytes: number,
  files: Record<string, string>,
): Promise<void> {
  await writeFile(path, '');
  await truncate(path, sizeBytes);
  await mkfsExt4(path, files);
}

/** A file of the ext4 on `device` (or an image file), read on the host without mounting it (debugfs). */
export async function catOnHost(device: string, path: string): Promise<string> {
  if (device.startsWith('/dev/')) await run('blockdev', ['--flushbufs', device], { timeout: 10_000 });
  const { stdout } = await run('debugfs', ['-R', `cat ${path}`, device], { timeout: 10_000 });
  return stdout;
}
