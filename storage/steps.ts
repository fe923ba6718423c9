import { setTimeout as sleep } from 'node:timers/promises';
import { BackendError, CephUnreachableError, DetachPendingError, type Redactable } from '../core/errors.js';
import {
  blockdevAdd,
  blockdevDel,
  type CallOptions,
  deviceAdd,
  deviceDel,
  deviceIs,
  objectAdd,
  objectDel,
  type QmpExecutor,
  QmpTimeoutError,
} from '../qmp/index.js';
import type { OperationLogger } from './attach-service.js';
import { type Journal, type JournalRecord, transition, type VolumeState } from './journal.js';
import { forgetLanes, rememberLane } from './lane-memo.js';
import { laneOfDevice } from './lanes.js';
import { blockdevHostDevice, blockdevRbd, deviceArgs, type Lane, secretObject } from './qemu-args.js';
import { deviceExists, isNotFound, listPeripherals } from './qemu-view.js';
import {
  backendFailure,
  isAbsent,
  isCephConnectFailure,
  isDuplicate,
  isLaneTaken,
  isNodeInUse,
  isUnplugInProgress,
} from './qmp-failure.js';
import { confPath, removeConfFile, writeConfFile } from './rbd-conf-files.js';
import {
  disconnectAndStop,
  exportAndConnect,
  isVhostUser,
  requireVhostUser,
  type VhostUserContext,
  vhostUserDeviceArgs,
} from './vhost-user.js';
import { type AttachSpec, formatMonitor } from './volume-spec.js';

// The attach and detach steps, each resumable from the journal state it starts in. The rule
// everywhere: the journal names a state *before* the side effect that leaves it, so after a crash
// the record always covers what may exist in QEMU; and each step first looks at what QEMU holds,
// so running it again (a retry, a resume after a crash) does the right thing.

export interface StepContext {
  qmp: QmpExecutor;
  journal: Journal;
  stateDir: string;
  log: OperationLogger;
  signal: AbortSignal;
  /** Bound of each QMP command. */
  qmpTimeoutMs: number;
  /** Values to cut out of any backend message (the cephx key). */
  secrets: readonly Redactable[];
  /** The storage-daemon backend (rbd hot-attach with backend storage-daemon). */
  vhostUser?: VhostUserContext;
}

function call(ctx: StepContext): CallOptions {
  return { timeoutMs: ctx.qmpTimeoutMs, signal: ctx.signal };
}

/**
 * Persists the next state (or several, when no side effect lies between them); `since` is when
 * the step began (its duration goes in the timeline).
 */
export async function advance(
  ctx: Pick<StepContext, 'journal' | 'log'>,
  record: JournalRecord,
  to: VolumeState | readonly VolumeState[],
  since: number,
  extra: { lane?: Lane; error?: { code: string; message: string } } = {},
): Promise<JournalRecord> {
  const steps = typeof to === 'string' ? [to] : to;
  let next = record;
  for (const [i, step] of steps.entries()) {
    next = transition(next, step, i === 0 ? { ms: performance.now() - since, ...extra } : {});
  }
  // No signal: once a side effect happened its record must be written, abort or not.
  await ctx.journal.save(next);
  for (const step of steps) ctx.log.debug({ state: step }, `volume ${step}`);
  return next;
}

/**
 * advance() for an operation's last write: the record is written behind the answer
 * (Journal.saveBehind: every later read or write of the record waits for it). Only where the
 * record already on disk leads to the same end after a crash: an attach whose device QEMU holds
 * (reconcile and a retried request finish it).
 */
export function advanceBehind(
  ctx: Pick<StepContext, 'journal' | 'log'>,
  record: JournalRecord,
  to: readonly VolumeState[],
  since: number,
  extra: { lane?: Lane } = {},
): JournalRecord {
  let next = record;
  for (const [i, step] of to.entries()) {
    next = transition(next, step, i === 0 ? { ms: performance.now() - since, ...extra } : {});
  }
  ctx.journal.saveBehind(next);
  for (const step of to) ctx.log.debug({ state: step }, `volume ${step}`);
  return next;
}

/**
 * The next state in memory only, for a step no later side effect needs on disk: the record the
 * operation wrote first (Pending, Detaching) already names every object it may create or remove,
 * and every step looks at QEMU before acting, so a crash here resumes or rolls back the same way.
 * The write that follows carries this step in its timeline. (Each write is two fsyncs: on a busy
 * node the largest share of vmplugd's own time per attach and detach.)
 */
