import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { fsioAddon } from './native-fsio.js';

// The one way vmplug replaces a file on disk (journal records of volumes, NICs and pod volumes,
// per-attach Ceph conf files, Kata's direct-volume records): write a temp file in the same directory, fsync it, rename it over the target, fsync
// the directory. A reader (QEMU, the next vmplugd after a crash) sees the old file or the new one,
// never half of one, and after the final fsync the new one survives a power cut.

/** Runs one file-system step; callers turn its failure into their own error (the journal's). */
export type FileStep = <T>(operation: string, path: string, fn: () => Promise<T>) => Promise<T>;

const plainStep: FileStep = (_operation, _path, fn) => fn();

export interface AtomicWriteOptions {
  /** Mode of the new file (0600 for journal records, 0644 for files QEMU reads). */
  mode: number;
  /**
   * Creates the directory (recursive) with this mode first, every new entry made durable; left out
   * when the caller did.
   */
  dirMode?: number;
  /**
   * A fixed temp path, for callers whose sweeps look for it by name; the default is
   * `.<name>.<random>.tmp` beside the target, created exclusively.
   */
  tempPath?: string;
  signal?: AbortSignal | undefined;
  step?: FileStep;
  /**
   * False: whole-file replace without the two fsyncs, for a file only a live process reads that a
   * power cut takes down with it (the per-attach rbd conf of a running QEMU). Default true.
   */
  durable?: boolean;
  /**
   * False: the JavaScript path even when the one-trip addon is built (core/native-fsio.ts); its
   * steps then reach `step` one by one. Default true.
   */
  native?: boolean;
}

export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  opts: AtomicWriteOptions,
): Promise<void> {
  const step = opts.step ?? plainStep;
  const durable = opts.durable ?? true;
  const dir = dirname(path);
  const tmp = opts.tempPath ?? join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  opts.signal?.throwIfAborted();
  if (opts.dirMode !== undefined) {
    const dirMode = opts.dirMode;
    await step('mkdir', dir, () => ensureDirDurable(dir, dirMode));
  }
  const addon = opts.native === false || opts.tempPath !== undefined ? undefined : fsioAddon();
  if (addon !== undefined) {
    // One trip for the whole replace: `step` sees it as one operation, the error names the call.
    const bytes =
      typeof data === 'string'
        ? Buffer.from(data)
        : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    await step('replace', path, () =>
      addon.replaceFile(dir, basename(path), basename(tmp), bytes, opts.mode, durable),
    );
    return;
  }
  let renamed = false;
  try {
    const flags = opts.tempPath === undefined ? 'wx' : 'w';
    const fh = await step('create', tmp, () => open(tmp, flags, opts.mode));
    try {
      await step('write', tmp, () => fh.writeFile(data, opts.signal ? { signal: opts.signal } : {}));
      if (durable) await step('fsync', tmp, () => fh.sync());
    } finally {
      await fh.close();
    }
    opts.signal?.throwIfAborted();
    await step('rename', path, () => rename(tmp, path));
    renamed = true;
    if (durable) await fsyncDir(dir, step);
  } finally {
    if (!renamed) await unlink(tmp).catch(() => undefined);
  }
}

/** Makes the directory's entries (a rename, an unlink, a new file) durable. */
export async function fsyncDir(dir: string, step: FileStep = plainStep): Promise<void> {
  const fh = await step('open', dir, () => open(dir, 'r'));
  try {
    await step('fsync', dir, () => fh.sync());
  } finally {
    await fh.close();
  }
}

/** Temp files are `.<name>.<12 hex>.tmp`: hidden, so no reader takes one for a record. */
export function isAtomicTempName(name: string): boolean {
  return /^\..+\.[0-9a-f]{12}\.tmp$/.test(name);
}

/**
 * The whole of a small regular file, in one trip through libuv's pool with the native addon.
 * Rejects like node:fs: ENOENT; EISDIR for a directory and EINVAL for anything else that is not a
 * regular file (a FIFO is never opened for reading); EFBIG when it is larger than `maxBytes`.
 */
export async function readSmallFile(path: string, maxBytes: number, signal?: AbortSignal): Promise<Buffer> {
  signal?.throwIfAborted();
  const addon = fsioAddon();
  if (addon !== undefined) return await addon.readWhole(path, maxBytes);
  const st = await stat(path);
  const refuse = (code: string): never => {
    throw Object.assign(new Error(`${code}: ${path}`), { code, path });
  };
  if (!st.isFile()) refuse(st.isDirectory() ? 'EISDIR' : 'EINVAL');
  if (st.size > maxBytes) refuse('EFBIG');
  return await readFile(path, signal ? { signal } : {});
}

/** Unlinks `path` and makes that durable; false when there was nothing to remove. */
export async function unlinkDurable(path: string): Promise<boolean> {
  const addon = fsioAddon();
  // One trip (unlink, directory fsync) instead of four.
  if (addon !== undefined) return await addon.removeFile(dirname(path), basename(path), true);
  try {
    await unlink(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
  await fsyncDir(dirname(path));
  return true;
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
