import { open, rename } from 'node:fs/promises';

/**
 * Writes a small file whole: a temp file beside it, fsync, rename. A reader (QEMU, Kata, a
 * restarted vmplugd) sees the old content or the new one, never half of it.
 */
export async function writeFileAtomic(path: string, data: string, mode: number): Promise<void> {
  const tmp = `${path}.tmp`;
  const fh = await open(tmp, 'w', mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}
