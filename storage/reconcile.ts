import { DetachPendingError } from '../core/errors.js';
import type { SandboxId } from '../core/ids.js';
import { blockdevDel, objectDel } from '../qmp/index.js';
import type { OperationLogger } from './attach-service.js';
import { isAttachState, type Journal, type JournalRecord, transition } from './journal.js';
import { laneOfDevice } from './lanes.js';
import { parseVmplugName, volumeNames } from './naming.js';
import { listPeripherals, type VmplugObjects, vmplugObjects } from './qemu-view.js';
import { isAbsent, isNodeInUse } from './qmp-failure.js';
import { listConfHashes, removeConfByHash, removeConfFile } from './rbd-conf-files.js';
import type { ManagedSandbox, SandboxDirectory } from './sandbox-directory.js';
import { advance, type StepContext, teardownSteps, unplug } from './steps.js';

// Reconcile: converge the journal, the sandboxes' QEMU and vmplug's files after a crash, a lost
// connection or a sandbox that went away. Run at start-up (before serving) and periodically. Per
// sandbox it holds the engine's per-sandbox turn, so it never races a live operation.
//   - sandbox gone: its records (and rbd conf files) are dropped: nothing of it is left in QEMU;
//   - sandbox unreachable: left alone until a later round;
//   - half-done attach: finished when its device exists (the guest may already use the disk),
//     rolled back otherwise; half-done detach: continued (a pending unplug only waited for);
//   - vmplug-named devices, block nodes and secrets that no record explains: removed (devices
//     first, then nodes, then secrets), and conf files no record explains.
// A quarantined (unreadable) record still explains its objects: a disk the guest may be using is
// not pulled on the strength of a file vmplug cannot read.

export type RepairAction =
  | 'dropped-record'
  | 'finished-attach'
  | 'rolled-back-attach'
  | 'finished-detach'
  | 'cleared-lost-attachment'
  | 'removed-stray-device'
  | 'removed-stray-node'
  | 'removed-stray-secret'
  | 'removed-stray-conf';

export interface Repair {
  action: RepairAction;
  sandboxId?: string;
  volumeId?: string;
  /** The QEMU name or file hash acted on. */
  name?: string;
}

export interface ReconcileSummary {
  /** Sandboxes looked at. */
  sandboxes: number;
  repairs: Repair[];
  /** Sandboxes left for a later round (monitor unreachable). */
  skipped: { sandboxId: string; reason: string }[];
  /** Detaches still waiting for the guest to release the device. */
  pending: { sandboxId: string; volumeId: string }[];
  /** Repairs that failed this round (retried next round). */
  failures: { sandboxId: string; volumeId?: string; name?: string; code: string; message: string }[];
}

export interface ReconcileOptions {
  journal: Journal;
  sandboxes: SandboxDirectory;
  stateDir: string;
  log: OperationLogger;
  signal: AbortSignal;
  qmpTimeoutMs: number;
  /** How long to wait for a pending or stray unplug this round. */
  unplugWaitMs: number;
  /** Runs `fn` holding the sandbox's turn (the engine's per-sandbox serialization). */
  exclusive<T>(sandboxId: SandboxId, signal: AbortSignal, fn: () => Promise<T>): Promise<T>;
}

export async function reconcileAll(o: ReconcileOptions): Promise<ReconcileSummary> {
  const summary: ReconcileSummary = { sandboxes: 0, repairs: [], skipped: [], pending: [], failures: [] };
  // Conf files are listed before records: a conf file is written after its record, so any file
  // seen here whose record is live shows up in the record list read next.
  const confHashes = await listConfHashes(o.stateDir);
  // Journal writes take milliseconds: a temp file this old was torn by a crash.
  await o.journal.sweepTemp({ olderThanMs: 10 * 60_000, signal: o.signal });
  const ids = new Set<SandboxId>([...(await o.journal.sandboxIds()), ...o.sandboxes.known()]);
  for (const sandboxId of [...ids].sort()) {
    o.signal.throwIfAborted();
    summary.sandboxes++;
    try {
      await o.exclusive(sandboxId, o.signal, () => reconcileSandbox(o, sandboxId, summary));
    } catch (err) {
      if (o.signal.aborted) throw err;
      summary.failures.push({ sandboxId, ...describe(err) });
      o.log.error({ sandboxId, ...describe(err) }, 'reconcile: sandbox not reconciled this round');
    }
  }
  const explained = new Set<string>();
  for (const r of await o.journal.list()) explained.add(r.names.hash);
  for (const q of await o.journal.quarantined()) explained.add(volumeNames(q.sandboxId, q.volumeId).hash);
  for (const hash of confHashes) {
    if (explained.has(hash)) continue;
    if (!(await removeConfByHash(o.stateDir, hash))) continue;
    repair(o, summary, { action: 'removed-stray-conf', name: hash });
  }
  return summary;
}

