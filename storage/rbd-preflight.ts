import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CephStalledError } from '../core/errors.js';
import { blockdevAdd, blockdevDel, objectAdd, type QmpClient } from '../qmp/index.js';
import { blockdevRbd, rbdConf, secretObject } from './qemu-args.js';
import { backendFailure } from './qmp-failure.js';
import { daemonArgv } from './storage-daemon/argv.js';
import { Budget } from './storage-daemon/budget.js';
import { connectMonitor } from './storage-daemon/monitor.js';
import type { RbdSource } from './volume-spec.js';

// Before an rbd blockdev-add in a guest's own QEMU (the `qemu` backend), the image is opened out
// of process first, with a bound: librbd's open reads the image header from an OSD, and a
// blockdev-add that waits on a stalled OSD inside the guest's QEMU freezes the guest's main loop
// (monitor, I/O completion) for the whole stall; client_mount_timeout covers only the monitors.
//
// The throwaway process is a qemu-storage-daemon driven over QMP on a private socket: the same
// secret object and the same blockdev-add arguments as the real attach (so the same librbd open,
// header read included), and the cephx key travels over QMP as it does to the guest's QEMU,
// never in argv or a file. (qemu-img info --image-opts would need the key from a file or argv:
// its --object secret takes `data=` on the command line or `file=`; an inherited /dev/fd/N is no
// way out with node, whose child stdio pipes are socketpairs, which open() on /dev/fd refuses.)
// The open is read-only (no exclusive lock taken), its conf bounds OSD and monitor operations by
// the same bound, and the process is killed when the bound passes: a stalled librbd stays there.

export interface RbdPreflightOptions {
  /** Private directory for the throwaway daemon's socket and conf (created 0700 per run). */
  runDir: string;
  /** Bound of the open (default 5000 ms). */
  timeoutMs?: number;
  binary?: string;
  signal?: AbortSignal;
}

export const DEFAULT_RBD_PREFLIGHT_TIMEOUT_MS = 5_000;

/** qemu-storage-daemon is not installed: the caller decides (vmplugd warns and attaches without). */
export class PreflightUnavailableError extends Error {
  constructor(cause: Error) {
    super('qemu-storage-daemon is not installed; the rbd open cannot be tried out of process', { cause });
  }
}
const NAMES = { node: 'vmplug-preflight', secret: 'vmplug-preflight-key' };

/** Resolves when the image opens in time; CephStalledError when it does not; BackendError when refused. */
export async function preflightRbdOpen(
  source: RbdSource,
  opts: RbdPreflightOptions,
): Promise<{ ms: number }> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_RBD_PREFLIGHT_TIMEOUT_MS;
  const started = performance.now();
  const dir = await mkdtemp(join(opts.runDir, 'pf-'));
  const socketPath = join(dir, 'qmp.sock');
  const confPath = join(dir, 'ceph.conf');
  const seconds = Math.max(1, Math.ceil(timeoutMs / 1000));
  let child: ChildProcess | undefined;
  let qmp: QmpClient | undefined;
  const budget = new Budget({ timeoutMs, ...(opts.signal ? { signal: opts.signal } : {}) }, timeoutMs);
  const deadline = budget.signal;
  try {
    // No secret in it: mon_host and the key go over QMP.
    await writeFile(
      confPath,
      rbdConf({ clientMountTimeoutS: seconds, monOpTimeoutS: seconds, osdOpTimeoutS: seconds }),
      { mode: 0o600 },
    );
    child = spawn(opts.binary ?? 'qemu-storage-daemon', daemonArgv(socketPath), { stdio: 'ignore' });
    const spawned = once(child, 'spawn');
    const failed = once(child, 'error').then(([err]) => {
      throw err;
    });
    await Promise.race([spawned, failed]);
    qmp = await connectMonitor(socketPath, budget);
    const call = { timeoutMs, signal: deadline };
    await objectAdd(qmp, secretObject(NAMES, source.key), call);
    await blockdevAdd(qmp, blockdevRbd(NAMES, source, { readOnly: true, confPath }), call);
    const ms = Math.round(performance.now() - started);
    // Closed, not killed, when it opened: a killed librbd leaves its watch on the image header
    // until the OSD times it out (~30 s), and `rbd rm` refuses the image meanwhile.
    await blockdevDel(qmp, NAMES.node, { timeoutMs: 2_000 }).catch(() => undefined);
    await qmp.execute('quit', undefined, { timeoutMs: 2_000 }).catch(() => undefined);
    if (child.exitCode === null && child.signalCode === null)
      await Promise.race([once(child, 'exit'), sleep(2_000)]);
    return { ms };
  } catch (err) {
    opts.signal?.throwIfAborted();
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT' && e.syscall?.startsWith('spawn')) throw new PreflightUnavailableError(e);
    const ms = Math.round(performance.now() - started);
    if (deadline.aborted || ms >= timeoutMs) {
      throw new CephStalledError(`${source.pool}/${source.image}`, ms, { cause: err });
    }
    throw backendFailure('rbd preflight open', err, [source.key]);
  } finally {
    qmp?.destroy();
    // A librbd blocked on a stalled OSD would not quit: the process is killed, never asked.
    if (child !== undefined && child.exitCode === null && child.signalCode === null) {
      const exited = once(child, 'exit');
      child.kill('SIGKILL');
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  }
}
