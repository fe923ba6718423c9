import { execFile } from 'node:child_process';
import { mkdir, readdir, rm, rmdir } from 'node:fs/promises';
import { basename } from 'node:path';
import { promisify } from 'node:util';
import { writeFileAtomic } from '../../core/atomic-file.js';
import {
  BackendError,
  CephUnreachableError,
  ConflictError,
  DetachPendingError,
  ValidationError,
  VmplugError,
} from '../../core/errors.js';
import { KeyedMutex, Semaphore } from '../../core/gate.js';
import { type QmpClient, QmpCommandError } from '../../qmp/index.js';
import { probeMonitors } from '../ceph-probe.js';
import { type RbdConfOptions, rbdConf } from '../qemu-args.js';
import { backendFailure, isCephConnectFailure } from '../qmp-failure.js';
import { formatMonitor, type Monitor, type RbdSource } from '../volume-spec.js';
import { type Launcher, launchCommand } from './argv.js';
import { Budget, sleep } from './budget.js';
import { allocateMinor, ensureDeviceNode, minorsInStore, nodeMinor } from './device-node.js';
import { formatIfBlank } from './format.js';
import { HostCgroups } from './host-cgroup.js';
import {
  addVhostUserExport,
  closeImage,
  connectMonitor,
  growImage,
  hasNode,
  imageSize,
  listExports,
  openImage,
  removeExport,
} from './monitor.js';
import {
  type ExportPaths,
  exportKey,
  exportPaths,
  isExportName,
  longestSocketPath,
  MAX_UNIX_SOCKET_PATH_BYTES,
  QSD_IDS,
  storeDevicesDir,
} from './naming.js';
import {
  connectedClients,
  findDaemons,
  isRunning,
  type ProcessIdentity,
  readProcNetUnix,
  signalIfSame,
  spawnDetached,
  waitGone,
} from './process.js';
import { type DaemonState, readState, removeFile, StateParseError, sameExport, writeState } from './state.js';
import type {
  BackendCallOptions,
  ExportInfo,
  ExportKey,
  ExportRequest,
  StorageDaemonBackend,
  SuperviseResult,
  WantedExport,
} from './types.js';

// The qemu-storage-daemon backend (DESIGN §5b, §5c): one daemon per export, driven over its own
// QMP monitor, exporting vhost-user-blk into Kata's vhost-user store. Its truth is on disk
// (<stateDir>/<name>/state.json) and in the processes (pid + start time), so a restarted vmplugd
// adopts the daemons it left running and never starts a second one for the same export.

const run = promisify(execFile);

export const DEFAULT_VHOST_USER_STORE = '/var/run/kata-containers/vhost-user';
export const DEFAULT_QSD_BINARY = '/usr/bin/qemu-storage-daemon';

export interface StorageDaemonBackendOptions {
  /** The backend's own directory (state files, QMP sockets, logs, conf files). */
  stateDir: string;
  /** Kata's vhost-user store (`vhost_user_store_path`). */
  store?: string;
  binary?: string;
  /**
   * `systemd-scope` when vmplugd runs as a systemd service, `host-cgroup` when it runs in a pod
   * (see argv.ts Launcher). Default `direct`.
   */
  launcher?: Launcher;
  /** `host-cgroup`: the host's cgroup mount root as vmplugd sees it. Default /sys/fs/cgroup. */
  cgroupRoot?: string;
  /** `host-cgroup`: this backend's group, `<root>/[<hierarchy>/]vmplug/<group>/<name>`. Default `qsd`. */
  cgroupGroup?: string;
  /**
   * The per-export Ceph config. Default: client_mount_timeout 5 s, rados_osd_op_timeout 30 s.
   * The OSD bound is what makes an OSD stall fail the image open (inside the daemon) in bounded
   * time; it also bounds the guest's I/O while the export serves (a stalled OSD then fails I/O
   * with ETIMEDOUT after that long instead of hanging it).
   */
  rbdConf?: RbdConfOptions;
  /** Bound of a call when the caller gives none. */
  defaultTimeoutMs?: number;
  /** How long stopExport waits for the vhost-user client to go (within the call's bound). */
  clientGoneTimeoutMs?: number;
  /** Ceph monitor probe (tests swap it). */
  probe?: (
    monitors: readonly Monitor[],
    opts: { timeoutMs: number; signal: AbortSignal },
  ) => Promise<unknown>;
}