function repair(o: ReconcileOptions, summary: ReconcileSummary, r: Repair): void {
  summary.repairs.push(r);
  o.log.info({ repair: r.action, ...r }, `reconcile: ${r.action}`);
}

function describe(err: unknown): { code: string; message: string } {
  const code = (err as { code?: unknown }).code;
  return {
    code: typeof code === 'string' ? code : 'INTERNAL',
    message: (err as Error).message ?? String(err),
  };
}

async function reconcileSandbox(
  o: ReconcileOptions,
  sandboxId: SandboxId,
  summary: ReconcileSummary,
): Promise<void> {
  const presence = o.sandboxes.lookup(sandboxId);
  if (presence.state === 'unreachable') {
    summary.skipped.push({ sandboxId, reason: presence.reason });
    o.log.warn(
      { sandboxId, reason: presence.reason },
      'reconcile: sandbox unreachable; left for the next round',
    );
    return;
  }
  // libvirt domains' records are reconciled through libvirt (storage/libvirt/engine.ts).
  const records = (await o.journal.list(sandboxId)).filter((r) => r.kind === 'kata');
  if (presence.state === 'gone') {
    for (const r of records) {
      await removeConfFile(o.stateDir, r.names);
      await o.journal.remove(sandboxId, r.volumeId);
      repair(o, summary, { action: 'dropped-record', sandboxId, volumeId: r.volumeId });
    }
    await o.journal.pruneSandbox(sandboxId);
    return;
  }
  const sandbox = presence.sandbox;
  const q = { timeoutMs: o.qmpTimeoutMs, signal: o.signal };
  let objects = await vmplugObjects(sandbox.qmp, q);
  for (const r of records) {
    const log = o.log.child({ sandboxId, volumeId: r.volumeId, op: 'reconcile' });
    const step: StepContext = {
      qmp: sandbox.qmp,
      journal: o.journal,
      stateDir: o.stateDir,
      log,
      signal: o.signal,
      qmpTimeoutMs: o.qmpTimeoutMs,
      secrets: [],
    };
    try {
      const action = await reconcileRecord(step, sandbox, r, objects, o.unplugWaitMs);
      if (action !== undefined) repair(o, summary, { action, sandboxId, volumeId: r.volumeId });
    } catch (err) {
      if (err instanceof DetachPendingError) {
        summary.pending.push({ sandboxId, volumeId: r.volumeId });
        log.warn(
          { device: r.names.device },
          'reconcile: the guest still holds the device; detach stays pending',
        );
        continue;
      }
      summary.failures.push({ sandboxId, volumeId: r.volumeId, ...describe(err) });
      log.error(describe(err), 'reconcile: repair failed; retried next round');
    }
  }

  // Strays: vmplug's names that no record (live or quarantined) explains.
  const explained = new Set<string>();
  for (const r of await o.journal.list(sandboxId)) explained.add(r.names.hash);
  for (const qr of await o.journal.quarantined(sandboxId))
    explained.add(volumeNames(qr.sandboxId, qr.volumeId).hash);
  const stray = (name: string): boolean => {
    const parsed = parseVmplugName(name);
    return parsed !== undefined && !explained.has(parsed.hash);
  };
  objects = await vmplugObjects(sandbox.qmp, q);
  const step: StepContext = {
    qmp: sandbox.qmp,
    journal: o.journal,
    stateDir: o.stateDir,
    log: o.log,
    signal: o.signal,
    qmpTimeoutMs: o.qmpTimeoutMs,
    secrets: [],
  };
  for (const id of [...objects.devices].filter(stray).sort()) {
    await strayStep(o, summary, sandboxId, id, async () => {
      if (!(await unplug(step, id, o.unplugWaitMs))) {
        throw new DetachPendingError(id, o.unplugWaitMs);
      }
      return 'removed-stray-device';
    });
  }
  for (const name of [...objects.nodes].filter(stray).sort()) {
    await strayStep(o, summary, sandboxId, name, async () => {
      try {
        await blockdevDel(sandbox.qmp, name, q);
      } catch (err) {
        if (isAbsent(err)) return undefined;
        // Used by a device that is not vmplug's, or whose unplug is still pending: not ours to pull.
        if (isNodeInUse(err)) throw err;
        throw err;
      }
      return 'removed-stray-node';
    });
  }
  for (const id of [...objects.secrets].filter(stray).sort()) {
    await strayStep(o, summary, sandboxId, id, async () => {
      try {
        await objectDel(sandbox.qmp, id, q);
      } catch (err) {
        if (isAbsent(err)) return undefined;
        throw err;
      }
      return 'removed-stray-secret';
    });
  }
}

