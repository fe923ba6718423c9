import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CephStalledError } from '../core/errors.js';
import { Semaphore } from '../core/gate.js';
import { blockdevAdd, blockdevDel, objectAdd, objectDel, type QmpExecutor } from '../qmp/index.js';
import { blockdevRbd, rbdConf, secretObject } from './qemu-args.js';
import { backendFailure } from './qmp-failure.js';
import { daemonArgv } from './storage-daemon/argv.js';
import { Budget } from './storage-daemon/budget.js';
import { connectMonitor } from './storage-daemon/monitor.js';
import { findDaemons, signalIfSame } from './storage-daemon/process.js';
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
//
// Only the open is on the attach's path. Closing the image (blockdev-del, secret object-del) runs
// after the answer, and a daemon that closed cleanly waits idle (at most `maxIdle`, for `idleMs`)
// for the next preflight: every open is still a fresh librados session, but the daemon's start
// (exec, libraries, QMP handshake) is paid once per burst rather than once per attach. A daemon
// that failed, timed out or did not close cleanly is killed, never reused.

export interface RbdPreflightOptions {
  /** Private directory for the throwaway daemons' sockets and confs (0700, made by the caller). */
  runDir: string;
  /** Bound of the open (default 5000 ms). */
  timeoutMs?: number;
  binary?: string;
  /** Daemons kept idle for the next preflight (default 2; 0 = a fresh process every time). */
  maxIdle?: number;
  /**
   * Opens running at once (default 8); more wait, in arrival order, and their bound starts when
   * their open does. Attaches queued behind a busy sandbox start theirs before their turn
   * (engine.ts), so a burst would otherwise start a daemon per attach on a node of few cores.
   */
  maxConcurrent?: number;
  /** How long an idle daemon waits for a preflight before it quits (default 60 s). */
  idleMs?: number;
  /** Starts one daemon (tests); default: qemu-storage-daemon under runDir. */
  launch?: (budget: Budget) => Promise<PreflightDaemon>;
}

export const DEFAULT_RBD_PREFLIGHT_TIMEOUT_MS = 5_000;

/** qemu-storage-daemon is not installed: the caller decides (vmplugd warns and attaches without). */
export class PreflightUnavailableError extends Error {
  constructor(cause: Error) {
    super('qemu-storage-daemon is not installed; the rbd open cannot be tried out of process', { cause });
  }
}

/** One throwaway daemon, its monitor connected. */
export interface PreflightDaemon {
  qmp: QmpExecutor;
  /** The conf its rbd opens use (monitor, mount and OSD timeouts = the bound). */
  confPath: string;
  alive(): boolean;
  /** Asks it to quit (bounded), then kills it; its directory goes. */
  quit(): Promise<void>;
  /** SIGKILL (a stalled librbd would not quit); its directory goes. */
  kill(): Promise<void>;
}

const NAMES = { node: 'vmplug-preflight', secret: 'vmplug-preflight-key' };
const BINARY = 'qemu-storage-daemon';
/** Bound of each step of closing an opened image. */
const CLOSE_MS = 2_000;

export class RbdPreflight {
  readonly #timeoutMs: number;
  readonly #maxIdle: number;
  readonly #idleMs: number;
  readonly #launch: (budget: Budget) => Promise<PreflightDaemon>;
  readonly #slots: Semaphore;
  readonly #idle: Array<{ daemon: PreflightDaemon; timer: NodeJS.Timeout }> = [];
  /** Closes and quits running after their preflight answered; close() waits for them. */
  readonly #background = new Set<Promise<void>>();
  #closed = false;