const DEFAULT_RBD_CONF: RbdConfOptions = { clientMountTimeoutS: 5, osdOpTimeoutS: 30 };

export function createStorageDaemonBackend(opts: StorageDaemonBackendOptions): StorageDaemonBackend {
  return new QsdBackend(opts);
}

export class QsdBackend implements StorageDaemonBackend {
  readonly stateDir: string;
  readonly store: string;
  readonly #binary: string;
  readonly #launcher: Launcher;
  /** Set when the launcher is `host-cgroup`. */
  readonly #cgroups: HostCgroups | undefined;
  readonly #conf: string;
  readonly #defaultTimeoutMs: number;
  readonly #clientGoneMs: number;
  readonly #probe: NonNullable<StorageDaemonBackendOptions['probe']>;
  readonly #locks = new KeyedMutex<string>();
  /** Minor allocation is node-wide: one at a time. */
  readonly #minorLock = new Semaphore(1);
  #closed = false;

  constructor(opts: StorageDaemonBackendOptions) {
    this.stateDir = opts.stateDir.replace(/\/+$/, '');
    this.store = (opts.store ?? DEFAULT_VHOST_USER_STORE).replace(/\/+$/, '');
    for (const [field, p] of [
      ['stateDir', this.stateDir],
      ['store', this.store],
    ] as const) {
      if (!p.startsWith('/')) throw new RangeError(`${field} must be an absolute path`);
    }
    if (longestSocketPath(this.stateDir, this.store) > MAX_UNIX_SOCKET_PATH_BYTES) {
      throw new RangeError('stateDir or store too long: socket paths would exceed 107 bytes');
    }
    this.#binary = opts.binary ?? DEFAULT_QSD_BINARY;
    this.#launcher = opts.launcher ?? 'direct';
    this.#cgroups =
      this.#launcher === 'host-cgroup'
        ? new HostCgroups({ root: opts.cgroupRoot ?? '/sys/fs/cgroup', group: opts.cgroupGroup ?? 'qsd' })
        : undefined;
    this.#conf = rbdConf(opts.rbdConf ?? DEFAULT_RBD_CONF);
    this.#defaultTimeoutMs = opts.defaultTimeoutMs ?? 60_000;
    this.#clientGoneMs = opts.clientGoneTimeoutMs ?? 10_000;
    this.#probe =
      opts.probe ?? ((monitors, o) => probeMonitors(monitors, { timeoutMs: o.timeoutMs, signal: o.signal }));
  }

  paths(key: ExportKey): ExportPaths {
    return exportPaths(this.stateDir, this.store, key);
  }

  ensureExport(req: ExportRequest, opts?: BackendCallOptions): Promise<ExportInfo> {
    const key = exportKey(req.key.name);
    const budget = new Budget(opts, this.#defaultTimeoutMs);
    return this.#locked(key, budget, () => this.#ensure(key, req, budget));
  }

  stopExport(key: ExportKey, opts?: BackendCallOptions): Promise<void> {
    const k = exportKey(key.name);
    const budget = new Budget(opts, this.#defaultTimeoutMs);
    return this.#locked(k, budget, async () => {
      try {
        await this.#stop(k, budget);
      } catch (err) {
        throw asVmplugError('stop export', err);
      }
    });
  }

