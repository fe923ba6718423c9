import { execFile } from 'node:child_process';
import { lstat, mkdir, readdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { VHOST_USER_BLK_MAJOR } from './naming.js';
import { MAX_MINOR, removeFile } from './state.js';

// The block device node Kata's runtime takes for a vhost-user-blk device: major 241 under
// `<store>/block/devices/`, matched to its socket by name. Kata finds the node by (major, minor),
// so a minor must be unique among the nodes of the store. Node has no mknod(2): coreutils' mknod
// is run with an argument array (no shell).

const run = promisify(execFile);

/** Linux's dev_t split (glibc gnu_dev_major/minor), on the 64-bit value stat gives. */
export function splitDev(rdev: bigint): { major: number; minor: number } {
  const major = Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
  const minor = Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
  return { major, minor };
}

/** The lowest minor not in `used`; vhost-user minors are only names, so any free one serves. */
export function allocateMinor(used: Iterable<number>): number {
  const taken = new Set(used);
  for (let m = 0; m <= MAX_MINOR; m++) if (!taken.has(m)) return m;
  throw new RangeError('every major-241 minor is in use');
}

/** Minors of the major-241 block nodes in the store's devices directory (whoever made them). */
export async function minorsInStore(devicesDir: string): Promise<number[]> {
  let names: string[];
  try {
    names = await readdir(devicesDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const out: number[] = [];
  for (const n of names) {
    const st = await lstat(join(devicesDir, n), { bigint: true }).catch(() => undefined);
    if (st?.isBlockDevice() !== true) continue;
    const { major, minor } = splitDev(st.rdev);
    if (major === VHOST_USER_BLK_MAJOR) out.push(minor);
  }
  return out;
}

export type NodeCheck = 'absent' | 'ours' | 'other';

/** Whether `path` is already the node we want (block, 241:minor). */
export async function checkNode(path: string, minor: number): Promise<NodeCheck> {
  const st = await lstat(path, { bigint: true }).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (st === undefined) return 'absent';
  if (!st.isBlockDevice()) return 'other';
  const d = splitDev(st.rdev);
  return d.major === VHOST_USER_BLK_MAJOR && d.minor === minor ? 'ours' : 'other';
}

/** Makes (or keeps) `path` as block 241:minor, mode 0600. */
export async function ensureDeviceNode(
  path: string,
  minor: number,
  opts: { signal?: AbortSignal; timeoutMs?: number } = {},
): Promise<void> {
  const now = await checkNode(path, minor);
  if (now === 'ours') return;
  // Anything else at our name (a stale node of another minor, a leftover file) is ours to replace:
  // the name is vmplug-derived and the devices directory is Kata's store, not a user's.
  if (now === 'other') await removeFile(path);
  await mkdir(dirname(path), { recursive: true, mode: 0o750 });
  await run('mknod', ['-m', '0600', '--', path, 'b', String(VHOST_USER_BLK_MAJOR), String(minor)], {
    timeout: opts.timeoutMs ?? 5_000,
    ...(opts.signal ? { signal: opts.signal } : {}),
  });
}
