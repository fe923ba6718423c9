import { DeviceInUseError, DeviceNotAllowedError } from '../core/errors.js';
import type { Attachment, AttachmentCondition, OperationLogger } from './attach-service.js';
import type { HostDeviceCheck } from './host-device.js';
import type { JournalRecord } from './journal.js';

// At reconcile, every attached block-mode volume is checked again with the engine's own
// HostDeviceCheck: a device the host started using since the attach (mounted, swapped on, put
// under dm/md) or one the allow-list no longer admits is reported, as a warning log line and a
// `HostInUse` condition on the attachment. It is never detached by vmplug (pulling a disk from a
// running guest is a harm of its own; the operator decides), and a later attach of it is refused
// by the same check. Conditions live in memory: the first reconcile after a restart recomputes them.

export class HostUseWatch {
  readonly #check: HostDeviceCheck;
  readonly #conditions = new Map<string, AttachmentCondition>();

  constructor(check: HostDeviceCheck) {
    this.#check = check;
  }

  /** Re-checks the attached block-mode records among `records`; forgets volumes no longer listed. */
  async sweep(records: readonly JournalRecord[], log: OperationLogger, signal: AbortSignal): Promise<void> {
    const seen = new Set<string>();
    for (const r of records) {
      if (r.state !== 'Attached' || r.spec.mode !== 'block') continue;
      signal.throwIfAborted();
      const key = keyOf(r.sandboxId, r.volumeId);
      seen.add(key);
      const path = r.spec.source.path;
      const ids = { sandboxId: r.sandboxId, volumeId: r.volumeId, path };
      try {
        await this.#check(path, { signal });
        if (this.#conditions.delete(key)) log.info(ids, 'attached block device no longer used by the host');
      } catch (err) {
        if (!(err instanceof DeviceInUseError || err instanceof DeviceNotAllowedError)) {
          // Vanished or unreadable: not a host use; the next round looks again.
          log.debug({ ...ids, error: (err as Error).message }, 'host-use check of an attached device failed');
          continue;
        }
        const before = this.#conditions.get(key);
        if (before?.message === err.message) continue;
        this.#conditions.set(key, {
          type: 'HostInUse',
          code: err.code,
          message: err.message,
          since: before?.since ?? new Date().toISOString(),
        });
        log.warn(
          { ...ids, hostInUse: true, code: err.code, error: err.message },
          'attached block device is used by the host (or no longer allowed): reported, left attached, never attached again',
        );
      }
    }
    for (const key of [...this.#conditions.keys()]) if (!seen.has(key)) this.#conditions.delete(key);
  }

  /** The attachment with its host-use condition, if any. */
  decorate(a: Attachment): Attachment {
    const c = this.#conditions.get(keyOf(a.sandboxId, a.volumeId));
    return c === undefined ? a : { ...a, conditions: [{ ...c }] };
  }
}

function keyOf(sandboxId: string, volumeId: string): string {
  return `${sandboxId}/${volumeId}`;
}
