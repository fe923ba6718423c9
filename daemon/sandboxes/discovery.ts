import { type FSWatcher, watch } from 'node:fs';
import { lstat, readdir, rmdir, stat, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { isSandboxId, type SandboxId } from '../../core/ids.js';
import { ListenerSet } from '../../core/listeners.js';
import type { LeveledLog } from '../../core/log.js';
import { RerunningTask } from '../../core/rerunning-task.js';
import {
  QmpConnectError,
  type QmpError,
  QmpSession,
  type QmpSessionOptions,
  type QmpSessionStateChange,
  queryStatus,
  type RunState,
} from '../../qmp/index.js';
import type { SandboxDirectory, SandboxPresence } from '../../storage/sandbox-directory.js';
import {
  identityStamp,
  type KataFiles,
  type KataIdentity,
  type PodIdentity,
  readKataIdentity,
} from './identity.js';
import { livenessOf, type ProcessStamp, processStamp } from './process-liveness.js';

// Finds the Kata sandboxes vmplug can drive: every `<monitor-dir>/<sandbox-id>/qmp.sock` made by
// bin/vmplug-qemu (DESIGN section 3). It keeps one reconnecting QMP session per sandbox on that
// private monitor (the engine's commands and the QEMU events both go through it), tracks QEMU's
// run state, and decides when a sandbox is gone.
//
// fs.watch is a hint, not a source of truth (inotify drops events on overflow, and the watched
// directory may not exist yet): every change it reports and a periodic rescan run the same scan.
//
// Gone means: the sandbox's directory is gone; or its socket was there and is gone (QEMU removed
// it on exit); or nobody has listened on it for longer than the grace period (QEMU died without
// cleaning up: connect() is refused), or no socket ever appeared within it. The wrapper never
// removes its directories, so discovery prunes a dead sandbox's leftovers (the stale socket and
// the then empty directory), re-checking just before that nobody listens: a sandbox restarted
// under the same id is never pruned.
//
// A QEMU that dies (SIGKILL, OOM kill, crash) leaves its socket file behind, so the grace period
// alone would keep it "unreachable" for seconds. Its exit is seen at once instead: when the
// monitor connection ends (EOF), discovery checks every EXIT_CHECK_MS whether QEMU's process (pid
// and start time, from Kata's files) is gone and nobody listens on the socket; either proof plus
// the refused connect makes it gone then, not after the grace. With no pid known, EOF plus a
// refused connect suffices: QEMU never closes its listening monitor while it runs.

/** QEMU's run state, coarsely, as the API reports it. */
export type VmState = 'running' | 'paused' | 'shutdown' | 'crashed' | 'unknown';

export interface DiscoveredSandbox {
  id: SandboxId;
  kind: 'kata';
  /** present: vmplug's monitor answers; unreachable: known, but not answering right now. */
  reachability: 'present' | 'unreachable';
  /** Why it is unreachable. */
  reason?: string;
  vmState: VmState;
  /** QEMU's own run state from query-status and events, when known. */
  qemuStatus?: RunState;
  pod?: PodIdentity;
  qemuPid?: number;
  monitorPath: string;
  /** When discovery first saw it (ISO 8601). */
  discoveredAt: string;
  /** Counts connections to its monitor; a new value means QEMU may have restarted. */
  generation: number;
}

export type DiscoveryEvent =
  | { type: 'added'; sandbox: DiscoveredSandbox }
  | { type: 'changed'; sandbox: DiscoveredSandbox }
  | { type: 'removed'; id: SandboxId; reason: string };

/** The pino subset discovery logs with. */
export type DiscoveryLogger = LeveledLog;

export interface DiscoveryOptions {
  monitorDir: string;
  kata: KataFiles;
  logger: DiscoveryLogger;
  /** Periodic rescan; fs.watch only hastens it (default 5000 ms). */
  rescanIntervalMs?: number;
  /** How long a dead monitor (refused, or never created) is tolerated before it is gone (default 15000 ms). */
  goneGraceMs?: number;
  /** Options of each sandbox's QMP session (tests shorten the backoff). */
  session?: QmpSessionOptions;
  /** Bound on query-status (default 5000 ms). */
  statusTimeoutMs?: number;
  now?: () => number;
}

export type DiscoveryListener = (event: DiscoveryEvent) => void;
export type SessionStateListener = (id: SandboxId, change: QmpSessionStateChange) => void;

export interface DiscoveryHealth {
  ok: boolean;
  detail: string;
}

const SOCKET_NAME = 'qmp.sock';
const PROBE_TIMEOUT_MS = 1_000;
/** How often a sandbox whose monitor closed is checked for an exited QEMU. */
const EXIT_CHECK_MS = 100;

interface Entry {
  id: SandboxId;
  dir: string;
  socketPath: string;
  session: QmpSession;
  discoveredAt: string;
  reachability: 'present' | 'unreachable';
  reason: string | undefined;
  vmState: VmState;
  qemuStatus: RunState | undefined;
  identity: KataIdentity;
  identityComplete: boolean;
  /** identityStamp() of the files the identity was read from. */
  identityStamp: string | undefined;
  /** The socket file has been seen at least once. */
  socketSeen: boolean;
  /** Since when the directory has no socket (never seen one yet). */
  socketMissingSince: number | undefined;
  /** Since when connect() keeps being refused (nobody listens). */
  refusingSince: number | undefined;
  unsubscribe: (() => void)[];
  removed: boolean;
  /** The first connection attempt has been decided (connected or failed). */
  settled: boolean;
  /** QEMU's process as first seen alive (pid from Kata's files, start time from /proc). */
  qemu: ProcessStamp | undefined;
  /** An exit watch (after the monitor closed) is running. */
  exitWatch: boolean;
}

export class SandboxDiscovery implements SandboxDirectory {
  readonly #opts: DiscoveryOptions;
  readonly #entries = new Map<SandboxId, Entry>();
  readonly #listeners = new ListenerSet<Parameters<DiscoveryListener>>((err) =>
    this.#opts.logger.warn({ err: (err as Error).message }, 'a discovery listener threw'),
  );
  readonly #sessionListeners = new ListenerSet<Parameters<SessionStateListener>>((err) =>
    this.#opts.logger.warn({ err: (err as Error).message }, 'a session state listener threw'),
  );
  readonly #stopper = new AbortController();
  readonly #now: () => number;
  readonly #graceMs: number;
  #watcher: FSWatcher | undefined;
  /** Inode of the directory the watcher is on: a removed and re-created monitor dir needs a new watch. */
  #watchedIno: number | undefined;
  #timer: NodeJS.Timeout | undefined;
  readonly #scans = new RerunningTask(
    () => this.#scan(),
    () => this.#stopper.signal.aborted,
  );
  #debounce: NodeJS.Timeout | undefined;
  #health: DiscoveryHealth = { ok: false, detail: 'not scanned yet' };
  readonly #skipped = new Set<string>();
  /**
   * Dead sandboxes whose directory could not be pruned (something else in it), by the directory's
   * mtime then: not re-added (and re-declared gone every grace period) until the directory changes.
   */
  readonly #unprunable = new Map<SandboxId, number>();

  private constructor(opts: DiscoveryOptions) {
    this.#opts = opts;
    this.#now = opts.now ?? (() => performance.now());
    this.#graceMs = opts.goneGraceMs ?? 15_000;
  }

  /** Starts watching; resolves after the first scan, so known() is meaningful at once. */
  static async start(opts: DiscoveryOptions): Promise<SandboxDiscovery> {
    const d = new SandboxDiscovery(opts);
    await d.rescan();
    const interval = opts.rescanIntervalMs ?? 5_000;
    d.#timer = setInterval(() => void d.rescan(), interval);
    d.#timer.unref();
    return d;
  }

  lookup(id: SandboxId): SandboxPresence {
    const e = this.#entries.get(id);
    if (e === undefined) return { state: 'gone' };
    if (e.reachability === 'present')
      return { state: 'present', sandbox: { id, kind: 'kata', qmp: e.session } };
    return { state: 'unreachable', reason: e.reason ?? 'its monitor is not connected' };
  }

  known(): SandboxId[] {
    return [...this.#entries.keys()];
  }

  /** Every known sandbox, sorted by id. */
  list(): DiscoveredSandbox[] {
    return [...this.#entries.values()].map((e) => this.#view(e)).sort((a, b) => (a.id < b.id ? -1 : 1));
  }

  get(id: SandboxId): DiscoveredSandbox | undefined {
    const e = this.#entries.get(id);
    return e === undefined ? undefined : this.#view(e);
  }

  /**
   * Resolves once every sandbox known now has connected or failed its first attempt, or after
   * `timeoutMs`: the daemon's start-up reconcile then sees reachable sandboxes as present.
   */
  async settled(timeoutMs: number): Promise<void> {
    const deadline = this.#now() + timeoutMs;
    while (this.#now() < deadline && !this.#stopper.signal.aborted) {
      if ([...this.#entries.values()].every((e) => e.settled || e.removed)) return;
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  /** Whether the monitor directory could be read at the last scan. */
  health(): DiscoveryHealth {
    return { ...this.#health };
  }

  onChange(listener: DiscoveryListener): () => void {
    return this.#listeners.add(listener);
  }

  /** Every state change of every sandbox's monitor session, failed attempts included (metrics). */
  onSessionState(listener: SessionStateListener): () => void {
    return this.#sessionListeners.add(listener);
  }

  /** Scans now; concurrent calls share one scan and ask for one more after it. */
  rescan(): Promise<void> {
    if (this.#stopper.signal.aborted) return Promise.resolve();
    return this.#scans.run();
  }

  /** Stops watching and closes every session. Entries are forgotten, nothing on disk is touched. */
  async close(): Promise<void> {
    this.#stopper.abort();
    clearInterval(this.#timer);
    clearTimeout(this.#debounce);
    this.#watcher?.close();
    this.#watcher = undefined;
    await this.#scans.running?.catch(() => {});
    const entries = [...this.#entries.values()];
    this.#entries.clear();
    await Promise.allSettled(entries.map((e) => this.#release(e)));
  }

  async #scan(): Promise<void> {
    const { monitorDir, logger } = this.#opts;
    const dirStat = await stat(monitorDir).catch(() => undefined);
    if (this.#watcher !== undefined && dirStat?.ino !== this.#watchedIno) {
      this.#watcher.close();
      this.#watcher = undefined;
    }
    if (dirStat?.isDirectory()) this.#ensureWatch(dirStat.ino);
    let names: string[];
    let missing = false;
    try {
      const dirents = await readdir(monitorDir, { withFileTypes: true });
      // The wrapper refuses a symlinked per-sandbox entry, so only real directories count.
      names = dirents.filter((d) => d.isDirectory()).map((d) => d.name);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') {
        // No sandbox has started through the wrapper yet; it creates the directory.
        names = [];
        missing = true;
      } else {
        // Unreadable: keep what is known rather than declare every sandbox gone.
        if (this.#health.ok) logger.warn({ monitorDir, code }, 'cannot read the monitor directory');
        this.#health = { ok: false, detail: `cannot read ${monitorDir} (${code ?? String(err)})` };
        return;
      }
    }
    if (this.#stopper.signal.aborted) return;

    const seen = new Set<SandboxId>();
    for (const name of names) {
      if (name.startsWith('.')) continue;
      if (!isSandboxId(name)) {
        if (!this.#skipped.has(name)) {
          this.#skipped.add(name);
          logger.warn(
            { monitorDir, entry: name.slice(0, 200) },
            'ignoring a monitor entry with an invalid sandbox id',
          );
        }
        continue;
      }
      if (this.#unprunable.has(name)) {
        const mtime = (await stat(join(monitorDir, name)).catch(() => undefined))?.mtimeMs;
        if (mtime === this.#unprunable.get(name)) continue;
        this.#unprunable.delete(name);
      }
      seen.add(name);
      if (!this.#entries.has(name)) this.#add(name);
    }
    for (const e of [...this.#entries.values()]) {
      if (!seen.has(e.id)) this.#remove(e, 'its monitor directory was removed');
    }
    await Promise.allSettled([...this.#entries.values()].map((e) => this.#check(e)));
    this.#health = {
      ok: true,
      detail: missing
        ? `${monitorDir} does not exist yet (no sandbox started)`
        : `${this.#entries.size} sandbox(es) under ${monitorDir}`,
    };
  }

  #ensureWatch(ino: number): void {
    if (this.#watcher !== undefined || this.#stopper.signal.aborted) return;
    try {
      const w = watch(this.#opts.monitorDir, { persistent: false }, () => this.#soon());
      w.on('error', () => {
        // The directory went away or inotify gave up: fall back to rescans until it can be watched.
        w.close();
        if (this.#watcher === w) this.#watcher = undefined;
        this.#soon();
      });
      this.#watcher = w;
      this.#watchedIno = ino;
    } catch {
      // Not there yet: the next rescan tries again.
    }
  }

  /** A watch event: rescan shortly (bursts of events, e.g. mkdir then bind, make one scan). */
  #soon(): void {
    if (this.#debounce !== undefined || this.#stopper.signal.aborted) return;
    this.#debounce = setTimeout(() => {
      this.#debounce = undefined;
      void this.rescan();
    }, 25);
  }

  #add(id: SandboxId): void {
    const dir = join(this.#opts.monitorDir, id);
    const socketPath = join(dir, SOCKET_NAME);
    const session = QmpSession.start(socketPath, {
      connectTimeoutMs: 5_000,
      onListenerError: (err) =>
        this.#opts.logger.warn({ err: (err as Error).message, sandboxId: id }, 'a QMP listener threw'),
      ...this.#opts.session,
    });
    const e: Entry = {
      id,
      dir,
      socketPath,
      session,
      discoveredAt: new Date().toISOString(),
      reachability: 'unreachable',
      reason: 'connecting to its monitor',
      vmState: 'unknown',
      qemuStatus: undefined,
      identity: {},
      identityComplete: false,
      identityStamp: undefined,
      socketSeen: false,
      socketMissingSince: undefined,
      refusingSince: undefined,
      unsubscribe: [],
      removed: false,
      settled: false,
      qemu: undefined,
      exitWatch: false,
    };
    this.#entries.set(id, e);
    e.unsubscribe.push(
      session.onStateChange((change) => {
        if (e.removed) return;
        this.#sessionListeners.emit(id, change);
        e.settled = true;
        if (change.state === 'ready') {
          e.refusingSince = undefined;
          e.socketSeen = true;
          this.#setReach(e, 'present', undefined);
          void this.#refreshStatus(e);
        } else if (change.state === 'connecting') {
          const wasPresent = e.reachability === 'present';
          this.#noteFailure(e, change.error);
          // The monitor closed under us: QEMU may have died; find out now, not after the grace.
          if (wasPresent) void this.#watchExit(e);
        }
      }),
      session.subscribe('STOP', () => this.#onRunEvent(e, 'paused')),
      session.subscribe('RESUME', () => this.#onRunEvent(e, 'running')),
      session.subscribe('SHUTDOWN', () => this.#onRunEvent(e, 'shutdown')),
      session.subscribe('GUEST_PANICKED', () => this.#onRunEvent(e, 'guest-panicked')),
    );
    this.#opts.logger.info({ sandboxId: id, monitor: socketPath }, 'sandbox discovered');
    this.#emit({ type: 'added', sandbox: this.#view(e) });
  }

  #noteFailure(e: Entry, err: QmpError | undefined): void {
    const errno = err instanceof QmpConnectError ? err.errno : undefined;
    if (errno === 'ECONNREFUSED' || errno === 'ENOENT') {
      e.refusingSince ??= this.#now();
    } else if (err?.code === 'QMP_BUSY') {
      // Someone else holds the monitor: QEMU is alive.
      e.refusingSince = undefined;
    }
    this.#setReach(e, 'unreachable', err?.message ?? 'its monitor connection dropped');
  }

  #setReach(e: Entry, reach: 'present' | 'unreachable', reason: string | undefined): void {
    const changed = e.reachability !== reach || (reach === 'unreachable' && e.reason !== reason);
    e.reachability = reach;
    e.reason = reason;
    if (reach === 'present') {
      this.#opts.logger.info(
        { sandboxId: e.id, generation: e.session.generation },
        'sandbox monitor connected',
      );
    }
    // Reconnect attempts repeat the same reason every backoff step: report changes only.
    if (changed) this.#emit({ type: 'changed', sandbox: this.#view(e) });
  }

  #onRunEvent(e: Entry, provisional: RunState): void {
    if (e.removed) return;
    // After SHUTDOWN, QEMU stops the CPUs too (STOP); query-status settles which it is.
    if (!(provisional === 'paused' && e.qemuStatus === 'shutdown')) this.#setStatus(e, provisional);
    void this.#refreshStatus(e);
  }

  async #refreshStatus(e: Entry): Promise<void> {
    try {
      const status = await queryStatus(e.session, {
        timeoutMs: this.#opts.statusTimeoutMs ?? 5_000,
        signal: this.#stopper.signal,
      });
      if (!e.removed) this.#setStatus(e, status.status);
    } catch (err) {
      if (!e.removed && !this.#stopper.signal.aborted) {
        this.#opts.logger.debug({ sandboxId: e.id, err: (err as Error).message }, 'query-status failed');
      }
    }
  }

  #setStatus(e: Entry, status: RunState): void {
    const vmState = vmStateOf(status);
    const changed = e.qemuStatus !== status;
    e.qemuStatus = status;
    e.vmState = vmState;
    if (changed) {
      this.#opts.logger.info({ sandboxId: e.id, qemuStatus: status }, 'sandbox run state');
      this.#emit({ type: 'changed', sandbox: this.#view(e) });
    }
  }

  /** Socket presence, the gone rules, and identity (retried until Kata has written it). */
  async #check(e: Entry): Promise<void> {
    const now = this.#now();
    const st = await lstat(e.socketPath).catch(() => undefined);
    if (e.removed) return;
    if (st?.isSocket()) {
      e.socketSeen = true;
      e.socketMissingSince = undefined;
    } else if (st === undefined && e.socketSeen) {
      await this.#gone(e, 'its monitor socket was removed (QEMU exited)');
      return;
    } else if (st === undefined) {
      e.socketMissingSince ??= now;
      if (now - e.socketMissingSince > this.#graceMs) {
        await this.#gone(e, `no monitor socket appeared within ${this.#graceMs} ms`);
        return;
      }
    }
    if (e.refusingSince !== undefined && (await this.#qemuState(e)) === 'exited') {
      await this.#gone(e, `QEMU (pid ${e.identity.qemuPid}) has exited and nobody listens on its monitor`);
      return;
    }
    if (e.refusingSince !== undefined && now - e.refusingSince > this.#graceMs) {
      await this.#gone(e, `nobody has listened on its monitor for over ${this.#graceMs} ms (QEMU is dead)`);
      return;
    }
    if (!e.identityComplete) await this.#loadIdentity(e);
  }

  /**
   * After the monitor closed: checks every EXIT_CHECK_MS, for at most the grace period and while
   * the monitor stays unconnected, whether QEMU has exited; declares the sandbox gone when it has.
   */
  async #watchExit(e: Entry): Promise<void> {
    if (e.exitWatch) return;
    e.exitWatch = true;
    const deadline = this.#now() + this.#graceMs;
    try {
      while (!e.removed && e.reachability !== 'present' && !this.#stopper.signal.aborted) {
        const why = await this.#exitVerdict(e);
        if (why !== undefined) {
          await this.#gone(e, why);
          return;
        }
        if (this.#now() >= deadline) return;
        await sleep(EXIT_CHECK_MS, undefined, { signal: this.#stopper.signal });
      }
    } catch {
      // Stopped.
    } finally {
      e.exitWatch = false;
    }
  }

  /** Why QEMU must have exited, or undefined while it may be alive. */
  async #exitVerdict(e: Entry): Promise<string | undefined> {
    const st = await lstat(e.socketPath).catch(() => undefined);
    if (st === undefined) return 'its monitor socket was removed (QEMU exited)';
    const qemu = await this.#qemuState(e);
    if (qemu === 'alive' || (await isListening(e.socketPath))) return undefined;
    return qemu === 'exited'
      ? `QEMU (pid ${e.identity.qemuPid}) has exited`
      : 'its monitor closed and nobody listens on it any more (QEMU exited)';
  }

  /** QEMU's process by pid and start time: unknown when Kata's files name no pid. */
  async #qemuState(e: Entry): Promise<'alive' | 'exited' | 'unknown'> {
    const pid = e.identity.qemuPid;
    if (pid === undefined) return 'unknown';
    if (e.qemu === undefined || e.qemu.pid !== pid) {
      e.qemu = await processStamp(pid);
      if (e.qemu === undefined) return 'exited';
    }
    return livenessOf(e.qemu);
  }

  async #loadIdentity(e: Entry): Promise<void> {
    // Sandboxes without a full pod identity (not Kubernetes, or Kata not done writing) are looked
    // at every rescan: only re-read when Kata's files changed.
    const files = { ...this.#opts.kata, monitorDir: this.#opts.monitorDir };
    const stamp = await identityStamp(files, e.id);
    if (stamp === e.identityStamp) return;
    const identity = await readKataIdentity(files, e.id, this.#stopper.signal);
    if (e.removed) return;
    e.identityStamp = stamp;
    const before = JSON.stringify(e.identity);
    e.identity = identity;
    // Stamp QEMU's process while it is alive, so a reused pid is never taken for it later.
    if (identity.qemuPid !== undefined && e.qemu?.pid !== identity.qemuPid) {
      e.qemu = await processStamp(identity.qemuPid);
    }
    // The wrapper's pod.json is known first; Kata's persist.json (which wins, and has QEMU's pid)
    // is still awaited after it.
    e.identityComplete =
      identity.podSource === 'kata' &&
      identity.pod?.uid !== undefined &&
      identity.pod.name !== undefined &&
      identity.pod.namespace !== undefined;
    if (JSON.stringify(identity) !== before) {
      this.#opts.logger.info({ sandboxId: e.id, pod: identity.pod }, 'sandbox identity read from Kata');
      this.#emit({ type: 'changed', sandbox: this.#view(e) });
    }
  }

  /** Prunes a dead sandbox's leftovers, unless it turns out to be alive, and forgets it. */
  async #gone(e: Entry, reason: string): Promise<void> {
    const { logger } = this.#opts;
    const st = await lstat(e.socketPath).catch(() => undefined);
    if (st?.isSocket()) {
      if (await isListening(e.socketPath)) {
        // Restarted under the same id meanwhile: alive after all.
        e.refusingSince = undefined;
        return;
      }
      const again = await lstat(e.socketPath).catch(() => undefined);
      if (again !== undefined && again.ino === st.ino && again.dev === st.dev) {
        await unlink(e.socketPath).catch(() => {});
      }
    }
    if (e.removed) return;
    await rmdir(e.dir).then(
      () => logger.info({ sandboxId: e.id, dir: e.dir }, 'pruned the monitor directory of a dead sandbox'),
      (err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') {
          logger.warn(
            { sandboxId: e.id, dir: e.dir, code: err.code },
            'cannot prune the monitor directory of a dead sandbox; leaving it',
          );
        }
      },
    );
    const left = await stat(e.dir).catch(() => undefined);
    if (left !== undefined) this.#unprunable.set(e.id, left.mtimeMs);
    this.#remove(e, reason);
  }

  #remove(e: Entry, reason: string): void {
    if (e.removed) return;
    e.removed = true;
    this.#entries.delete(e.id);
    void this.#release(e);
    this.#opts.logger.info({ sandboxId: e.id, reason }, 'sandbox gone');
    this.#emit({ type: 'removed', id: e.id, reason });
  }

  async #release(e: Entry): Promise<void> {
    e.removed = true;
    for (const u of e.unsubscribe) u();
    await e.session.close();
  }

  #view(e: Entry): DiscoveredSandbox {
    const v: DiscoveredSandbox = {
      id: e.id,
      kind: 'kata',
      reachability: e.reachability,
      vmState: e.vmState,
      monitorPath: e.socketPath,
      discoveredAt: e.discoveredAt,
      generation: e.session.generation,
    };
    if (e.reachability === 'unreachable' && e.reason !== undefined) v.reason = e.reason;
    if (e.qemuStatus !== undefined) v.qemuStatus = e.qemuStatus;
    if (e.identity.pod !== undefined) v.pod = { ...e.identity.pod };
    if (e.identity.qemuPid !== undefined) v.qemuPid = e.identity.qemuPid;
    return v;
  }

  #emit(event: DiscoveryEvent): void {
    this.#listeners.emit(event);
  }
}

export function vmStateOf(status: RunState): VmState {
  switch (status) {
    case 'running':
      return 'running';
    case 'shutdown':
      return 'shutdown';
    case 'guest-panicked':
    case 'internal-error':
      return 'crashed';
    case 'paused':
    case 'suspended':
    case 'io-error':
    case 'watchdog':
    case 'debug':
    case 'inmigrate':
    case 'postmigrate':
    case 'prelaunch':
    case 'finish-migrate':
    case 'restore-vm':
    case 'save-vm':
    case 'colo':
      return 'paused';
    default:
      return 'unknown';
  }
}

/** True when something accepts connections on the unix socket (a wedged QEMU counts as alive). */
function isListening(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ path });
    const done = (live: boolean): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(live);
    };
    const timer = setTimeout(() => done(true), PROBE_TIMEOUT_MS);
    s.once('connect', () => done(true));
    s.once('error', (err: NodeJS.ErrnoException) =>
      done(!(err.code === 'ECONNREFUSED' || err.code === 'ENOENT')),
    );
  });
}
