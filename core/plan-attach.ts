// What an attach request does given what the journal already holds for it: the decision every
// engine (Kata volumes, libvirt volumes, NICs) takes before it acts, as one pure function (as
// KubeVirt's virt-launcher computes attached/detached disks by a pure diff before it acts).
// The engines only fetch the inputs and carry the plan out.

/** The part of a journal record the plan looks at. */
export interface PlannedRecord<S extends string = string> {
  readonly state: S;
  /** The keyed fingerprint of the spec the record was attached with. */
  readonly fingerprint: string;
}

export type AttachPlan<R> =
  /** Nothing recorded: a new attach. */
  | { kind: 'fresh' }
  /** Attached with this spec and the device is there: answer it, created: false. */
  | { kind: 'reuse'; record: R }
  /** Another spec under the same id, or a detach in progress: 409, nothing done. */
  | { kind: 'conflict'; reason: 'spec' | 'detaching'; record: R }
  /** A half-done attach of this spec (a crash, or a rollback that did not finish). */
  | { kind: 'resume'; record: R }
  /** Attached with this spec but the device is gone from the guest: clear it, then attach anew. */
  | { kind: 'clear-lost'; record: R };

/**
 * True when the plan depends on whether the device is still in the guest: only then is it worth
 * asking the hypervisor (an Attached record of the same spec). A type guard so the caller can read
 * the record's device name in the same expression; false says nothing about the record.
 */
export function needsDeviceCheck<R extends PlannedRecord>(
  existing: R | undefined,
  fingerprint: string,
): existing is R {
  return existing?.state === 'Attached' && existing.fingerprint === fingerprint;
}

/**
 * The plan for an attach of the spec with `fingerprint`. `devicePresent` matters only when
 * needsDeviceCheck said so; `isAttaching` tells the engine's attach states (Attached included)
 * from its detach states.
 */
export function planAttach<R extends PlannedRecord>(
  existing: R | undefined,
  fingerprint: string,
  devicePresent: boolean,
  isAttaching: (state: R['state']) => boolean,
): AttachPlan<R> {
  if (existing === undefined) return { kind: 'fresh' };
  if (existing.fingerprint !== fingerprint) return { kind: 'conflict', reason: 'spec', record: existing };
  if (existing.state === 'Attached') {
    return devicePresent ? { kind: 'reuse', record: existing } : { kind: 'clear-lost', record: existing };
  }
  if (!isAttaching(existing.state)) return { kind: 'conflict', reason: 'detaching', record: existing };
  return { kind: 'resume', record: existing };
}
