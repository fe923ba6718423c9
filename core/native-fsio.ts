import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

// libvirt/native/src/fsio.cc (its own node-gyp target, libc only): core/atomic-file.ts's write as
// one call on one libuv pool thread instead of eight trips, and the host check's whole-file reads
// of /proc tables and its O_EXCL probe, one trip each. Loaded once, by path (the native build
// lives under libvirt/native/ with vmplug's other addons); when it is not built, or
// VMPLUG_NATIVE_FSIO=0 (bench comparisons), callers take the JavaScript path, which makes the same
// syscalls in the same order.

export interface FsioAddon {
  /**
   * Creates `tempName` in `dir` (O_EXCL, `mode`), writes `data`, fsyncs it (`durable`), renames it
   * over `name`, fsyncs `dir` (`durable`); unlinks the temp file on failure. Rejects with an Error
   * carrying `code` (errno name), `syscall` and `path`, as node:fs does.
   */
  replaceFile(
    dir: string,
    name: string,
    tempName: string,
    data: Buffer,
    mode: number,
    durable: boolean,
  ): Promise<void>;
  /** open, read to the end, close; regular files only (EISDIR, EINVAL), EFBIG past `maxBytes`. */
  readWhole(path: string, maxBytes: number): Promise<Buffer>;
  /** unlink, then fsync of `dir` when `durable` and something was removed; false when none was there. */
  removeFile(dir: string, name: string, durable: boolean): Promise<boolean>;
  /** open(O_RDONLY | O_EXCL) and close: EBUSY while something holds a block device exclusively. */
  openExclusive(path: string): Promise<void>;
}

let loaded: FsioAddon | null | undefined;

/** The addon, or undefined when it is not built or turned off. */
export function fsioAddon(): FsioAddon | undefined {
  if (loaded === undefined) loaded = load();
  return loaded ?? undefined;
}

function load(): FsioAddon | null {
  if (process.env.VMPLUG_NATIVE_FSIO === '0') return null;
  const require = createRequire(import.meta.url);
  const rel = 'libvirt/native/build/Release/vmplug_fsio.node';
  // Sources (core/) and the build (dist/core/).
  for (const url of [new URL(`../${rel}`, import.meta.url), new URL(`../../${rel}`, import.meta.url)]) {
    try {
      return require(fileURLToPath(url)) as FsioAddon;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') return null;
    }
  }
  return null;
}
