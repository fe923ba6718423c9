import { constants, readdirSync, readFileSync, realpathSync } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { readSmallFile } from '../core/atomic-file.js';
import { fsioAddon } from '../core/native-fsio.js';
import { untilAborted } from '../qmp/index.js';
import type { HostUseFacts, KernelBlockDevice, MountFact, SwapFact } from './host-use.js';

// The I/O edge of the host-use check: reads what the kernel says about a block device from
// /proc and /sys. Every read is bounded by the caller's signal (which carries the timeout); the
// decision itself is host-use.ts.

export interface HostFactsPaths {
  /** Default /proc/self/mountinfo (vmplugd must run in the host's mount namespace; see docs/security.md). */
  mountinfo: string;
  /** Default /proc/swaps. */
  swaps: string;
  /** Default /sys. */
  sys: string;
}

export const DEFAULT_HOST_FACTS_PATHS: HostFactsPaths = {
  mountinfo: '/proc/self/mountinfo',
  swaps: '/proc/swaps',
  sys: '/sys',
};

/** `major:minor` of a dev_t as glibc's major()/minor() split it (BigInt: dev_t is 64 bits). */
export function majMinOf(rdev: number | bigint): string {
  const d = BigInt(rdev);
  const major = ((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn);
  const minor = (d & 0xffn) | ((d >> 12n) & ~0xffn);
  return `${major}:${minor}`;
}

// sysfs is kernfs: its attributes and links are generated in memory and never wait on a device
// or a lock a stuck mount could hold. So the sysfs reads here are synchronous: each is a few
// microseconds on the event loop, where a trip through libuv's pool costs a thread wake-up, which
// on a busy node waits for a CPU (in bench:attach the async reads took 0.5 ms a trip). What can
// wait stays asynchronous, under the check's signal: the device path itself (under /dev, but a
// link may lead elsewhere), /proc/self/mountinfo (the mount namespace's lock) and the O_EXCL open.

/** The kernel's name of the block device `majMin` (sysfs), and its device-mapper name if any. */
export async function kernelDevice(
  majMin: string,
  paths: HostFactsPaths,
  signal: AbortSignal,
): Promise<{ device: KernelBlockDevice; sysDir: string; dmName?: string }> {
  signal.throwIfAborted();
  const sysDir = realpathSync(`${paths.sys}/dev/block/${majMin}`);
  const device = { name: basename(sysDir), majMin };
  const dmName = readSysfs(`${sysDir}/dm/name`)?.trim();
  return dmName ? { device, sysDir, dmName } : { device, sysDir };
}

/** A sysfs attribute, or undefined when it is absent or unreadable. */
function readSysfs(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** A sysfs directory's entries, sorted; none when it does not exist. */
function listSysfsDir(dir: string): string[] {
  try {
    return readdirSync(dir).sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

/** The host's mount and swap tables: nothing in them depends on the device being checked. */
export interface HostTables {
  mounts: MountFact[];
  swaps: SwapFact[];
}

/**
 * Reads the host's tables. The check starts this first, so that these reads (each a few round
 * trips through libuv's pool) run while the device itself is looked at.
 */
export async function readHostTables(paths: HostFactsPaths, signal: AbortSignal): Promise<HostTables> {
  const [mounts, swaps] = await Promise.all([
    readTable(paths.mountinfo, signal).then(parseMountinfo),
    readTable(paths.swaps, signal).then((t) => swapFacts(t, signal)),
  ]);
  return { mounts, swaps };
}

/** Larger than any mount table a node has; a bound, not a size anyone meets. */
const TABLE_MAX_BYTES = 64 * 1024 * 1024;

/**
 * A /proc table, whole (readSmallFile: one trip through libuv's pool with the native addon, where
 * readFile costs a trip per 4 KiB of a node's mount table, a seq_file handing out a page per
 * read(2), plus open, fstat and close). The check's signal ends the wait.
 */
async function readTable(path: string, signal: AbortSignal): Promise<string> {
  return (await untilAborted(readSmallFile(path, TABLE_MAX_BYTES, signal), signal)).toString('utf8');
}

export async function gatherHostUseFacts(
  devicePath: string,
  device: KernelBlockDevice,
  sysDir: string,
  paths: HostFactsPaths,
  signal: AbortSignal,
  tables: Promise<HostTables> = readHostTables(paths, signal),
): Promise<HostUseFacts> {
  // The open and the tables (already under way) wait at once; sysfs is read meanwhile.
  const exclusiveP = exclusiveOpenOf(devicePath, signal);
  exclusiveP.catch(() => undefined);
  const [partitions, holders] = partitionsAndHolders(device, sysDir);
  const [{ mounts, swaps }, exclusive] = await Promise.all([tables, exclusiveP]);
  const facts: HostUseFacts = { device, partitions, holders, mounts, swaps, exclusiveOpen: exclusive.state };
  if (exclusive.error !== undefined) facts.exclusiveError = exclusive.error;
  return facts;
}

function partitionsAndHolders(
  device: KernelBlockDevice,
  sysDir: string,
): [KernelBlockDevice[], Record<string, string[]>] {
  const partitions = partitionsOf(device.name, sysDir);
  const holders: Record<string, string[]> = { [device.name]: listSysfsDir(`${sysDir}/holders`) };
  for (const p of partitions) holders[p.name] = listSysfsDir(`${sysDir}/${p.name}/holders`);
  return [partitions, holders];
}

/**
 * A partition is a subdirectory with a `partition` file; its `dev` file holds major:minor. The
 * kernel names a partition after its disk (sda1, loop0p1, nvme0n1p2), so only entries starting
 * with the disk's name are looked at (not queue, power, holders, ...).
 */
function partitionsOf(disk: string, sysDir: string): KernelBlockDevice[] {
  const found: KernelBlockDevice[] = [];
  for (const name of listSysfsDir(sysDir)) {
    if (!name.startsWith(disk) || name === disk) continue;
    if (readSysfs(`${sysDir}/${name}/partition`) === undefined) continue;
    const dev = readSysfs(`${sysDir}/${name}/dev`);
    if (dev !== undefined) found.push({ name, majMin: dev.trim() });
  }
  return found.sort((a, b) => a.name.localeCompare(b.name));
}

/** mountinfo lines: `id parent major:minor root mountpoint opts [optional...] - fstype source superopts`. */
export function parseMountinfo(text: string): MountFact[] {
  const out: MountFact[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    const dash = f.indexOf('-', 6);
    if (f.length < 10 || dash === -1) continue;
    out.push({
      majMin: f[2] ?? '',
      mountPoint: unescapeOctal(f[4] ?? ''),
      source: unescapeOctal(f[dash + 2] ?? ''),
    });
  }
  return out;
}

/** /proc/swaps: a header line, then `filename type size used priority` (spaces escaped as \040). */
export function parseSwaps(text: string): string[] {
  return text
    .split('\n')
    .slice(1)
    .map((l) => l.split(/\s+/)[0] ?? '')
    .filter((f) => f !== '')
    .map(unescapeOctal);
}

async function swapFacts(text: string, signal: AbortSignal): Promise<SwapFact[]> {
  const out: SwapFact[] = [];
  for (const filename of parseSwaps(text)) {
    signal.throwIfAborted();
    // A swapped-on device may be shown by a name that no longer resolves: then the name alone.
    const st = await stat(filename.replace(/ \(deleted\)$/, '')).catch(() => undefined);
    out.push(st?.isBlockDevice() ? { filename, majMin: majMinOf(st.rdev) } : { filename });
  }
  return out;
}

function unescapeOctal(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
}

/**
 * Opens the device O_RDONLY|O_EXCL and closes it at once. On a block device (no O_CREAT) the kernel
 * fails such an open with EBUSY when anything holds the device exclusively: a mounted filesystem,
 * swap, a device-mapper or md member. The open runs on libuv's pool, which cannot be cancelled: on
 * abort the answer is dropped and a late fd closed.
 */
async function exclusiveOpenOf(
  path: string,
  signal: AbortSignal,
): Promise<{ state: 'free' | 'busy' | 'unknown'; error?: string }> {
  signal.throwIfAborted();
  const addon = fsioAddon();
  try {
    if (addon !== undefined) {
      // Open and close in one trip.
      await untilAborted(addon.openExclusive(path), signal);
    } else {
      const fh = await untilAborted(open(path, constants.O_RDONLY | constants.O_EXCL), signal, (late) => {
        void late.close().catch(() => undefined);
      });
      await fh.close();
    }
    return { state: 'free' };
  } catch (err) {
    if (signal.aborted) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EBUSY') return { state: 'busy' };
    // EPERM (a device cgroup), EACCES, ENXIO (a loop device without backing): the other facts
    // may still tell; the decision fails closed when they do not.
    return { state: 'unknown', error: code ?? (err as Error).message };
  }
}
