import { BackendError, NotFoundError, ValidationError, VmplugError } from '../core/errors.js';
import { OperationGate } from '../core/gate.js';
import type { SandboxId, VolumeId } from '../core/ids.js';
import { type AttachPlan, needsDeviceCheck, planAttach } from '../core/plan-attach.js';
import { presentSandbox } from '../core/sandbox.js';
import {
  blockResize,
  type LateAnswer,
  lateAnswerOf,
  queryBlockstats,
  queryNamedBlockNodes,
} from '../qmp/index.js';
import {
  AheadCheck,
  type AttachAhead,
  DEFAULT_AHEAD_FRESH_MS,
  NOT_APPLICABLE,
  takeFresh,
} from './ahead-checks.js';
import type {
  Attachment,
  AttachResult,
  AttachService,
  OperationContext,
  OperationLogger,
} from './attach-service.js';
import {
  type AttachOp,
  attachConflict,
  attachmentFromRecord,
  pendingRecord,
  type ResizeOp,
  resizableRecord,
  shuttingDown,
  VolumeEngine,
} from './attach-service.js';
import { checkCephFirst, DEFAULT_CEPH_PROBE_TIMEOUT_MS, probeMonitors } from './ceph-probe.js';
import { admitSpec, type HostDeviceCheck, hostDeviceCheck } from './host-device.js';
import { HostUseWatch } from './host-use-watch.js';
import { InDoubtVolumes } from './in-doubt.js';
import { isAttachState, type Journal, type JournalRecord, transition } from './journal.js';
import {
  chooseLane,
  DEFAULT_SCSI_TARGETS,
  inspectLanes,
  knownScsiLane,
  type SandboxLanes,
  sameLane,
} from './lanes.js';
import type { FrontendBus } from './naming.js';
import type { Lane } from './qemu-args.js';
import { deviceExists } from './qemu-view.js';
import { backendFailure } from './qmp-failure.js';
import { removeConfFile } from './rbd-conf-files.js';
import { type ReconcileSummary, reconcileAll } from './reconcile.js';
import type { ManagedSandbox, SandboxDirectory } from './sandbox-directory.js';
import { attachSteps, type StepContext, type TeardownOptions, teardownSteps } from './steps.js';
import type { StorageDaemonBackend } from './storage-daemon/index.js';
import {
  backendWithoutQemu,
  isVhostUser,
  requireVhostUser,
  resolveBackend,
  stopHotAttachExport,
  type VhostUserContext,
} from './vhost-user.js';
import { type AttachSpec, type RbdSource, specFingerprint, toStoredSpec } from './volume-spec.js';

// The attach engine: AttachService over the journal and each sandbox's QMP monitor. Admission,
// drain and the shutting-down error are EngineBase's (core/engine-base.ts): operations on one
// sandbox run one at a time (with its NICs and resizes too, through the shared gate).

export interface AttachEngineOptions {
  journal: Journal;
  sandboxes: SandboxDirectory;
  /** The per-node key of specFingerprint (journal.ts loadFingerprintKey). */
  fingerprintKey: Uint8Array;
  /** Where the per-attach rbd conf files go (<stateDir>/rbd). The journal's own stateDir. */
  stateDir: string;
  /** Logger for work not tied to a request (reconcile). */
  logger: OperationLogger;
  /** Operations in flight across the node; default 8. Ignored when `gate` is given. */
  maxConcurrentOps?: number;
  /** The node's one gate (one lock per sandbox shared with libvirt volumes, NICs and resizes). */
  gate?: OperationGate<string>;
  /** Bound of each QMP command; default 10 s. */
  qmpTimeoutMs?: number;
  /** How long a detach waits for DEVICE_DELETED before answering DetachPending; default 10 s. */
  detachTimeoutMs?: number;
  /** Bound of the Ceph monitor check before an rbd blockdev-add; default 3 s. */
  cephProbeTimeoutMs?: number;
  /** client_mount_timeout in the per-attach rbd conf; default 5 s (qemu-args.ts). */
  clientMountTimeoutS?: number;
  /** Targets of vmplug-scsi0 vmplug uses (ids 0..n-1); default 256. */
  scsiTargets?: number;
  /** How long reconcile waits for a pending unplug before leaving it for the next round; default 1 s. */
  reconcileUnplugWaitMs?: number;
  /**
   * Checks a block-mode path before anything is journalled and answers the resolved path QEMU gets
   * (host-device.ts); default: the default allow-list and the host-use checks.
   */
  checkHostDevice?: HostDeviceCheck;
  /** The storage-daemon backend for rbd hot-attach (DESIGN §5c); without it rbd goes through QEMU. */
  storageDaemon?: StorageDaemonBackend;
  /** Bound of one export start or stop; default 60 s. */
  storageDaemonTimeoutMs?: number;
  /**
   * Opens an rbd image out of process, bounded, before its blockdev-add in the guest's QEMU
   * (rbd-preflight.ts): a Ceph whose OSD cannot serve the header is refused (CEPH_STALLED) instead
   * of freezing the guest. Absent: no such check.
   */
  rbdPreflight?: (source: RbdSource, signal: AbortSignal, opts?: { ahead?: boolean }) => Promise<unknown>;
  /**
   * How old the outcome of a Ceph probe or rbd preflight started before the sandbox's turn may be
   * when the attach reaches its turn (ahead-checks.ts); default 2 s. 0: always checked again.
   */
  aheadFreshMs?: number;
}

