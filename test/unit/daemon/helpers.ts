import { Writable } from 'node:stream';
import { ConflictError, NotFoundError } from '../../../core/errors.js';
import type { SandboxId, VolumeId } from '../../../core/ids.js';
import { createLogger, type Logger } from '../../../daemon/logger.js';
import {
  type Attachment,
  type AttachResult,
  type AttachService,
  attachmentFromRecord,
  type OperationContext,
} from '../../../storage/attach-service.js';
import { newRecord } from '../../../storage/journal.js';
import { type AttachSpec, specFingerprint, toStoredSpec } from '../../../storage/volume-spec.js';

/** A pino logger writing JSON lines into memory. */
export function memoryLogger(level: 'info' | 'debug' | 'trace' = 'info'): {
  logger: Logger;
  lines: () => Record<string, unknown>[];
  text: () => string;
} {
  const chunks: string[] = [];
  const destination = new Writable({
    write(chunk, _enc, cb) {
      chunks.push(String(chunk));
      cb();
    },
  });
  const logger = createLogger({ level, destination });
  const text = () => chunks.join('');
  const lines = () =>
    text()
      .split('\n')
      .filter((l) => l.length > 0)
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  return { logger, lines, text };
}

/** A cephx key of the shape `ceph auth get-key` prints (type 1, 16-byte secret). */
export function cephxKey(fill = 7): string {
  const blob = Buffer.alloc(28);
  blob.writeUInt16LE(1, 0);
  blob.writeUInt16LE(16, 10);
  blob.fill(fill, 12);
  return blob.toString('base64');
}

export interface Call {
  op: 'attach' | 'detach' | 'get' | 'resize';
  sandboxId: string;
  volumeId: string;
  ctx: OperationContext;
}

/**
 * An in-memory engine with the contract's semantics (same spec: existing attachment, created
 * false; other spec: ConflictError; detach of unknown: fine; unknown sandbox: NotFoundError),
 * built from the real storage helpers so the attachment has the real shape.
 */
export class FakeAttachService implements AttachService {
  readonly calls: Call[] = [];
  readonly sandboxes = new Set<string>(['sb1', 'sb2']);
  readonly #volumes = new Map<string, { fingerprint: string; attachment: Attachment }>();
  readonly #fingerprintKey = Buffer.alloc(32, 1);
  /** Resolved before an operation returns, to hold it in flight. */
  gate: Promise<void> | undefined;
  fail: Error | undefined;

  async attach(
    sandboxId: SandboxId,
    volumeId: VolumeId,
    spec: AttachSpec,
    ctx: OperationContext,
  ): Promise<AttachResult> {
    this.calls.push({ op: 'attach', sandboxId, volumeId, ctx });
    ctx.log.info({ op: 'attach', sandboxId, volumeId }, 'attach started');
    await this.gate;
    if (this.fail !== undefined) throw this.fail;
    this.#knownSandbox(sandboxId);
    const fingerprint = specFingerprint(spec, this.#fingerprintKey);
    const k = `${sandboxId}/${volumeId}`;
    const existing = this.#volumes.get(k);
    if (existing !== undefined) {
      if (existing.fingerprint !== fingerprint) {
        throw new ConflictError(`volume ${volumeId} is attached to ${sandboxId} with another spec`);
      }
      return { created: false, attachment: existing.attachment };
    }
    const record = newRecord({
      sandboxId,
      volumeId,
      kind: 'kata',
      spec: toStoredSpec(spec),
      fingerprint,
      bus: spec.bus === 'virtio-blk' ? 'virtio-blk' : 'scsi',
      ...(spec.pod !== undefined ? { pod: spec.pod } : {}),
    });
    record.state = 'Attached';
    record.timeline.push({ step: 'Attached', at: new Date().toISOString(), ms: 12 });
    const attachment = attachmentFromRecord(record);
    this.#volumes.set(k, { fingerprint, attachment });
    return { created: true, attachment };
  }

  async detach(sandboxId: SandboxId, volumeId: VolumeId, ctx: OperationContext): Promise<void> {
    this.calls.push({ op: 'detach', sandboxId, volumeId, ctx });
    await this.gate;
    if (this.fail !== undefined) throw this.fail;
    this.#volumes.delete(`${sandboxId}/${volumeId}`);
  }

  async get(sandboxId: SandboxId, volumeId: VolumeId, ctx: OperationContext): Promise<Attachment> {
    this.calls.push({ op: 'get', sandboxId, volumeId, ctx });
    if (this.fail !== undefined) throw this.fail;
    this.#knownSandbox(sandboxId);
    const v = this.#volumes.get(`${sandboxId}/${volumeId}`);
    if (v === undefined) throw new NotFoundError('volume', volumeId);
    return v.attachment;
  }

  async resize(
    sandboxId: SandboxId,
    volumeId: VolumeId,
    _sizeBytes: number,
    ctx: OperationContext,
  ): Promise<Attachment> {
    this.calls.push({ op: 'resize', sandboxId, volumeId, ctx });
    return this.get(sandboxId, volumeId, ctx);
  }

  #knownSandbox(id: string): void {
    if (!this.sandboxes.has(id)) throw new NotFoundError('sandbox', id);
  }
}
