/**
 * Loop devices backed by sparse files: the host block devices for `block`-mode tests (this
 * kernel has no rbd or nbd module; loop works, and `losetup --find` makes new /dev/loopN through
 * /dev/loop-control when every existing one is busy).
 *
 * Each device is detached and its file removed by detach(), and also when the process exits or
 * gets SIGINT/SIGTERM (synchronously: `losetup --detach` via execFileSync).
 */
import { execFile, execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { DEFAULT_ALLOWED_DEVICES, hostDeviceCheck, hostDevicePolicy } from '../../storage/host-device.js';

/**
 * The test bed's allow-list of block devices (vmplugd's --allowed-devices): the product's default
 * plus loop devices, which stand in for rbd/nbd mappings here.
 */
export const TEST_BED_ALLOWED_DEVICES = `${DEFAULT_ALLOWED_DEVICES},/dev/loop*`;

/** The engines' block-mode check with the test bed's allow-list. */
export const testBedHostDeviceCheck = hostDeviceCheck(hostDevicePolicy(TEST_BED_ALLOWED_DEVICES));

export class LoopError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'LoopError';
    this.code = code;
  }
}

export interface LoopDevice {
  /** `/dev/loopN` */
  path: string;
  backingFile: string;
  sizeBytes: number;
  /** Reads a region of the backing file (what the device holds, once written data is synced). */
  readBacking(offset: number, length: number): Promise<Buffer>;
  /** Writes a region of the backing file directly (visible through the device after a cache drop). */
  writeBacking(offset: number, data: Buffer): Promise<void>;
  /** Detaches the device and removes its backing file. Idempotent. */
  detach(): Promise<void>;
}

export interface CreateLoopOptions {
  /** Parent directory of the backing file's temp dir; default the OS temp dir. */
  dir?: string;
  signal?: AbortSignal;
  /** `losetup -P`: the kernel scans (and rescans, on BLKRRPART) its partition table. */
  partitionScan?: boolean;
}

const losetupTimeoutMs = 15_000;
const dirPrefix = 'vmplug-loop-';
const ownerFile = 'owner.pid';

/** The backing file the kernel has for /dev/loopN (sysfs), or null when it is not attached. */
function sysfsBacking(device: string): string | null {
  try {
    return readFileSync(`/sys/block/${basename(device)}/loop/backing_file`, 'utf8').trim();
  } catch {
    return null;
  }
}

function detachSyncIfOurs(device: string, backingFile: string): void {
  // The number may belong to someone else by now if ours was detached behind our back.
  if (sysfsBacking(device) !== backingFile) return;
  try {
    execFileSync('losetup', ['--detach', device], { timeout: losetupTimeoutMs, stdio: 'ignore' });
  } catch {
    // Detached meanwhile.
  }
}

/**
 * The one piece of process-wide state here: signals and exit are process-wide, and one listener
 * for all devices (instead of one per device) keeps Node's listener-leak warning quiet in tests
 * that make many devices. Listeners are installed only while a device is attached.
 */
const exitCleanups = (() => {
  const pending = new Set<() => void>();
  const runAll = (): void => {
    for (const fn of [...pending]) {
      pending.delete(fn);
      fn();
    }
  };
  const onSignal = (sig: NodeJS.Signals): void => {
    runAll();
    uninstall();
    if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
  };
  const uninstall = (): void => {
    process.off('exit', runAll);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
  return {
    add(fn: () => void): () => void {
      if (pending.size === 0) {
        process.on('exit', runAll);
        process.on('SIGINT', onSignal);
        process.on('SIGTERM', onSignal);
      }
      pending.add(fn);
      return () => {
        if (pending.delete(fn) && pending.size === 0) uninstall();
      };
    },
  };
})();

function losetup(args: string[], signal?: AbortSignal): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      'losetup',
      args,
      { timeout: losetupTimeoutMs, killSignal: 'SIGKILL', ...(signal ? { signal } : {}) },
      (error, stdout, stderr) => {
        if (error) {
          const e = error as NodeJS.ErrnoException & { killed?: boolean };
          const code =
            e.name === 'AbortError' ? 'LOOP_ABORTED' : e.killed ? 'LOOP_TIMEOUT' : 'LOOP_LOSETUP_FAILED';
          reject(
            new LoopError(code, `losetup ${args.join(' ')}: ${String(stderr).trim() || e.message}`, {
              cause: error,
            }),
          );
          return;
        }
        resolve(String(stdout).trim());
      },
    );
  });
}

