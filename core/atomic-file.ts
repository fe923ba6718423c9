import { randomBytes } from 'node:crypto';
import { mkdir, open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

// The one way vmplug replaces a file on disk (journal records of volumes and NICs, per-attach Ceph
// conf files): write a temp file in the same directory, fsync it, rename it over the target, fsync
// the directory. A reader (QEMU, the next vmplugd after a crash) sees the old file or the new one,
// never half of one, and after the final fsync the new one survives a power cut.

/** Runs one file-system step; callers turn its failure into their own error (the journal's). */
export type FileStep = <T>(operation: string, path: string, fn: () => Promise<T>) => Promise<T>;

const plainStep: FileStep = (_operation, _path, fn) => fn();

export interface AtomicWriteOptions {
  /** Mode of the new file (0600 for journal records, 0644 for files QEMU reads). */
  mode: number;
  /** Creates the directory (recursive) with this mode first; left out when the caller did. */
  dirMode?: number;
  /**
   * A fixed temp path, for callers whose sweeps look for it by name; the default is
   * `.<name>.<random>.tmp` beside the target, created exclusively.
   */
  tempPath?: string;
  signal?: AbortSignal | undefined;
  step?: FileStep;
  /**
   * False: no fsync of the file nor of the directory. The replacement stays atomic for every
   * reader and survives the writer being killed (the page cache holds it), but not a power cut or
   * a kernel crash: only for files describing state that dies with the host too. Default true.
   */
  durable?: boolean;
}

export async function writeFileAtomic(
  path: string,
  data: string | Uint8Array,
  opts: AtomicWriteOptions,
): Promise<void> {
  const step = opts.step ?? plainStep;
  const dir = dirname(path);
  const tmp = opts.tempPath ?? join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  opts.signal?.throwIfAborted();
  if (opts.dirMode !== undefined) {
    const dirMode = opts.dirMode;
    await step('mkdir', dir, () => mkdir(dir, { recursive: true, mode: dirMode }));
  }
  let renamed = false;
  try {
    const flags = opts.tempPath === undefined ? 'wx' : 'w';
    const fh = await step('create', tmp, () => open(tmp, flags, opts.mode));
    try {
      await step('write', tmp, () => fh.writeFile(data, opts.signal ? { signal: opts.signal } : {}));
      if (opts.durable !== false) await step('fsync', tmp, () => fh.sync());
    } finally {
      await fh.close();
    }
    opts.signal?.throwIfAborted();
    await step('rename', path, () => rename(tmp, path));
    renamed = true;
    if (opts.durable !== false) await fsyncDir(dir, step);
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