export function pass(
  ctx: Pick<StepContext, 'journal' | 'log'>,
  record: JournalRecord,
  to: VolumeState,
  since: number,
): JournalRecord {
  const next = transition(record, to, { ms: performance.now() - since });
  ctx.journal.passed(next);
  ctx.log.debug({ state: to }, `volume ${to}`);
  return next;
}

export interface AttachStepOptions {
  /** The lane device_add uses, given the one the record holds (if any). */
  lane(recorded: Lane | undefined): Promise<Lane>;
  /**
   * A fresh attach (not a resume): QEMU was just read under the sandbox's lock, so device_add goes
   * without looking for the device first; a device of that name found there after all (a record
   * quarantined as unreadable) is taken over as on a resume, never torn down.
   */
  fresh?: boolean;
  /**
   * A fresh attach's lane that device_add refused as taken (one chosen from the session's memo,
   * lane-memo.ts, which a device placed behind vmplug's back can outdate): another lane, read
   * afresh from QEMU, for one more try.
   */
  relane?(refused: Lane): Promise<Lane>;
  clientMountTimeoutS?: number;
}

/** Runs the attach from the record's (attach) state to Attached. */
export async function attachSteps(
  ctx: StepContext,
  record: JournalRecord,
  spec: AttachSpec,
  opts: AttachStepOptions,
): Promise<JournalRecord> {
  let r = record;
  const names = r.names;
  const q = call(ctx);

  if (r.state === 'Pending' && spec.mode === 'rbd' && isVhostUser(r)) {
    // The storage daemon holds librbd and the key; the guest's QEMU only a chardev to its export.
    const t0 = performance.now();
    await exportAndConnect(ctx.qmp, requireVhostUser(ctx.vhostUser), r, spec, q);
    r = pass(ctx, r, 'BlockdevAdded', t0);
  }

  if (r.state === 'Pending' && spec.mode === 'rbd') {
    const t0 = performance.now();
    // The conf is first read by blockdev-add: written while QEMU adds the secret.
    const conf = writeConfFile(
      ctx.stateDir,
      names,
      opts.clientMountTimeoutS !== undefined ? { clientMountTimeoutS: opts.clientMountTimeoutS } : {},
    );
    await alongside(conf, async () => {
      try {
        await objectAdd(ctx.qmp, secretObject(names, spec.source.key), q);
      } catch (err) {
        // A resumed attach finds its own secret (same ids, same key: the fingerprint matched).
        if (!isDuplicate(err)) throw backendFailure('object-add secret', err, ctx.secrets);
      }
    });
    r = pass(ctx, r, 'SecretAdded', t0);
  }

  if (r.state === 'Pending' || r.state === 'SecretAdded') {
    const t0 = performance.now();
    const node =
      spec.mode === 'block'
        ? blockdevHostDevice(names, spec.source, spec.readOnly)
        : blockdevRbd(names, spec.source, {
            readOnly: spec.readOnly,
            confPath: confPath(ctx.stateDir, names),
          });
    try {
      await blockdevAdd(ctx.qmp, node, q);
    } catch (err) {
      if (!isDuplicate(err)) {
        if (spec.mode === 'rbd' && isCephConnectFailure(err)) {
          const waited = Math.round(performance.now() - t0);
          const monitors = spec.source.monitors.map(formatMonitor);
          if (/timed out/i.test((err as Error).message)) {
            // A monitor answered the check just before, so the session itself did not complete
            // within client_mount_timeout: seen on Ceph 16 with a key cephx refuses.
            throw new BackendError(
              'blockdev-add',
              `Ceph did not complete the connection within ${waited} ms although a monitor answered (${monitors.join(', ')}): check user and key, or the cluster's health`,
              { cause: err, secrets: ctx.secrets, retryable: true },
            );
          }
          throw new CephUnreachableError(monitors, waited, {
            cause: backendFailure('blockdev-add', err, ctx.secrets),
          });
        }
        throw backendFailure('blockdev-add', err, ctx.secrets);
      }
    }
    r = pass(ctx, r, 'BlockdevAdded', t0);
  }

  if (r.state === 'BlockdevAdded') {
    const t0 = performance.now();
    const lane = await addDevice(ctx, r, opts);
    // The one write after Pending: the steps passed since (pass()) and the device's lane, with
    // DeviceAdded and Attached together (nothing happens between them). Written behind the
    // answer: QEMU holds the device now, and a Pending record whose device exists is finished
    // by reconcile and by a retried attach, so the answer need not wait for its fsyncs.
    r = advanceBehind(ctx, r, ['DeviceAdded', 'Attached'], t0, { lane });
  }

  if (r.state === 'DeviceAdded') r = await advance(ctx, r, 'Attached', performance.now());
  return r;
}

