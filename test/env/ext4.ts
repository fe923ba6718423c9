/**
 * ext4 filesystems with known files, made and read on the host without mounting anything
 * (mkfs.ext4 -d, debugfs): what a volume holds before a guest mounts it, and what the guest
 * wrote once it is unplugged.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

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

/** A file of the ext4 in `target` (an image file or a device), read without mounting it. */
export async function readExt4File(target: string, path: string): Promise<string> {
  const { stdout } = await run('debugfs', ['-R', `cat ${path}`, target], { timeout: 10_000 });
  return stdout;
}
