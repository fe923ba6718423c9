import { randomBytes } from 'node:crypto';
import { mkdir, open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

// One durable write, for every file vmplug must find whole after a crash (journal records, the
// Kata direct-volume records): a hidden temp file beside the target, written and fsync'd, renamed
// over the target, then the directory fsync'd so the rename itself survives a power cut. A reader
// sees the old content or the new one, never a torn file.

export interface AtomicWriteOptions {
  /** Mode of the new file (the temp file is created with it, so there is no window with another). */
  mode: number;
  signal?: AbortSignal;
  /** Mode of directories this call creates (recursive); default 0700. */
  dirMode?: number;
}

/** Temp files are `.<name>.<12 hex>.tmp`: hidden, so no reader takes one for a record. */
export function isAtomicTempName(name: string): boolean {
  return /^\..+\.[0-9a-f]{12}\.tmp$/.test(name);
}

export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  opts: AtomicWriteOptions,
): Promise<void> {
  const dir = dirname(path);
  opts.signal?.throwIfAborted();
  await ensureDirDurable(dir, opts.dirMode ?? 0o700);
  const tmp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  let renamed = false;
  try {
    const fh = await open(tmp, 'wx', opts.mode);
    try {
      await fh.writeFile(data, opts.signal ? { signal: opts.signal } : {});
      await fh.sync();
    } finally {
      await fh.close();
    }
    opts.signal?.throwIfAborted();
    await rename(tmp, path);
    renamed = true;
    await fsyncDir(dir);
  } finally {
    if (!renamed) await unlink(tmp).catch(() => undefined);
  }
}

/** Unlinks `path` and makes that durable; false when there was nothing to remove. */
export async function unlinkDurable(path: string): Promise<boolean> {
  try {
    await unlink(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
  await fsyncDir(dirname(path));
  return true;
}

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** mkdir -p with `mode`, then every newly created entry made durable from the first one up. */
export async function ensureDirDurable(dir: string, mode: number): Promise<void> {
  const created = await mkdir(dir, { recursive: true, mode });
  if (created === undefined) return;
  for (let d = dir; ; d = dirname(d)) {
    await fsyncDir(dirname(d));
    if (d === created || dirname(d) === d) break;
  }
}