async function addDevice(ctx: StepContext, r: JournalRecord, opts: AttachStepOptions): Promise<Lane> {
  const q = call(ctx);
  if (!opts.fresh) {
    // Resumed after a crash between device_add and the journal write: take the lane QEMU reports.
    const lane = await existingLane(ctx, r);
    if (lane !== undefined) return lane;
  }
  let lane = await opts.lane(r.lane);
  for (let tries = 1; ; tries++) {
    const args = isVhostUser(r) ? vhostUserDeviceArgs(r.names, lane) : deviceArgs(r.names, lane);
    try {
      await deviceAdd(ctx.qmp, args, q);
      rememberLane(ctx.qmp, { id: r.names.device, type: args.driver }, lane);
      return lane;
    } catch (err) {
      if (opts.fresh && isDuplicate(err)) {
        const held = await existingLane(ctx, r);
        if (held !== undefined) return held;
      }
      // A lane found taken ("lun already used", "slot not available"): every vmplug operation
      // that places or removes a device holds the sandbox's lock (one OperationGate), so the
      // device is one placed behind vmplug's back, since the memo's view or in that very
      // instant. One more try on a lane read afresh; a second refusal is a plain error, and the
      // rollback leaves nothing.
      if (opts.fresh && tries === 1 && opts.relane !== undefined && isLaneTaken(err)) {
        ctx.log.info({ lane, error: (err as Error).message }, 'lane taken behind vmplug; choosing again');
        forgetLanes(ctx.qmp);
        lane = await opts.relane(lane);
        continue;
      }
      throw backendFailure('device_add', err, ctx.secrets);
    }
  }
}

/** The lane of the device QEMU already holds under this record's name; undefined when it holds none. */
async function existingLane(ctx: StepContext, r: JournalRecord): Promise<Lane | undefined> {
  const q = call(ctx);
  const existing = (await listPeripherals(ctx.qmp, q)).find((d) => d.id === r.names.device);
  if (existing === undefined) return undefined;
  const lane = await laneOfDevice(ctx.qmp, existing, q);
  if (lane === undefined)
    throw new BackendError('device_add', `device ${r.names.device} is not on a vmplug lane`);
  return lane;
}

export interface TeardownOptions {
  /** How long to wait for the guest to release the device (DEVICE_DELETED). */
  waitMs: number;
  /**
   * The record is removed behind the answer (Journal.removeBehind): a detach's, whose record on
   * disk (Detaching) runs this teardown again after a crash, every step finding its object gone.
   * A rollback or reconcile waits for the removal: a failure answer leaves nothing behind it.
   */
  behind?: boolean;
}

/**
 * Runs a detach (or the rollback of an attach) from a Detaching/DetachPending/DeviceDeleted/
 * BlockdevDeleted record to the end: device, then block node, then secret and conf file, then the
 * record. Throws DetachPendingError (record left in DetachPending) while the guest holds on.
 */
