import type { SandboxId, VolumeId } from '../../core/ids.js';
import type { Attachment, AttachService } from '../../storage/attach-service.js';
import type { PodRef } from '../../storage/volume-spec.js';

// The attach engine as the daemon's observers see it: the AttachService wrapped so that every
// attach and detach, its outcome and its duration, is told to listeners (metrics, the Kubernetes
// reporter's Pod events and volume list) without the engine (storage/) knowing about any of them.

/** The frontend a volume uses ('auto' when an attach failed before it was resolved). */
export type Frontend = 'scsi' | 'virtio-blk' | 'auto' | 'unknown';

interface OperationBase {
  sandboxId: SandboxId;
  volumeId: VolumeId;
  mode: 'block' | 'rbd' | 'unknown';
  frontend: Frontend;
  /** Wall time of the call. */
  ms: number;
  /**
   * The Pod the attach request named: the request's own for an attach, the one recorded with
   * the volume (as last read) for a detach.
   */
  pod?: PodRef;
}

export type VolumeOperation =
  | (OperationBase & { op: 'attach'; ok: true; created: boolean; attachment: Attachment })
  | (OperationBase & { op: 'detach'; ok: true })
  | (OperationBase & { op: 'attach' | 'detach'; ok: false; code: string; message: string });

export interface ObservedServiceOptions {
  /** Told of every attach and detach once it has an outcome. Must not throw or block. */
  onOperation(op: VolumeOperation): void;
  /** What a volume is, for labelling a detach (the request names only ids). */
  describe?(
    sandboxId: SandboxId,
    volumeId: VolumeId,
  ): { mode: 'block' | 'rbd'; frontend: Frontend; pod?: PodRef } | undefined;
}

/** A listener that cannot throw into the operation it observes. */
export function safely<T>(listener: (x: T) => void): (x: T) => void {
  return (x) => {
    try {
      listener(x);
    } catch {
      // An observer's bug must not turn a done operation into a failed request.
    }
  };
}

export function observeAttachService(inner: AttachService, o: ObservedServiceOptions): AttachService {
  const tell = safely(o.onOperation);
  return {
    async attach(sandboxId, volumeId, spec, ctx) {
      const started = performance.now();
      try {
        const result = await inner.attach(sandboxId, volumeId, spec, ctx);
        const pod = result.attachment.pod ?? spec.pod;
        tell({
          op: 'attach',
          ok: true,
          sandboxId,
          volumeId,
          mode: result.attachment.mode,
          frontend: result.attachment.bus,
          ms: performance.now() - started,
          created: result.created,
          attachment: result.attachment,
          ...(pod !== undefined ? { pod } : {}),
        });
        return result;
      } catch (err) {
        tell({
          op: 'attach',
          ok: false,
          sandboxId,
          volumeId,
          mode: spec.mode,
          frontend: spec.bus,
          ms: performance.now() - started,
          ...(spec.pod !== undefined ? { pod: spec.pod } : {}),
          ...errorOf(err),
        });
        throw err;
      }
    },
    async detach(sandboxId, volumeId, ctx) {
      const known = o.describe?.(sandboxId, volumeId);
      const labels = {
        mode: known?.mode ?? 'unknown',
        frontend: known?.frontend ?? 'unknown',
        ...(known?.pod !== undefined ? { pod: known.pod } : {}),
      } as const;
      const started = performance.now();
      try {
        await inner.detach(sandboxId, volumeId, ctx);
        tell({ op: 'detach', ok: true, sandboxId, volumeId, ...labels, ms: performance.now() - started });
      } catch (err) {
        tell({
          op: 'detach',
          ok: false,
          sandboxId,
          volumeId,
          ...labels,
          ms: performance.now() - started,
          ...errorOf(err),
        });
        throw err;
      }
    },
    get: (sandboxId, volumeId, ctx) => inner.get(sandboxId, volumeId, ctx),
    resize: (sandboxId, volumeId, sizeBytes, ctx) => inner.resize(sandboxId, volumeId, sizeBytes, ctx),
  };
}

/** The code and message of a failed operation, as observers report it (never a stack). */
export function errorOf(err: unknown): { code: string; message: string } {
  const code = (err as { code?: unknown } | null)?.code;
  return {
    code: typeof code === 'string' && /^[A-Z][A-Z0-9_]{0,63}$/.test(code) ? code : 'INTERNAL',
    message: err instanceof Error ? err.message : String(err),
  };
}