export const DEFAULT_MAX_CONCURRENT_OPS = 8;
export const DEFAULT_QMP_TIMEOUT_MS = 10_000;
export const DEFAULT_DETACH_TIMEOUT_MS = 10_000;

/** Block-level figures of query-blockstats exposed in Attachment.stats. */
const STAT_FIELDS = [
  'rd_bytes',
  'wr_bytes',
  'rd_operations',
  'wr_operations',
  'flush_operations',
  'unmap_operations',
  'unmap_bytes',
  'rd_total_time_ns',
  'wr_total_time_ns',
  'flush_total_time_ns',
  'failed_rd_operations',
  'failed_wr_operations',
  'failed_flush_operations',
  'wr_highest_offset',
] as const;

export class AttachEngine extends VolumeEngine implements AttachService {
  readonly #o: Required<
    Omit<
      AttachEngineOptions,
      'clientMountTimeoutS' | 'gate' | 'storageDaemon' | 'storageDaemonTimeoutMs' | 'rbdPreflight'
    >
  > & {
    clientMountTimeoutS?: number;
    rbdPreflight?: AttachEngineOptions['rbdPreflight'];
  };
  readonly #hostUse: HostUseWatch;
  readonly #vhostUser: VhostUserContext | undefined;
  /** Volumes whose teardown waits on a late QMP answer (in-doubt.ts). */
  readonly #inDoubt = new InDoubtVolumes();