  resizeExport(key: ExportKey, sizeBytes: number, opts?: BackendCallOptions): Promise<ExportInfo> {
    const k = exportKey(key.name);
    const budget = new Budget(opts, this.#defaultTimeoutMs);
    return this.#locked(k, budget, async () => {
      const p = this.paths(k);
      const state = await this.#readState(p);
      const id = state?.phase === 'serving' ? await this.#liveDaemon(p, state) : undefined;
      if (state === undefined || id === undefined) {
        throw new BackendError('block_resize', `storage daemon export ${k.name} is not serving`, {
          retryable: true,
        });
      }
      const qmp = await this.#step('connect to the storage daemon', () =>
        connectMonitor(p.qmpSocket, budget),
      );
      try {
        const current = await this.#step('query the image size', () => imageSize(qmp, budget));
        if (sizeBytes < current) {
          throw new ValidationError(
            'sizeBytes',
            `must be at least the current size ${current}: shrinking is refused`,
          );
        }
        if (sizeBytes > current) {
          await this.#step('block_resize', () => growImage(qmp, sizeBytes, budget));
          // QEMU 7.2's vhost-user-blk export keeps the capacity it read at block-export-add and
          // tells no client of a new one (checked: even a replug saw the old size). With no
          // client connected, the export is made again at once so the next plug sees the new
          // size; a connected guest keeps the old size until the export is next made (the
          // volume's next publish).
          if (connectedClients(await readProcNetUnix(), p.socketPath) === 0) {
            await this.#step('block-export-del', () => removeExport(qmp, QSD_IDS.export, budget));
            await removeFile(p.socketPath);
            await this.#step('block-export-add vhost-user-blk', () =>
              addVhostUserExport(qmp, p.socketPath, state.readOnly, budget),
            );
          }
        }
        const now = await this.#step('query the image size', () => imageSize(qmp, budget));
        const grown = { ...state, sizeBytes: now };
        await writeState(p.stateFile, grown);
        return infoOf(grown, id, false);
      } catch (err) {
        throw asVmplugError('resize export', err);
      } finally {
        qmp.destroy();
      }
    });
  }

  async list(): Promise<ExportInfo[]> {
    const out: ExportInfo[] = [];
    for (const state of await this.#states()) {
      if (state.pid === null || state.startTime === null || state.phase !== 'serving') continue;
      const id = { pid: state.pid, startTime: state.startTime };
      if (!(await isRunning(id))) continue;
      // Adopted only if its monitor answers and it still exports: a hung daemon is not serving.
      const budget = new Budget(undefined, 5_000);
      let qmp: QmpClient | undefined;
      try {
        qmp = await connectMonitor(state.qmpSocket, budget);
        const exports = await listExports(qmp, budget);
        if (!exports.some((e) => e.id === QSD_IDS.export)) continue;
      } catch {
        continue;
      } finally {
        qmp?.destroy();
      }
      out.push(infoOf(state, id, false));
    }
    return out;
  }

  async supervise(wanted: readonly WantedExport[], opts?: BackendCallOptions): Promise<SuperviseResult> {
    const result: SuperviseResult = { restarted: [], stopped: [], failed: [] };
    const want = new Map(wanted.map((r) => [exportKey(r.key.name).name, r]));
    const states = new Map((await this.#states()).map((s) => [s.name, s]));
    // Daemons no state names (vmplugd killed between the spawn and the state write).
    const names = new Set(states.keys());
    for (const d of await findDaemons(basename(this.#binary), this.stateDir)) {
      const name = basename(d.qmpSocket.slice(0, -'/qmp.sock'.length));
      if (isExportName(name)) names.add(name);
    }
    for (const name of await this.#dirNames()) names.add(name);
    for (const name of names) {
      if (want.has(name)) continue;
      try {
        await this.stopExport({ name }, opts);
        result.stopped.push({ name });
      } catch (error) {
        result.failed.push({ key: { name }, error: asVmplugError('stop', error) });
      }
    }
    // Empty cgroups of daemons no longer wanted (a daemon that died, a vmplugd killed before it
    // removed one); a wanted name keeps its cgroup for the restart below.
    await this.#cgroups?.sweep(new Set(want.keys())).catch(() => []);
    for (const [name, w] of want) {
      const s = states.get(name);
      const serving =
        s !== undefined &&
        s.phase === 'serving' &&
        s.pid !== null &&
        s.startTime !== null &&
        (await isRunning({ pid: s.pid, startTime: s.startTime }));
      if (serving) continue;
      try {
        const req = 'request' in w ? await w.request() : w;
        // No key to open the image with: left as it is (a republish brings the key).
        if (req === undefined) continue;
        await this.ensureExport(req, opts);
        result.restarted.push({ name });
      } catch (error) {
        result.failed.push({ key: { name }, error: asVmplugError('restart', error) });
      }
    }
    return result;
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  async #locked<T>(key: ExportKey, budget: Budget, fn: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new BackendError('storage daemon backend', 'closed');
    const release = await this.#locks.acquire(key.name, budget.signal);
    try {
      return await fn();
    } finally {
      release();
    }
  }

  async #ensure(key: ExportKey, req: ExportRequest, budget: Budget): Promise<ExportInfo> {
    const p = this.paths(key);
    const secrets = [req.source.key];
    const { key: _k, ...stored } = req.source;
    let state = await this.#readState(p);
    if (state !== undefined && !sameExport(state, { source: stored, readOnly: req.readOnly })) {
      throw new ConflictError(
        `storage daemon export ${key.name} already serves ${describe(state.source)}${state.readOnly ? ' read-only' : ''}`,
      );
    }
    let id = await this.#liveDaemon(p, state);
    let started = false;
    try {
      if (id === undefined) {
        await this.#probeCeph(req.source.monitors, budget);
        state = await this.#reserve(key, p, stored, req.readOnly, state);
        await this.#clearStale(p, budget);
        await writeText(p.confFile, this.#conf);
        const [cmd, argv] = launchCommand(this.#launcher, this.#binary, key.name, p.qmpSocket);
        id = await spawnDetached(cmd, argv, p.logFile);
        started = true;
        state = { ...state, pid: id.pid, startTime: id.startTime, phase: 'starting' };
        await writeState(p.stateFile, state);
      } else if (state === undefined || state.pid !== id.pid) {
        // A daemon found in /proc whose state file was never (fully) written: adopt it.
        state = await this.#reserve(key, p, stored, req.readOnly, state);
        state = { ...state, pid: id.pid, startTime: id.startTime };
        await writeState(p.stateFile, state);
      }
      // Out of vmplugd's cgroup before it serves anything. Also for an adopted daemon (a no-op
      // when it is there already): one started before the launcher was host-cgroup moves too.
      const cgroups = this.#cgroups;
      const pid = id.pid;
      if (cgroups !== undefined) {
        await this.#step("move the storage daemon out of vmplugd's cgroup", () =>
          cgroups.place(key.name, pid),
        );
      }
      const qmp = await this.#step('connect to the storage daemon', () =>
        connectMonitor(p.qmpSocket, budget),
      );
      let formatted = false;
      try {
        const exports = await this.#step('query-block-exports', () => listExports(qmp, budget));
        if (!exports.some((e) => e.id === QSD_IDS.export)) {
          if (!(await hasNode(qmp, budget))) {
            if (!started) await this.#probeCeph(req.source.monitors, budget);
            await this.#step(
              'open the rbd image',
              () => openImage(qmp, req.source, req.readOnly, p.confFile, budget),
              req.source,
            );
          }
          if (exports.some((e) => e.id === QSD_IDS.fuseExport)) {
            await this.#step('remove a leftover FUSE export', () =>
              removeExport(qmp, QSD_IDS.fuseExport, budget),
            );
          }
          const fs = req.formatIfBlank;
          if (fs !== undefined && !req.readOnly) {
            formatted = await this.#step('format the blank image', () =>
              formatIfBlank(qmp, p.fuseFile, fs, budget),
            );
            await removeFileOrUnmount(p.fuseFile);
          }
          await removeFile(p.socketPath);
          await mkdir(dirOf(p.socketPath), { recursive: true, mode: 0o750 });
          await this.#step('block-export-add vhost-user-blk', () =>
            addVhostUserExport(qmp, p.socketPath, req.readOnly, budget),
          );
        }
        const sizeBytes = await this.#step('query the image size', () => imageSize(qmp, budget));
        await this.#step('mknod the device node', () =>
          ensureDeviceNode(p.devicePath, (state as DaemonState).minor, {
            signal: budget.signal,
            timeoutMs: budget.left(),
          }),
        );
        state = { ...(state as DaemonState), phase: 'serving', sizeBytes };
        await writeState(p.stateFile, state);
        return infoOf(state, id, formatted);
      } finally {
        qmp.destroy();
      }
    } catch (err) {
      // A daemon this call started has handed nothing out: take it down rather than leave a
      // half-made export behind. An adopted one stays (it may serve a client) for a retry.
      if (started) await this.#teardown(p, budget, true).catch(() => {});
      throw asVmplugError('ensure export', err, secrets);
    }
  }

  async #stop(key: ExportKey, budget: Budget): Promise<void> {
    const p = this.paths(key);
    let state: DaemonState | undefined;
    try {
      state = await this.#readState(p);
    } catch {
      state = undefined; // torn beyond reading: tear down by the paths alone
    }
    // First the node: once it is gone Kata's runtime can no longer pick the volume up.
    await removeFile(p.devicePath);
    const id = await this.#liveDaemon(p, state);
    if (id !== undefined) {
      const waited = await waitClientGone(p.socketPath, Math.min(this.#clientGoneMs, budget.left()), budget);
      if (!waited.gone) throw new DetachPendingError(`vhost-user client of ${p.socketPath}`, waited.ms);
    }
    await this.#teardown(p, budget, false);
  }

  /** Export, node, secret and daemon go, then every file of the export. */
  async #teardown(p: ExportPaths, budget: Budget, force: boolean): Promise<void> {
    const state = await this.#readState(p).catch(() => undefined);
    const ids: ProcessIdentity[] = [];
    const fromState = await this.#liveDaemon(p, state);
    if (fromState !== undefined) ids.push(fromState);
    for (const id of ids) {
      let quitOk = false;
      if (!force) {
        let qmp: QmpClient | undefined;
        try {
          qmp = await connectMonitor(p.qmpSocket, budget);
          const q = qmp;
          await this.#step('block-export-del', () => removeExport(q, QSD_IDS.export, budget));
          await this.#step('remove the FUSE export', () => removeExport(q, QSD_IDS.fuseExport, budget));
          await this.#step('close the image', () => closeImage(q, budget));
          await q.execute('quit', undefined, budget.call(5_000)).catch(() => {});
          quitOk = true;
        } catch {
          // A monitor that does not answer: the signals below end the daemon all the same.
        } finally {
          qmp?.destroy();
        }
      }
      if (quitOk && (await waitGone(id, Math.min(5_000, budget.left())))) continue;
      await signalIfSame(id, 'SIGTERM');
      if (await waitGone(id, 2_000)) continue;
      await signalIfSame(id, 'SIGKILL');
      await waitGone(id, 2_000);
    }
    await removeFileOrUnmount(p.fuseFile).catch(() => {});
    for (const f of [p.devicePath, p.socketPath, p.qmpSocket, p.confFile, p.logFile, `${p.stateFile}.tmp`]) {
      await removeFile(f);
    }
    // The daemon is gone: its cgroup is empty (one still busy is swept by the next supervise).
    await this.#cgroups?.remove(basename(p.dir)).catch(() => {});
    // The state file last: while it exists, the minor stays reserved and the export is findable.
    await removeFile(p.stateFile);
    await rmdir(p.dir).catch(() => {});
  }

  /** The daemon of this export if it runs: from the state, else from /proc (argv names the socket). */
  async #liveDaemon(p: ExportPaths, state: DaemonState | undefined): Promise<ProcessIdentity | undefined> {
    if (state?.pid != null && state.startTime !== null) {
      const id = { pid: state.pid, startTime: state.startTime };
      if (await isRunning(id)) return id;
    }
    const found = (await findDaemons(basename(this.#binary), this.stateDir)).find(
      (d) => d.qmpSocket === p.qmpSocket,
    );
    return found === undefined ? undefined : { pid: found.pid, startTime: found.startTime };
  }

  /** Takes a minor (kept from an earlier state) and writes the `starting` state before any spawn. */
  async #reserve(
    key: ExportKey,
    p: ExportPaths,
    source: Omit<RbdSource, 'key'>,
    readOnly: boolean,
    prev: DaemonState | undefined,
  ): Promise<DaemonState> {
    if (prev !== undefined) return prev;
    const release = await this.#minorLock.acquire();
    try {
      const others = (await this.#states()).filter((s) => s.name !== key.name).map((s) => s.minor);
      // A node already at our name (its state file lost) keeps its minor: Kata may have read it.
      const mine = await nodeMinor(p.devicePath);
      const used = new Set([...(await minorsInStore(storeDevicesDir(this.store))), ...others]);
      if (mine !== undefined) used.delete(mine);
      const minor = mine !== undefined && !others.includes(mine) ? mine : allocateMinor(used);
      const state: DaemonState = {
        version: 1,
        name: key.name,
        pid: null,
        startTime: null,
        minor,
        qmpSocket: p.qmpSocket,
        socketPath: p.socketPath,
        devicePath: p.devicePath,
        source,
        readOnly,
        phase: 'starting',
        sizeBytes: null,
      };
      await writeState(p.stateFile, state);
      return state;
    } finally {
      release();
    }
  }

  /** Leftovers of a daemon that died: its sockets and a dead FUSE mount. */
  async #clearStale(p: ExportPaths, _budget: Budget): Promise<void> {
    await removeFile(p.qmpSocket);
    await removeFile(p.socketPath);
    await removeFileOrUnmount(p.fuseFile);
  }

  async #probeCeph(monitors: readonly Monitor[], budget: Budget): Promise<void> {
    try {
      await this.#probe(monitors, { timeoutMs: Math.min(3_000, budget.left()), signal: budget.signal });
    } catch (err) {
      if (err instanceof VmplugError) throw err;
      throw new CephUnreachableError(monitors.map(formatMonitor), budget.elapsed(), { cause: err });
    }
  }

  async #step<T>(step: string, fn: () => Promise<T>, source?: RbdSource): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (source !== undefined && isCephConnectFailure(err)) {
        // A monitor answered the probe just before, so this is not "Ceph unreachable": librados
        // also ends up here (after client_mount_timeout) when cephx refuses the user or key.
        throw new BackendError(
          step,
          `${(err as QmpCommandError).desc} although a monitor answered: the user or key may be refused, or the monitors have no quorum`,
          { cause: err, retryable: true, secrets: [source.key] },
        );
      }
      if (err instanceof QmpCommandError && /timed out/i.test(err.desc)) {
        throw new BackendError(step, `${err.errorClass}: ${err.desc}`, {
          cause: err,
          retryable: true,
          ...(source ? { secrets: [source.key] } : {}),
        });
      }
      throw backendFailure(step, err, source ? [source.key] : []);
    }
  }

  async #readState(p: ExportPaths): Promise<DaemonState | undefined> {
    try {
      return await readState(p.stateFile);
    } catch (err) {
      if (err instanceof StateParseError) {
        throw new BackendError('read the storage daemon state', `${p.stateFile}: ${err.message}`);
      }
      throw err;
    }
  }

  async #dirNames(): Promise<string[]> {
    try {
      return (await readdir(this.stateDir)).filter(isExportName);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
  }

  /** Every readable state; an unreadable one is skipped here (stopExport still removes it). */
  async #states(): Promise<DaemonState[]> {
    const out: DaemonState[] = [];
    for (const name of await this.#dirNames()) {
      const s = await readState(this.paths({ name }).stateFile).catch(() => undefined);
      if (s !== undefined && s.name === name) out.push(s);
    }
    return out;
  }
}

