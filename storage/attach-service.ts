import type { Attachment, AttachmentSource } from '../api/index.js';
import { EngineBase } from '../core/engine-base.js';
import { BackendError, ConflictError, NotFoundError, ValidationError } from '../core/errors.js';
import type { SandboxId, VolumeId } from '../core/ids.js';
import { PhaseClock } from '../core/phase-clock.js';
import type { AttachAhead } from './ahead-checks.js';
import { type JournalRecord, type NewRecord, newRecord } from './journal.js';
import { guestHint } from './naming.js';
import { isVhostUser, vhostUserGuestHint } from './vhost-user.js';
import {
  type AttachSpec,
  formatMonitor,
  type ResolvedRbdBackend,
  type StoredSpec,
  storedBackend,
  toStoredSpec,
} from './volume-spec.js';

// What the volume routes need from the attach engine. The engine (storage/) implements it; the
// routes only translate HTTP to these calls and the answers back, so the engine can be tested
// without HTTP and the routes without QEMU.

export interface OperationContext {
  /**
   * Aborted when the daemon gives up on the operation (shutdown past its grace period). A client
   * hanging up does not abort it: the journal makes a finished attach safe, and the client's
   * retry then finds it done.
   */
  signal: AbortSignal;
  /** The request's logger: every line carries its request id. */
  log: OperationLogger;
}

/** The pino subset the engine may use (a pino Logger and fastify's request.log both fit). */
export interface OperationLogger {
  trace(obj: Record<string, unknown>, msg?: string): void;
  debug(obj: Record<string, unknown>, msg?: string): void;
  info(obj: Record<string, unknown>, msg?: string): void;
  warn(obj: Record<string, unknown>, msg?: string): void;
  error(obj: Record<string, unknown>, msg?: string): void;
  /** Adds fields to every line, e.g. `{ op: 'attach', sandboxId, volumeId }`. */
  child(bindings: Record<string, unknown>): OperationLogger;
}

/** The engine's volumes of a sandbox. */
export type ListVolumes = (sandboxId: SandboxId, ctx: OperationContext) => Promise<Attachment[]>;

export type { Attachment, AttachmentCondition, AttachmentSource } from '../api/index.js';

export interface AttachResult {
  /** False when the same spec was already attached (the API answers 200 instead of 201). */
  created: boolean;
  attachment: Attachment;
}

export interface AttachService {
  /** Idempotent: same spec returns the existing attachment; a different spec throws ConflictError. */
  attach(
    sandboxId: SandboxId,
    volumeId: VolumeId,
    spec: AttachSpec,
    ctx: OperationContext,
  ): Promise<AttachResult>;
  /** Idempotent: an unknown or already detached volume resolves too. */
  detach(sandboxId: SandboxId, volumeId: VolumeId, ctx: OperationContext): Promise<void>;
  /** Throws NotFoundError for an unknown sandbox or volume. */
  get(sandboxId: SandboxId, volumeId: VolumeId, ctx: OperationContext): Promise<Attachment>;
  /** Online expand to `sizeBytes`. */
  resize(
    sandboxId: SandboxId,
    volumeId: VolumeId,
    sizeBytes: number,
    ctx: OperationContext,
  ): Promise<Attachment>;
}

/** The API view of a stored spec's source: the key is never stored, so never shown. */
export function attachmentSource(spec: StoredSpec): AttachmentSource {
  return spec.mode === 'block'
    ? { type: 'hostDevice', path: spec.source.path }
    : {
        type: 'rbd',
        pool: spec.source.pool,
        image: spec.source.image,
        monitors: spec.source.monitors.map(formatMonitor),
        user: spec.source.user,
        ...(spec.source.namespace !== undefined ? { namespace: spec.source.namespace } : {}),
        ...(spec.source.snapshot !== undefined ? { snapshot: spec.source.snapshot } : {}),
      };
}

/** The API view of a journal record; the engine adds `stats` where it has them. */
export function attachmentFromRecord(record: JournalRecord): Attachment {
  const spec = record.spec;
  const source = attachmentSource(spec);
  const a: Attachment = {
    sandboxId: record.sandboxId,
    volumeId: record.volumeId,
    mode: spec.mode,
    bus: record.bus,
    readOnly: spec.readOnly,
    state: record.state,
    nodeName: record.names.node,
    deviceId: record.names.device,
    serial: record.names.serial,
    guestHint:
      isVhostUser(record) && record.lane?.bus === 'virtio-blk'
        ? vhostUserGuestHint(record.lane.port)
        : guestHint(record.bus, record.names.serial),
    source,
    timeline: record.timeline.map((t) => ({ ...t })),
  };
  const backend = storedBackend(spec);
  if (backend !== undefined) a.backend = backend;
  if (record.lastError !== undefined) a.lastError = { ...record.lastError };
  if (record.pod !== undefined) a.pod = { ...record.pod };
  return a;
}

/** What a volume operation gets once its engine is closing (both engines: the same 502, retryable). */
export function shuttingDown(): BackendError {
  return new BackendError('engine', 'vmplugd is shutting down; retry', { retryable: true });
}