  constructor(opts: AttachEngineOptions) {
    super({
      gate: opts.gate ?? new OperationGate(opts.maxConcurrentOps ?? DEFAULT_MAX_CONCURRENT_OPS),
      closedError: shuttingDown,
    });
    this.#o = {
      maxConcurrentOps: DEFAULT_MAX_CONCURRENT_OPS,
      qmpTimeoutMs: DEFAULT_QMP_TIMEOUT_MS,
      detachTimeoutMs: DEFAULT_DETACH_TIMEOUT_MS,
      cephProbeTimeoutMs: DEFAULT_CEPH_PROBE_TIMEOUT_MS,
      scsiTargets: DEFAULT_SCSI_TARGETS,
      reconcileUnplugWaitMs: 1_000,
      aheadFreshMs: DEFAULT_AHEAD_FRESH_MS,
      checkHostDevice: hostDeviceCheck(),
      ...opts,
    };
    this.#hostUse = new HostUseWatch(this.#o.checkHostDevice);
    this.#vhostUser =
      opts.storageDaemon === undefined
        ? undefined
        : { backend: opts.storageDaemon, timeoutMs: opts.storageDaemonTimeoutMs ?? 60_000 };
  }

  /**
   * While it is near its turn in the sandbox's queue, an rbd attach probes Ceph's monitors and, when its
   * backend is the guest's QEMU, opens the image out of process: in a burst these ran one after
   * another under the sandbox's lock. Of the sandbox only whether its RAM is shared is read (the
   * backend), which cannot change while its QEMU runs.
   */
  protected override checksBeforeTurn(
    sandboxId: SandboxId,
    spec: AttachSpec,
    log: OperationLogger,
    signal: AbortSignal,
  ): AttachAhead | undefined {
    if (spec.mode !== 'rbd') return undefined;
    const ceph = new AheadCheck(
      () => checkCephFirst(spec, { timeoutMs: this.#o.cephProbeTimeoutMs, signal }, log),
      signal,
    );
    const preflight = this.#o.rbdPreflight;
    if (preflight === undefined) return { ceph };
    const available = this.#vhostUser !== undefined;
    const backendNow = async (): Promise<unknown> => {
      const known = backendWithoutQemu(spec, available);
      if (known !== undefined) return known;
      const presence = this.#o.sandboxes.lookup(sandboxId);
      if (presence.state !== 'present') return undefined;
      return resolveBackend(
        spec,
        presence.sandbox.qmp,
        { timeoutMs: this.#o.qmpTimeoutMs, signal },
        available,
      );
    };
    return {
      ceph,
      preflight: new AheadCheck(async () => {
        // A storage daemon needs none; a sandbox not present now leaves it to the turn.
        if ((await backendNow()) !== 'qemu') return NOT_APPLICABLE;
        await ceph.outcome;
        await preflight(spec.source, signal, { ahead: true });
      }, signal),
    };
  }

  protected async attachAdmitted(op: AttachOp): Promise<AttachResult> {
    const { sandboxId, volumeId, spec, log, signal, phases, ahead } = op;
    const fingerprint = specFingerprint(spec, this.#o.fingerprintKey);
    const sandbox = this.#present(sandboxId);
    const q = { timeoutMs: this.#o.qmpTimeoutMs, signal };
    // A block device's host check reads only the host: started beside the journal read and taken
    // when the attach is a fresh one (a resumed or re-attached volume is checked anew later).
    const hostEarlyOff = new AbortController();
    const hostEarly =
      spec.mode === 'block'
        ? admitSpec(spec, this.#o.checkHostDevice, AbortSignal.any([signal, hostEarlyOff.signal]))
        : undefined;
    hostEarly?.catch(() => undefined);
    let plan: AttachPlan<JournalRecord>;
    let freshAttach = false;
    try {
      const existing = await this.#o.journal.load(sandboxId, volumeId);
      phases.mark('loadMs');
      plan = planAttach(
        existing,
        fingerprint,
        needsDeviceCheck(existing, fingerprint) &&
          (await deviceExists(sandbox.qmp, existing.names.device, q).catch((err: unknown) => {
            throw backendFailure('attach', err);
          })),
        isAttachState,
      );
      freshAttach = plan.kind === 'fresh';
    } finally {
      // Not a fresh attach (or no plan): nobody takes it.
      if (!freshAttach) hostEarlyOff.abort();
    }
    switch (plan.kind) {
      case 'reuse':
        return { created: false, attachment: attachmentFromRecord(plan.record) };
      case 'conflict':
        if (plan.reason !== 'detaching' || plan.record.fingerprint !== fingerprint)
          throw attachConflict(plan, `sandbox ${sandboxId}`);
        // Settled the moment QEMU answers the command in doubt; asking QEMU now would only queue
        // behind it.
        this.#refuseWhileInDoubt(sandboxId, volumeId);
        // The same spec again while its rollback (an attach that failed, e.g. QEMU answered
        // too late) or a detach is unfinished: finish it now rather than wait for reconcile,
        // then attach afresh; while QEMU still cannot finish it, a retryable 503, not a 409.
        await this.#settleTeardown(sandbox, plan.record, signal, log);
        break;
      case 'resume': {
        log.info({ state: plan.record.state }, 'resuming a half-done attach');
        // Checked again: the host may have taken the device since (never attached once it has).
        const resumed = await admitSpec(spec, this.#o.checkHostDevice, signal);
        return {
          created: true,
          attachment: await this.#runAttach(sandbox, plan.record, resumed, signal, log, true),
        };
      }
      case 'clear-lost':
        // The guest lost the disk (QEMU restarted, or the device was deleted behind vmplug's
        // back): answering "already attached" would be a lie. Clear what is left, attach anew.
        log.warn(
          { device: plan.record.names.device },
          'attached volume has no device in QEMU; attaching it again',
        );
        await this.#clearLost(sandbox, plan.record, signal, log);
        break;
      case 'fresh':
        break;
    }

    // The checks before the first side effect, all under this sandbox's lock, run at once (each is
    // a round trip: QMP, sysfs, a Ceph monitor), and the Pending record is written meanwhile, as
    // soon as the lane and the backend are known: a refusal removes it again before it is
    // answered, so only a crash in that window leaves one, which reconcile rolls back (nothing is
    // in QEMU). Refusals are answered in the order they were once made in. The rbd preflight
    // waits for the backend and the monitor check only: a Ceph that is down must still be
    // answered in milliseconds.
    const calledOff = new AbortController();
    const checkSignal = AbortSignal.any([signal, calledOff.signal]);
    const qa = { ...q, signal: checkSignal };
    // Block mode: allow-list and host-use checks; QEMU gets the resolved device (host-device.ts).
    const hostP =
      freshAttach && hostEarly !== undefined
        ? hostEarly
        : admitSpec(spec, this.#o.checkHostDevice, checkSignal);
    const inspect = (): Promise<SandboxLanes> =>
      inspectLanes(sandbox.qmp, qa).catch((err: unknown) => {
        throw backendFailure('inspect lanes', err, spec.mode === 'rbd' ? [spec.source.key] : []);
      });
    // A scsi target known free from the session's memo needs no listing (lane-memo.ts); the
    // backend may still send the volume to a root port (a storage daemon): listed then.
    const quick = knownScsiLane(sandbox.qmp, spec.bus, this.#o.scsiTargets);
    const lanesP = quick !== undefined ? Promise.resolve(undefined) : inspect();
    const backendP = resolveBackend(spec, sandbox.qmp, qa, this.#vhostUser !== undefined);
    // A check started before the turn counts while fresh (ahead-checks.ts).
    const fresh = this.#o.aheadFreshMs;
    const cephP = takeFresh(ahead?.ceph, fresh, () =>
      checkCephFirst(spec, { timeoutMs: this.#o.cephProbeTimeoutMs, signal: checkSignal }, log),
    );
    const preflightP = Promise.all([backendP, cephP]).then(async ([backend]) => {
      // The image open about to run in the guest's own QEMU would stall its main loop on a stuck
      // OSD: try it out of process first. Through a storage daemon the stall stays there anyway.
      if (spec.mode === 'rbd' && backend !== 'storage-daemon' && this.#o.rbdPreflight !== undefined) {
        const open = this.#o.rbdPreflight;
        await takeFresh(ahead?.preflight, fresh, () => open(spec.source, checkSignal));
      }
    });
    const choiceP = Promise.all([lanesP, backendP]).then(async ([listed, backend]) => {
      if (backend === 'storage-daemon') requireVhostUser(this.#vhostUser);
      // vhost-user-blk-pci goes on a root port, as virtio-blk does.
      const bus = backend === 'storage-daemon' ? 'virtio-blk' : spec.bus;
      if (quick !== undefined && bus !== 'virtio-blk') return { backend, ...quick };
      return { backend, ...chooseLane(bus, listed ?? (await inspect()), this.#o.scsiTargets) };
    });
    let written = false;
    // A block device on a named bus needs neither the lane nor the backend in its Pending record:
    // written at once, beside every check. The lane is written with Attached; a crash before that
    // is finished by reconcile with the lane QEMU reports, or rolled back (nothing in QEMU).
    const early = spec.mode === 'block' && spec.bus !== 'auto' ? spec.bus : undefined;
    const recordP =
      early !== undefined ? Promise.resolve({ bus: early, lane: undefined, backend: undefined }) : choiceP;
    const pendingP = recordP.then(async ({ backend, ...choice }) => {
      // The requested spec: a block device's resolved path replaces it below, in memory, and is
      // written with Attached (a resume resolves the path again, as it checks the host again).
      const record = pendingRecord(
        {
          sandboxId,
          volumeId,
          kind: 'kata',
          fingerprint,
          bus: choice.bus,
          ...(choice.lane !== undefined ? { lane: choice.lane } : {}),
        },
        spec,
        backend,
      );
      // No signal: a refusal or an abort must find either no record or a whole one to remove.
      await this.#o.journal.save(record);
      written = true;
      return { record, backend };
    });
    for (const p of [hostP, lanesP, backendP, choiceP, cephP, preflightP, pendingP]) p.catch(() => undefined);
    let admitted: AttachSpec;
    let choice: Awaited<typeof choiceP>;
    let pending: Awaited<typeof pendingP>;
    try {
      admitted = await hostP;
      phases.mark('hostCheckMs');
      await lanesP;
      phases.mark('lanesMs');
      await backendP;
      phases.mark('backendMs');
      choice = await choiceP;
      await cephP;
      phases.mark('cephMs');
      await preflightP;
      phases.mark('preflightMs');
      pending = await pendingP;
      // What the Pending write took beyond the checks it overlapped.
      phases.mark('pendingMs');
    } catch (err) {
      // Refused: what still runs (a preflight's open) is called off, and a Pending record written
      // meanwhile goes before the answer.
      calledOff.abort();
      hostEarlyOff.abort();
      await pendingP.catch(() => undefined);
      if (written) await this.#o.journal.remove(sandboxId, volumeId);
      throw err;
    }
    // In memory: the resolved path and the lane, written with Attached.
    const record: JournalRecord = {
      ...pending.record,
      lane: choice.lane,
      ...(admitted === spec ? {} : { spec: toStoredSpec(admitted, pending.backend) }),
    };
    log.debug({ bus: record.bus, lane: record.lane, names: record.names }, 'volume Pending');
    const attachment = await this.#runAttach(sandbox, record, admitted, signal, log, false);
    phases.mark('stepsMs');
    // Where a fresh attach's time went (bench/attach.ts --phases).
    const stepTimes = attachment.timeline.reduce((sum, t) => sum + t.ms, 0);
    log.debug(
      { phases: phases.phases, stepTimesMs: stepTimes, checkedAhead: ahead !== undefined },
      'attach timing',
    );
    return { created: true, attachment };
  }

  async #runAttach(
    sandbox: ManagedSandbox,
    record: JournalRecord,
    spec: AttachSpec,
    signal: AbortSignal,
    log: OperationLogger,
    resumed: boolean,
  ): Promise<Attachment> {
    const step = this.#stepContext(sandbox, signal, log, spec);
    if (resumed && spec.mode === 'rbd' && (record.state === 'Pending' || record.state === 'SecretAdded')) {
      // Resuming before blockdev-add: the monitors must answer now, too (a fresh attach checked
      // them before its first journal write, so that a dead Ceph leaves nothing behind).
      await probeMonitors(spec.source.monitors, { timeoutMs: this.#o.cephProbeTimeoutMs, signal });
    }
    try {
      const done = await attachSteps(step, record, spec, {
        fresh: !resumed,
        // A fresh attach chose its lane under this sandbox's lock, from QEMU's view moments ago
        // or the session's memo of it (a lane taken behind vmplug's back since: `relane`). A
        // resumed one holds a lane chosen before a crash, which a NIC or an operator may have
        // taken since: it is read again.
        lane: (recorded) =>
          !resumed && recorded !== undefined
            ? Promise.resolve(recorded)
            : this.#freeLane(sandbox, record.bus, recorded, signal),
        relane: async (refused) => {
          const lanes = await inspectLanes(sandbox.qmp, { timeoutMs: this.#o.qmpTimeoutMs, signal });
          return chooseLane(record.bus, lanes, this.#o.scsiTargets, [refused]).lane;
        },
        ...(this.#o.clientMountTimeoutS !== undefined
          ? { clientMountTimeoutS: this.#o.clientMountTimeoutS }
          : {}),
      });
      log.info(
        { bus: done.bus, lane: done.lane, device: done.names.device, node: done.names.node },
        'attached',
      );
      return attachmentFromRecord(done);
    } catch (err) {
      const failure = backendFailure('attach', err, step.secrets);
      await this.#rollback(step, record.sandboxId, record.volumeId, failure, err, log);
      throw failure;
    }
  }

  /** `recorded` while QEMU shows it free, else a free lane of `bus`. */
  async #freeLane(
    sandbox: ManagedSandbox,
    bus: FrontendBus,
    recorded: Lane | undefined,
    signal: AbortSignal,
  ): Promise<Lane> {
    const lanes = await inspectLanes(sandbox.qmp, { timeoutMs: this.#o.qmpTimeoutMs, signal });
    if (recorded !== undefined && !lanes.used.some((l) => sameLane(l, recorded))) return recorded;
    return chooseLane(bus, lanes, this.#o.scsiTargets).lane;
  }

  async #clearLost(
    sandbox: ManagedSandbox,
    record: JournalRecord,
    signal: AbortSignal,
    log: OperationLogger,
  ): Promise<void> {
    const lost = transition(record, 'Detaching', {
      error: { code: 'DEVICE_LOST', message: `device ${record.names.device} vanished from the sandbox` },
    });
    await this.#o.journal.save(lost);
    await this.#teardown(this.#stepContext(sandbox, signal, log), lost, { waitMs: this.#o.detachTimeoutMs });
  }

  /** Finishes an unfinished rollback or detach of `record` now; DETACH_PENDING (503, retryable) when it cannot. */
  async #settleTeardown(
    sandbox: ManagedSandbox,
    record: JournalRecord,
    signal: AbortSignal,
    log: OperationLogger,
  ): Promise<void> {
    try {
      await this.#teardown(this.#stepContext(sandbox, signal, log), record, {
        waitMs: this.#o.detachTimeoutMs,
      });
      log.info({ state: record.state }, 'finished an unfinished rollback/detach before attaching again');
    } catch (err) {
      if (err instanceof VmplugError && err.retryable) throw err;
      throw new VmplugError(
        'DETACH_PENDING',
        `volume ${record.volumeId} is still being rolled back or detached (${record.state}); retry shortly`,
        { cause: err },
      );
    }
  }

  /**
   * Undoes a failed attach: whatever exists goes, in reverse order, and the record with it. Always
   * a rollback, also of a step QEMU may still complete (its late answer then starts the rollback):
   * the caller is told the attach failed, and a disk it does not know of must not stay in a guest
   * (the same image may be attached elsewhere next).
   */
  async #rollback(
    step: StepContext,
    sandboxId: SandboxId,
    volumeId: VolumeId,
    failure: VmplugError,
    cause: unknown,
    log: OperationLogger,
  ): Promise<void> {
    let current: JournalRecord | undefined;
    try {
      current = await this.#o.journal.load(sandboxId, volumeId);
      if (current === undefined) return;
      if (isAttachState(current.state)) {
        current = transition(current, 'Detaching', {
          error: { code: failure.code, message: failure.message },
        });
        await this.#o.journal.save(current);
      }
      // A step in doubt: the record says Detaching (written above), the rollback waits for QEMU's
      // answer; trying now would queue behind the stuck command and time out as well.
      if (this.#holdInDoubt(sandboxId, volumeId, cause, log)) {
        log.warn({ code: failure.code }, 'attach failed; QEMU has not answered: rolled back when it does');
        return;
      }
      // A fresh context: the rollback must run even when the request's signal fired.
      await this.#teardown({ ...step, signal: new AbortController().signal }, current, {
        waitMs: this.#o.detachTimeoutMs,
      });
      log.warn({ code: failure.code }, 'attach failed; rolled back');
    } catch (err) {
      // Left for QEMU's late answer (#teardown held it) or reconcile, which finish it from the journal.
      log.error(
        { code: failure.code, rollbackError: (err as Error).message, state: current?.state },
        lateAnswerOf(err) !== undefined
          ? 'attach failed and its rollback waits on a late QMP answer'
          : 'attach failed and its rollback did not finish; reconcile will retry',
      );
    }
  }

  async detach(sandboxId: SandboxId, volumeId: VolumeId, ctx: OperationContext): Promise<void> {
    const log = ctx.log.child({ op: 'detach', sandboxId, volumeId });
    await this.admit(sandboxId, ctx.signal, async (signal) => {
      const presence = this.#o.sandboxes.lookup(sandboxId);
      let record = await this.#o.journal.load(sandboxId, volumeId);
      if (presence.state === 'gone') {
        // The sandbox and everything in its QEMU are gone: only vmplug's own files remain.
        if (record !== undefined) {
          // The storage daemon outlives the sandbox: its export goes with the record.
          if (isVhostUser(record))
            await stopHotAttachExport(requireVhostUser(this.#vhostUser), record, signal);
          await removeConfFile(this.#o.stateDir, record.names);
          await this.#o.journal.remove(sandboxId, volumeId);
          await this.#o.journal.pruneSandbox(sandboxId);
          log.info({}, 'sandbox gone; dropped its journal record');
        }
        return;
      }
      if (presence.state === 'unreachable') {
        if (record === undefined) return;
        throw new BackendError(
          'detach',
          `the monitor of sandbox ${sandboxId} does not answer (${presence.reason})`,
          {
            retryable: true,
          },
        );
      }
      if (record === undefined) return;
      this.#refuseWhileInDoubt(sandboxId, volumeId);
      const step = this.#stepContext(presence.sandbox, signal, log);
      if (isAttachState(record.state)) {
        record = transition(record, 'Detaching');
        await this.#o.journal.save(record);
      }
      await this.#teardown(step, record, { waitMs: this.#o.detachTimeoutMs, behind: true });
      log.info({}, 'detached');
    });
  }

  async get(sandboxId: SandboxId, volumeId: VolumeId, ctx: OperationContext): Promise<Attachment> {
    const record = await this.#o.journal.load(sandboxId, volumeId, { signal: ctx.signal });
    const presence = this.#o.sandboxes.lookup(sandboxId);
    if (record === undefined) {
      throw presence.state === 'gone'
        ? new NotFoundError('sandbox', sandboxId)
        : new NotFoundError('volume', volumeId);
    }
    const attachment = this.#hostUse.decorate(attachmentFromRecord(record));
    if (presence.state === 'present' && record.state === 'Attached') {
      try {
        const stats = await this.#stats(presence.sandbox, record, ctx.signal);
        if (stats !== undefined) attachment.stats = stats;
      } catch (err) {
        // Stats are a nicety: the record still answers the question.
        ctx.log.warn({ sandboxId, volumeId, error: (err as Error).message }, 'query-blockstats failed');
      }
    }
    return attachment;
  }

  /** Every attachment of a sandbox the journal knows of. */
  async list(sandboxId: SandboxId, ctx?: Pick<OperationContext, 'signal'>): Promise<Attachment[]> {
    const records = await this.#o.journal.list(sandboxId, ctx?.signal ? { signal: ctx.signal } : {});
    return records.map((r) => this.#hostUse.decorate(attachmentFromRecord(r)));
  }

  protected readonly logFields = {};

  protected async resizeAdmitted(op: ResizeOp): Promise<Attachment> {
    const { sandboxId, volumeId, sizeBytes, log, signal } = op;
    const sandbox = this.#present(sandboxId);
    const record = resizableRecord(await this.#o.journal.load(sandboxId, volumeId), volumeId);
    if (isVhostUser(record)) {
      throw new BackendError(
        'block_resize',
        'resizing a volume served by a storage daemon is not supported yet',
      );
    }
    const q = { timeoutMs: this.#o.qmpTimeoutMs, signal };
    try {
      // QEMU 7.2 crashes (SIGSEGV, checked) on block_resize of a node no device uses.
      if (!(await deviceExists(sandbox.qmp, record.names.device, q))) {
        throw new BackendError('block_resize', `device ${record.names.device} is gone from the sandbox`);
      }
      const current = await this.#size(sandbox, record, signal);
      if (current !== undefined && sizeBytes < current) {
        throw new ValidationError(
          'sizeBytes',
          `must be at least the current size ${current}: shrinking is refused`,
        );
      }
      await blockResize(sandbox.qmp, { 'node-name': record.names.node, size: sizeBytes }, q);
    } catch (err) {
      throw backendFailure('block_resize', err);
    }
    log.info({ sizeBytes }, 'resized');
    const attachment = attachmentFromRecord(record);
    const stats = await this.#stats(sandbox, record, signal).catch(() => undefined);
    if (stats !== undefined) attachment.stats = stats;
    return attachment;
  }

  /** Drains the operations (EngineBase), then waits for the journal writes left behind their answers. */
  override async close(opts: { graceMs?: number } = {}): Promise<void> {
    await super.close(opts);
    await this.#o.journal.settled();
  }

  /** Finishes or rolls back what the journal says is half-done, and removes vmplug objects nobody explains. */
  async reconcile(opts: { signal?: AbortSignal; log?: OperationLogger } = {}): Promise<ReconcileSummary> {
    const log = opts.log ?? this.#o.logger;
    const signal = opts.signal ?? new AbortController().signal;
    const summary = await reconcileAll({
      journal: this.#o.journal,
      sandboxes: this.#o.sandboxes,
      stateDir: this.#o.stateDir,
      log,
      signal,
      qmpTimeoutMs: this.#o.qmpTimeoutMs,
      unplugWaitMs: this.#o.reconcileUnplugWaitMs,
      exclusive: (sandboxId, signal, fn) => this.admit(sandboxId, signal, fn),
      ...(this.#vhostUser === undefined ? {} : { vhostUser: this.#vhostUser }),
    });
    // Attached block devices the host started using: reported, never re-attached.
    const records = await this.#o.journal.list(undefined, { signal });
    await this.#hostUse.sweep(
      records.filter((r) => r.kind === 'kata'),
      log,
      signal,
    );
    return summary;
  }

  /**
   * teardownSteps; when a command of it is left in doubt, the teardown goes on once QEMU answers.
   * Its QMP failures (a query timing out, too) leave as storage errors, never as a 500.
   */
  async #teardown(step: StepContext, record: JournalRecord, opts: TeardownOptions): Promise<void> {
    try {
      await teardownSteps(step, record, opts);
    } catch (err) {
      this.#holdInDoubt(record.sandboxId, record.volumeId, err, step.log);
      throw backendFailure('detach', err, step.secrets);
    }
  }

  #refuseWhileInDoubt(sandboxId: SandboxId, volumeId: VolumeId): void {
    const refusal = this.#inDoubt.refusal(sandboxId, volumeId);
    if (refusal !== undefined) throw refusal;
  }

  /** When `err` left a QMP command in doubt: the volume's teardown runs as soon as QEMU answers it. */
  #holdInDoubt(sandboxId: SandboxId, volumeId: VolumeId, err: unknown, log: OperationLogger): boolean {
    return this.#inDoubt.hold(sandboxId, volumeId, err, (answer) => {
      void this.#settleLate(sandboxId, volumeId, answer, log);
    });
  }

  /**
   * QEMU answered the command in doubt (or its connection ended): in the sandbox's turn, the
   * volume's teardown continues from its journal record (nothing to do when a retry or reconcile
   * settled it first, or a new attach began since).
   */
  async #settleLate(
    sandboxId: SandboxId,
    volumeId: VolumeId,
    answer: LateAnswer,
    log: OperationLogger,
  ): Promise<void> {
    const started = performance.now();
    const late = { command: answer.command, answer: answer.kind, lateMs: answer.afterMs };
    try {
      await this.admit(sandboxId, new AbortController().signal, async (signal) => {
        const record = await this.#o.journal.load(sandboxId, volumeId, { signal });
        if (record === undefined || isAttachState(record.state)) return;
        const presence = this.#o.sandboxes.lookup(sandboxId);
        // Gone or unreachable: reconcile's (records released, or the next round).
        if (presence.state !== 'present') return;
        await this.#teardown(this.#stepContext(presence.sandbox, signal, log), record, {
          waitMs: this.#o.detachTimeoutMs,
        });
        log.info(
          { ...late, settleMs: Math.round(performance.now() - started), from: record.state },
          'late QMP answer: rollback/detach finished',
        );
      });
    } catch (err) {
      // In doubt again (held anew by #teardown), a guest still holding the device, or the engine
      // closing: the record stays, and a retry or reconcile finishes it.
      log.warn(
        { ...late, code: (err as { code?: unknown }).code, error: (err as Error).message },
        'late QMP answer: rollback/detach not finished; left for a retry or reconcile',
      );
    }
  }

  #present(sandboxId: SandboxId): ManagedSandbox {
    return presentSandbox(
      this.#o.sandboxes.lookup(sandboxId),
      sandboxId,
      (detail) => new BackendError('sandbox', detail, { retryable: true }),
    );
  }

  #stepContext(
    sandbox: ManagedSandbox,
    signal: AbortSignal,
    log: OperationLogger,
    spec?: AttachSpec,
  ): StepContext {
    return {
      qmp: sandbox.qmp,
      journal: this.#o.journal,
      stateDir: this.#o.stateDir,
      log,
      signal,
      qmpTimeoutMs: this.#o.qmpTimeoutMs,
      secrets: spec?.mode === 'rbd' ? [spec.source.key] : [],
      ...(this.#vhostUser === undefined ? {} : { vhostUser: this.#vhostUser }),
    };
  }

  async #size(
    sandbox: ManagedSandbox,
    record: JournalRecord,
    signal: AbortSignal,
  ): Promise<number | undefined> {
    const nodes = await queryNamedBlockNodes(sandbox.qmp, { timeoutMs: this.#o.qmpTimeoutMs, signal });
    return nodes.find((n) => n['node-name'] === record.names.node)?.image['virtual-size'];
  }

  async #stats(
    sandbox: ManagedSandbox,
    record: JournalRecord,
    signal: AbortSignal,
  ): Promise<Record<string, number> | undefined> {
    const q = { timeoutMs: this.#o.qmpTimeoutMs, signal };
    const [all, size] = await Promise.all([
      // Per backend (the guest's I/O is accounted on the device's BlockBackend; per-node stats of
      // query-nodes stay zero for reads and writes). The entry names the root node it uses.
      queryBlockstats(sandbox.qmp, false, q),
      this.#size(sandbox, record, signal),
    ]);
    const device = record.names.device;
    const mine =
      all.find((s) => s['node-name'] === record.names.node) ??
      all.find((s) => s.qdev === device || s.qdev === `/machine/peripheral/${device}/virtio-backend`);
    if (mine === undefined) return undefined;
    const out: Record<string, number> = {};
    for (const f of STAT_FIELDS) {
      const v = mine.stats[f];
      if (typeof v === 'number') out[f] = v;
    }
    if (size !== undefined) out.size_bytes = size;
    return out;
  }
}