function infoOf(state: DaemonState, id: ProcessIdentity, formatted: boolean): ExportInfo {
  return {
    key: { name: state.name },
    socketPath: state.socketPath,
    devicePath: state.devicePath,
    minor: state.minor,
    pid: id.pid,
    startTime: id.startTime,
    formatted,
    sizeBytes: state.sizeBytes ?? 0,
  };
}

function describe(s: Omit<RbdSource, 'key'>): string {
  return `${s.pool}/${s.namespace !== undefined ? `${s.namespace}/` : ''}${s.image}${s.snapshot !== undefined ? `@${s.snapshot}` : ''}`;
}

function asVmplugError(step: string, err: unknown, secrets: readonly RbdSource['key'][] = []): VmplugError {
  // The call's own bound ran out (AbortSignal.timeout): the same call may succeed later.
  if (err instanceof DOMException && err.name === 'TimeoutError') {
    return new BackendError(step, 'the call ran out of time', { cause: err, retryable: true });
  }
  return backendFailure(step, err, secrets);
}

function dirOf(path: string): string {
  return path.slice(0, path.lastIndexOf('/')) || '/';
}

async function writeText(path: string, text: string): Promise<void> {
  await mkdir(dirOf(path), { recursive: true, mode: 0o700 });
  await writeFileAtomic(path, text, { mode: 0o644 });
}

/** A FUSE mountpoint left by a killed daemon cannot be unlinked (EBUSY): lazy-unmount it first. */
async function removeFileOrUnmount(path: string): Promise<void> {
  try {
    await removeFile(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EBUSY' && code !== 'ENOTCONN') throw err;
    await run('umount', ['-l', '--', path], { timeout: 5_000 });
    await rm(path, { force: true });
  }
}

/** Polls /proc/net/unix until no client is connected to the vhost-user socket. */
async function waitClientGone(
  socketPath: string,
  timeoutMs: number,
  budget: Budget,
): Promise<{ gone: boolean; ms: number }> {
  const started = performance.now();
  for (;;) {
    const n = connectedClients(await readProcNetUnix(), socketPath);
    const ms = Math.round(performance.now() - started);
    if (n === 0) return { gone: true, ms };
    // Leave the call's last moments for the answer: the caller gets DETACH_PENDING, not a timeout.
    if (ms >= timeoutMs || budget.left() < 100) return { gone: false, ms };
    await sleep(50, budget.signal);
  }
}