async function strayStep(
  o: ReconcileOptions,
  summary: ReconcileSummary,
  sandboxId: SandboxId,
  name: string,
  fn: () => Promise<RepairAction | undefined>,
): Promise<void> {
  try {
    const action = await fn();
    if (action !== undefined) repair(o, summary, { action, sandboxId, name });
  } catch (err) {
    summary.failures.push({ sandboxId, name, ...describe(err) });
    o.log.warn({ sandboxId, name, ...describe(err) }, 'reconcile: stray object not removed this round');
  }
}

async function reconcileRecord(
  step: StepContext,
  sandbox: ManagedSandbox,
  record: JournalRecord,
  objects: VmplugObjects,
  unplugWaitMs: number,
): Promise<RepairAction | undefined> {
  if (record.state === 'Attached') {
    if (objects.devices.has(record.names.device)) return undefined;
    // The guest lost the disk (QEMU restarted under the same sandbox, or someone deleted the
    // device): the record would make a retried attach answer "already attached". Clear what is
    // left; the CSI plugin's next attach then attaches it again.
    const lost = transition(record, 'Detaching', {
      error: { code: 'DEVICE_LOST', message: `device ${record.names.device} vanished from the sandbox` },
    });
    await step.journal.save(lost);
    await teardownSteps(step, lost, { waitMs: unplugWaitMs });
    return 'cleared-lost-attachment';
  }
  if (isAttachState(record.state)) {
    if (objects.devices.has(record.names.device)) {
      await finishAttach(step, sandbox, record);
      return 'finished-attach';
    }
    const rolling = transition(record, 'Detaching', {
      error: { code: 'INTERRUPTED', message: 'attach interrupted before its device was added; rolled back' },
    });
    await step.journal.save(rolling);
    await teardownSteps(step, rolling, { waitMs: unplugWaitMs });
    return 'rolled-back-attach';
  }
  await teardownSteps(step, record, { waitMs: unplugWaitMs });
  return 'finished-detach';
}

/** The device exists, so every earlier step did too: record the steps up to Attached. */
async function finishAttach(
  step: StepContext,
  sandbox: ManagedSandbox,
  record: JournalRecord,
): Promise<void> {
  let r = record;
  const t0 = performance.now();
  if (r.state === 'Pending' && r.spec.mode === 'rbd') r = await advance(step, r, 'SecretAdded', t0);
  if (r.state === 'Pending' || r.state === 'SecretAdded') r = await advance(step, r, 'BlockdevAdded', t0);
  if (r.state === 'BlockdevAdded') {
    const q = { timeoutMs: step.qmpTimeoutMs, signal: step.signal };
    const device = (await listPeripherals(sandbox.qmp, q)).find((d) => d.id === r.names.device);
    const lane = device !== undefined ? await laneOfDevice(sandbox.qmp, device, q) : undefined;
    const chosen = lane ?? r.lane;
    r = await advance(step, r, 'DeviceAdded', t0, chosen !== undefined ? { lane: chosen } : {});
  }
  if (r.state === 'DeviceAdded') await advance(step, r, 'Attached', t0);
}