  constructor(readonly opts: RbdPreflightOptions) {
    this.#timeoutMs = opts.timeoutMs ?? DEFAULT_RBD_PREFLIGHT_TIMEOUT_MS;
    this.#maxIdle = opts.maxIdle ?? 2;
    this.#idleMs = opts.idleMs ?? 60_000;
    this.#slots = new Semaphore(opts.maxConcurrent ?? 8);
    const seconds = Math.max(1, Math.ceil(this.#timeoutMs / 1000));
    this.#launch =
      opts.launch ?? ((budget) => launchDaemon(opts.runDir, opts.binary ?? BINARY, seconds, budget));
  }

  /** Daemons idle right now (tests, figures). */
  get idle(): number {
    return this.#idle.length;
  }

  /**
   * Resolves when the image opens in time; CephStalledError when it does not; BackendError when
   * refused. `ahead`: an attach still waiting for its sandbox's turn asks; one in its turn (which
   * holds its sandbox meanwhile) goes before every such open waiting for a slot.
   */
  async open(
    source: RbdSource,
    signal?: AbortSignal,
    opts: { ahead?: boolean } = {},
  ): Promise<{ ms: number }> {
    const release = await this.#slots.acquire(signal, { urgent: opts.ahead !== true });
    try {
      return await this.#open(source, signal);
    } finally {
      release();
    }
  }

  async #open(source: RbdSource, signal?: AbortSignal): Promise<{ ms: number }> {
    const started = performance.now();
    const budget = new Budget({ timeoutMs: this.#timeoutMs, ...(signal ? { signal } : {}) }, this.#timeoutMs);
    let daemon: PreflightDaemon | undefined;
    try {
      daemon = this.#takeIdle();
      if (daemon !== undefined) {
        try {
          await objectAdd(daemon.qmp, secretObject(NAMES, source.key), budget.call());
        } catch {
          // An idle daemon that died or misbehaves is dropped; a fresh one gets the same try.
          this.#track(daemon.kill());
          daemon = undefined;
        }
      }
      if (daemon === undefined) {
        daemon = await this.#launch(budget);
        await objectAdd(daemon.qmp, secretObject(NAMES, source.key), budget.call());
      }
      await blockdevAdd(
        daemon.qmp,
        blockdevRbd(NAMES, source, { readOnly: true, confPath: daemon.confPath }),
        budget.call(),
      );
      const ms = Math.round(performance.now() - started);
      this.#track(this.#release(daemon));
      daemon = undefined;
      return { ms };
    } catch (err) {
      // A librbd blocked on a stalled OSD would not quit: the process is killed, never asked.
      if (daemon !== undefined) await daemon.kill();
      signal?.throwIfAborted();
      if (err instanceof PreflightUnavailableError) throw err;
      const ms = Math.round(performance.now() - started);
      if (budget.signal.aborted || ms >= this.#timeoutMs) {
        throw new CephStalledError(`${source.pool}/${source.image}`, ms, { cause: err });
      }
      throw backendFailure('rbd preflight open', err, [source.key]);
    }
  }

  /** Quits the idle daemons and waits for closes in flight; later opens still work (fresh daemons). */
  async close(): Promise<void> {
    this.#closed = true;
    for (const { daemon, timer } of this.#idle.splice(0)) {
      clearTimeout(timer);
      this.#track(daemon.quit());
    }
    while (this.#background.size > 0) await Promise.allSettled([...this.#background]);
  }

  /**
   * Kills daemons a previous vmplugd left (killed while one was open or idle) and their
   * directories; before the first open.
   */
  async sweep(): Promise<number> {
    const stale = await findDaemons(this.opts.binary ?? BINARY, this.opts.runDir);
    for (const d of stale) await signalIfSame(d, 'SIGKILL');
    for (const name of await readdir(this.opts.runDir).catch(() => [] as string[])) {
      if (name.startsWith('pf-')) await rm(join(this.opts.runDir, name), { recursive: true, force: true });
    }
    return stale.length;
  }

  #takeIdle(): PreflightDaemon | undefined {
    for (;;) {
      const entry = this.#idle.pop();
      if (entry === undefined) return undefined;
      clearTimeout(entry.timer);
      if (entry.daemon.alive()) return entry.daemon;
      this.#track(entry.daemon.kill());
    }
  }

  /** After an open: the image closed (never killed while open: its watch would linger ~30 s), then idle or gone. */
  async #release(daemon: PreflightDaemon): Promise<void> {
    try {
      await blockdevDel(daemon.qmp, NAMES.node, { timeoutMs: CLOSE_MS });
      await objectDel(daemon.qmp, NAMES.secret, { timeoutMs: CLOSE_MS });
    } catch {
      await daemon.kill();
      return;
    }
    if (this.#closed || this.#idle.length >= this.#maxIdle || !daemon.alive()) {
      await daemon.quit();
      return;
    }
    const timer = setTimeout(() => {
      const i = this.#idle.findIndex((e) => e.daemon === daemon);
      if (i >= 0) this.#idle.splice(i, 1);
      this.#track(daemon.quit());
    }, this.#idleMs);
    timer.unref();
    this.#idle.push({ daemon, timer });
  }

  #track(p: Promise<void>): void {
    const settled = p.catch(() => undefined);
    this.#background.add(settled);
    void settled.then(() => this.#background.delete(settled));
  }
}

/** A qemu-storage-daemon in a fresh `pf-*` directory under runDir, its monitor connected. */
async function launchDaemon(
  runDir: string,
  binary: string,
  seconds: number,
  budget: Budget,
): Promise<PreflightDaemon> {
  const dir = await mkdtemp(join(runDir, 'pf-'));
  const socketPath = join(dir, 'qmp.sock');
  const confPath = join(dir, 'ceph.conf');
  let child: ChildProcess | undefined;
  const kill = async (): Promise<void> => {
    if (child !== undefined && child.exitCode === null && child.signalCode === null) {
      const exited = once(child, 'exit');
      child.kill('SIGKILL');
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    // No secret in it: mon_host and the key go over QMP.
    await writeFile(
      confPath,
      rbdConf({ clientMountTimeoutS: seconds, monOpTimeoutS: seconds, osdOpTimeoutS: seconds }),
      { mode: 0o600 },
    );
    const c = spawn(binary, daemonArgv(socketPath), { stdio: 'ignore' });
    child = c;
    const failed = once(c, 'error').then(([err]) => {
      throw err;
    });
    failed.catch(() => undefined);
    await Promise.race([once(c, 'spawn'), failed]);
    const qmp = await connectMonitor(socketPath, budget);
    const alive = (): boolean => c.exitCode === null && c.signalCode === null;
    return {
      qmp,
      confPath,
      alive,
      kill: async () => {
        qmp.destroy();
        await kill();
      },
      quit: async () => {
        await qmp.execute('quit', undefined, { timeoutMs: CLOSE_MS }).catch(() => undefined);
        if (alive()) await Promise.race([once(c, 'exit'), sleep(CLOSE_MS)]);
        qmp.destroy();
        await kill();
      },
    };
  } catch (err) {
    await kill();
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT' && e.syscall?.startsWith('spawn')) throw new PreflightUnavailableError(e);
    throw err;
  }
}