export async function createLoopDevice(sizeBytes: number, opts: CreateLoopOptions = {}): Promise<LoopDevice> {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 512 !== 0) {
    throw new LoopError('LOOP_BAD_SIZE', `size must be a positive multiple of 512, got ${sizeBytes}`);
  }
  const dir = await mkdtemp(join(opts.dir ?? tmpdir(), dirPrefix));
  const backingFile = join(dir, 'disk.img');
  let path: string | null = null;
  const cleanupSync = (): void => {
    if (path) detachSyncIfOurs(path, backingFile);
    rmSync(dir, { recursive: true, force: true });
  };
  const release = exitCleanups.add(cleanupSync);
  try {
    // Lets sweepStaleLoopDevices tell a dead run's devices from a live one's.
    await writeFile(join(dir, ownerFile), `${process.pid}\n`);
    const f = await open(backingFile, 'wx', 0o600);
    try {
      // truncate, not write: the file stays sparse, so large devices cost no disk.
      await f.truncate(sizeBytes);
    } finally {
      await f.close();
    }
    const args = ['--find', '--show', ...(opts.partitionScan ? ['--partscan'] : []), backingFile];
    path = await losetup(args, opts.signal);
    if (!/^\/dev\/loop\d+$/.test(path))
      throw new LoopError('LOOP_UNEXPECTED', `losetup printed ${JSON.stringify(path)}`);
  } catch (e) {
    cleanupSync();
    release();
    throw e;
  }
  const device = path;
  let detached: Promise<void> | null = null;
  return {
    path: device,
    backingFile,
    sizeBytes,
    readBacking: (offset, length) => readRegion(backingFile, offset, length),
    writeBacking: (offset, data) => writeRegion(backingFile, offset, data),
    detach() {
      detached ??= (async () => {
        release();
        // Only ours: if something already detached it, the number may now belong to someone else.
        if (sysfsBacking(device) === backingFile) await losetup(['--detach', device]);
        await rm(dir, { recursive: true, force: true });
      })();
      return detached;
    },
  };
}

/** Reads `length` bytes at `offset` of a file or block device (short reads past its end are zeros). */
export async function readRegion(file: string, offset: number, length: number): Promise<Buffer> {
  const f = await open(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await f.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return buf;
  } finally {
    await f.close();
  }
}

/** Writes `data` at `offset` of a file or block device and fsyncs it before returning. */
export async function writeRegion(file: string, offset: number, data: Buffer): Promise<void> {
  const f = await open(file, 'r+');
  try {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await f.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
    await f.sync();
  } finally {
    await f.close();
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Detaches loop devices left by test processes that died without cleaning up (SIGKILL, crash),
 * recognised by their backing file in a `vmplug-loop-*` dir whose owner pid is gone. Devices of
 * live processes (other test runs on this machine) are left alone. Returns the devices detached.
 */
export async function sweepStaleLoopDevices(): Promise<string[]> {
  const swept: string[] = [];
  for (const name of readdirSync('/sys/block')) {
    if (!/^loop\d+$/.test(name)) continue;
    const device = `/dev/${name}`;
    const backing = sysfsBacking(device)?.replace(/ \(deleted\)$/, '');
    if (!backing) continue;
    const dir = dirname(backing);
    if (!basename(dir).startsWith(dirPrefix)) continue;
    const owner = Number.parseInt(await readFile(join(dir, ownerFile), 'utf8').catch(() => ''), 10);
    if (Number.isSafeInteger(owner) && owner > 0 && processAlive(owner)) continue;
    try {
      await losetup(['--detach', device]);
      swept.push(device);
    } catch {
      // Detached by someone else meanwhile.
    }
    await rm(dir, { recursive: true, force: true });
  }
  return swept;
}