/** The 409 of an attach planned as a conflict (core/plan-attach.ts); `where`: "sandbox <id>", "domain <id>". */
export function attachConflict(
  plan: { reason: 'spec' | 'detaching'; record: Pick<JournalRecord, 'volumeId' | 'state'> },
  where: string,
): ConflictError {
  const volume = plan.record.volumeId;
  return new ConflictError(
    plan.reason === 'spec'
      ? `volume ${volume} is already attached to ${where} with a different spec; detach it first`
      : `volume ${volume} is being detached from ${where} (${plan.record.state}); finish the detach first`,
  );
}

/** The Pending record of a fresh attach of `spec` (both engines; `placement`: bus, and lane for Kata). */
export function pendingRecord(
  init: Pick<NewRecord, 'sandboxId' | 'volumeId' | 'kind' | 'fingerprint' | 'bus' | 'lane'>,
  spec: AttachSpec,
  backend?: ResolvedRbdBackend,
): JournalRecord {
  return newRecord({
    ...init,
    spec: toStoredSpec(spec, backend),
    ...(spec.pod !== undefined ? { pod: spec.pod } : {}),
  });
}

/** A resize's new size: whole 512-byte sectors, else a 422 naming sizeBytes (checked before admission). */
export function checkResizeBytes(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 512 !== 0) {
    throw new ValidationError('sizeBytes', 'must be a positive whole number of 512-byte sectors');
  }
}

/** The record a resize acts on: 404 without one (`record` undefined), 409 unless it is Attached. */
export function resizableRecord(record: JournalRecord | undefined, volumeId: VolumeId): JournalRecord {
  if (record === undefined) throw new NotFoundError('volume', volumeId);
  if (record.state !== 'Attached') {
    throw new ConflictError(`volume ${volumeId} is ${record.state}, not Attached; it cannot be resized now`);
  }
  return record;
}

/** An operation admitted to its sandbox's turn, as the engine's own steps get it. */
interface AdmittedOp {
  sandboxId: SandboxId;
  volumeId: VolumeId;
  /** The request's logger with the op, the ids and the engine's fields. */
  log: OperationLogger;
  /** The caller's signal, also aborted when the engine's close() grace runs out. */
  signal: AbortSignal;
}

export type AttachOp = AdmittedOp & {
  spec: AttachSpec;
  /** Started when the request reached the engine; 'turnMs' marked once admitted. */
  phases: PhaseClock;
  /** Checks started while the attach waited for its turn (checksBeforeTurn), if any. */
  ahead: AttachAhead | undefined;
};
export type ResizeOp = AdmittedOp & { sizeBytes: number };

/**
 * What the two volume engines (Kata over QMP, libvirt) share above the engine base: what can be
 * refused without the sandbox is refused before admission; the engine's own steps run in the
 * sandbox's turn.
 */
export abstract class VolumeEngine extends EngineBase {
  /** Fields every log line of this engine's operations carries besides the op and the ids. */
  protected abstract readonly logFields: Readonly<Record<string, unknown>>;

  /** Refuses, before admission, a spec this engine cannot serve (by default none). */
  protected refuseSpec(_spec: AttachSpec): void {}

  /**
   * Checks of `spec` that read nothing of the sandbox, started when the attach, waiting for its
   * sandbox's turn, is near it (by default none); attachAdmitted gets them as `op.ahead`. `signal`
   * fires when the attach ends (or is aborted), calling off what nobody took.
   */
  protected checksBeforeTurn(
    _sandboxId: SandboxId,
    _spec: AttachSpec,
    _log: OperationLogger,
    _signal: AbortSignal,
  ): AttachAhead | undefined {
    return undefined;
  }

  /** The engine's attach, once admitted: planAttach on the journal's record, then its steps. */
  protected abstract attachAdmitted(op: AttachOp): Promise<AttachResult>;

  /** The engine's resize, once admitted (the record loaded and checked there). */
  protected abstract resizeAdmitted(op: ResizeOp): Promise<Attachment>;

  /** Idempotent attach (AttachService.attach). */
  async attach(
    sandboxId: SandboxId,
    volumeId: VolumeId,
    spec: AttachSpec,
    ctx: OperationContext,
  ): Promise<AttachResult> {
    this.refuseSpec(spec);
    const log = ctx.log.child({ op: 'attach', sandboxId, volumeId, ...this.logFields });
    const phases = new PhaseClock();
    const done = new AbortController();
    let ahead: AttachAhead | undefined;
    try {
      return await this.admit(
        sandboxId,
        ctx.signal,
        (signal) => {
          phases.mark('turnMs');
          return this.attachAdmitted({ sandboxId, volumeId, spec, log, signal, phases, ahead });
        },
        // Near its turn in the sandbox's queue: its checks overlap the operations ahead of it.
        () => {
          ahead = this.checksBeforeTurn(sandboxId, spec, log, AbortSignal.any([ctx.signal, done.signal]));
        },
      );
    } finally {
      done.abort();
    }
  }

  /** Online expand to `sizeBytes` (AttachService.resize). */
  async resize(
    sandboxId: SandboxId,
    volumeId: VolumeId,
    sizeBytes: number,
    ctx: OperationContext,
  ): Promise<Attachment> {
    checkResizeBytes(sizeBytes);
    const log = ctx.log.child({ op: 'resize', sandboxId, volumeId, ...this.logFields });
    return this.admit(sandboxId, ctx.signal, (signal) =>
      this.resizeAdmitted({ sandboxId, volumeId, sizeBytes, log, signal }),
    );
  }
}
