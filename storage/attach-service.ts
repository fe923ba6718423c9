import type { Attachment, AttachmentSource } from '../api/index.js';
import type { SandboxId, VolumeId } from '../core/ids.js';
import type { JournalRecord } from './journal.js';
import { guestHint } from './naming.js';
import { type AttachSpec, formatMonitor } from './volume-spec.js';

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

export type { Attachment, AttachmentSource } from '../api/index.js';

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

/** The API view of a journal record; the engine adds `stats` where it has them. */
export function attachmentFromRecord(record: JournalRecord): Attachment {
  const spec = record.spec;
  const source: AttachmentSource =
    spec.mode === 'block'
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
    guestHint: guestHint(record.bus, record.names.serial),
    source,
    timeline: record.timeline.map((t) => ({ ...t })),
  };
  if (record.lastError !== undefined) a.lastError = { ...record.lastError };
  if (record.pod !== undefined) a.pod = { ...record.pod };
  return a;
}