export async function teardownSteps(
  ctx: StepContext,
  record: JournalRecord,
  opts: TeardownOptions,
): Promise<void> {
  let r = record;
  const names = r.names;
  const q = call(ctx);

  if (r.state === 'Detaching' || r.state === 'DetachPending') {
    const t0 = performance.now();
    // No look first: device_del of a device that is gone answers DeviceNotFound (unplug: gone),
    // and so do blockdev-del and object-del below (isAbsent); a look would be a round trip more.
    const gone = await unplug(ctx, names.device, opts.waitMs);
    if (!gone) {
      const waited = Math.round(performance.now() - t0);
      const pending = new DetachPendingError(names.device, waited);
      r = await advance(ctx, r, 'DetachPending', t0, {
        error: { code: pending.code, message: pending.message },
      });
      throw pending;
    }
    r = pass(ctx, r, 'DeviceDeleted', t0);
  }

  if (r.state === 'DeviceDeleted') {
    const t0 = performance.now();
    await blockdevDelReleased(ctx, names.node, q);
    // The record's removal is the next write: the secret and conf file (rbd) are looked up first.
    r = pass(ctx, r, 'BlockdevDeleted', t0);
  }

  if (r.state === 'BlockdevDeleted') {
    if (r.spec.mode === 'rbd') {
      // QEMU read the conf when it opened the image: removed while it drops the secret.
      await alongside(removeConfFile(ctx.stateDir, names), async () => {
        try {
          await objectDel(ctx.qmp, names.secret, q);
        } catch (err) {
          if (!isAbsent(err)) throw backendFailure('object-del secret', err, ctx.secrets);
        }
      });
      if (isVhostUser(r)) await disconnectAndStop(ctx.qmp, requireVhostUser(ctx.vhostUser), r, q);
    }
    if (opts.behind === true) ctx.journal.removeBehind(r.sandboxId, r.volumeId);
    else await ctx.journal.remove(r.sandboxId, r.volumeId);
    ctx.log.debug({ state: 'Detached' }, 'volume Detached');
  }
}

/**
 * `main()` while `side` (a host file write or removal) runs; `side` has settled before this does
 * either way, so a rollback after a failure never races it. A failure of `main` wins.
 */
async function alongside<T>(side: Promise<unknown>, main: () => Promise<T>): Promise<T> {
  side.catch(() => undefined);
  try {
    const value = await main();
    await side;
    return value;
  } catch (err) {
    await side.catch(() => undefined);
    throw err;
  }
}

/**
 * How long blockdev-del may keep finding the node in use right after its device went. QEMU drops
 * a device from /machine/peripheral (device_del then answers DeviceNotFound, and DEVICE_DELETED
 * may have gone by) before its last reference, and with it the node's BlockBackend, is released:
 * requests the guest still had in flight hold the device. Seen after a late device_del answer,
 * whose settle deletes the node at once.
 */
const NODE_RELEASE_WAIT_MS = 2_000;
const NODE_RELEASE_POLL_MS = 20;

/**
 * blockdev-del of a node whose device is gone: absent counts as done; in use is asked again for
 * a moment (above), then refused retryable, never forced: the backend is never pulled from under
 * a device.
 */
async function blockdevDelReleased(
  ctx: StepContext,
  node: string,
  q: ReturnType<typeof call>,
): Promise<void> {
  const deadline = performance.now() + NODE_RELEASE_WAIT_MS;
  for (;;) {
    try {
      await blockdevDel(ctx.qmp, node, q);
      return;
    } catch (err) {
      if (isAbsent(err)) return;
      if (!isNodeInUse(err)) throw backendFailure('blockdev-del', err, ctx.secrets);
      if (performance.now() >= deadline) {
        throw new BackendError('blockdev-del', `node ${node} is still in use; retry the detach`, {
          cause: err,
          retryable: true,
        });
      }
      await sleep(NODE_RELEASE_POLL_MS, undefined, { signal: ctx.signal });
    }
  }
}

/**
 * device_del and the DEVICE_DELETED naming this device (armed first: QEMU may send it before
 * the reply; a virtio device's first event names only its virtio-backend path). True once the
 * device is gone; false when the guest has not released it within `waitMs`. A device_del
 * repeated during a pending unplug is refused by QEMU: then this only waits.
 */
export async function unplug(ctx: StepContext, id: string, waitMs: number): Promise<boolean> {
  const q = call(ctx);
  const deleted = ctx.qmp.waitFor('DEVICE_DELETED', deviceIs(id), { timeoutMs: waitMs, signal: ctx.signal });
  try {
    await deviceDel(ctx.qmp, id, q);
  } catch (err) {
    if (isNotFound(err)) {
      deleted.cancel();
      return true;
    }
    if (!isUnplugInProgress(err)) {
      deleted.cancel();
      throw backendFailure('device_del', err, ctx.secrets);
    }
  }
  try {
    await deleted;
    return true;
  } catch (err) {
    // The event may have gone by while the monitor reconnected: ask QEMU itself.
    if (err instanceof QmpTimeoutError || (err as { code?: unknown }).code === 'QMP_CLOSED') {
      return !(await deviceExists(ctx.qmp, id, q));
    }
    throw backendFailure('device_del', err, ctx.secrets);
  }
}
