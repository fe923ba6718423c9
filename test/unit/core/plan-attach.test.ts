import { describe, expect, it } from 'vitest';
import { type AttachPlan, needsDeviceCheck, planAttach } from '../../../core/plan-attach.js';

// The decision every engine takes before an attach acts, as a table: what the journal holds,
// the request's fingerprint, whether the device is in the guest -> what happens.

type State = 'Pending' | 'DeviceAdded' | 'Attached' | 'Detaching' | 'DeviceDeleted';
const attaching = (s: State): boolean => s === 'Pending' || s === 'DeviceAdded' || s === 'Attached';
const rec = (state: State, fingerprint = 'fp-a') => ({ state, fingerprint });

const table: Array<{
  case: string;
  existing: ReturnType<typeof rec> | undefined;
  present: boolean;
  check: boolean;
  plan: AttachPlan<unknown>['kind'];
  reason?: 'spec' | 'detaching';
}> = [
  { case: 'nothing recorded', existing: undefined, present: false, check: false, plan: 'fresh' },
  {
    case: 'attached, same spec, device there',
    existing: rec('Attached'),
    present: true,
    check: true,
    plan: 'reuse',
  },
  {
    case: 'attached, same spec, device lost',
    existing: rec('Attached'),
    present: false,
    check: true,
    plan: 'clear-lost',
  },
  {
    case: 'attached, other spec',
    existing: rec('Attached', 'fp-b'),
    present: true,
    check: false,
    plan: 'conflict',
    reason: 'spec',
  },
  { case: 'half-done, same spec', existing: rec('Pending'), present: false, check: false, plan: 'resume' },
  {
    case: 'half-done past device_add, same spec',
    existing: rec('DeviceAdded'),
    present: true,
    check: false,
    plan: 'resume',
  },
  {
    case: 'half-done, other spec',
    existing: rec('Pending', 'fp-b'),
    present: false,
    check: false,
    plan: 'conflict',
    reason: 'spec',
  },
  {
    case: 'detaching, same spec',
    existing: rec('Detaching'),
    present: true,
    check: false,
    plan: 'conflict',
    reason: 'detaching',
  },
  {
    case: 'detach past the device, same spec',
    existing: rec('DeviceDeleted'),
    present: false,
    check: false,
    plan: 'conflict',
    reason: 'detaching',
  },
  {
    case: 'detaching, other spec',
    existing: rec('Detaching', 'fp-b'),
    present: false,
    check: false,
    plan: 'conflict',
    reason: 'spec',
  },
];

describe('planAttach', () => {
  it.each(table)('$case -> $plan', (row) => {
    expect(needsDeviceCheck(row.existing, 'fp-a')).toBe(row.check);
    const plan = planAttach(row.existing, 'fp-a', row.present, attaching);
    expect(plan.kind).toBe(row.plan);
    if (plan.kind === 'conflict') expect(plan.reason).toBe(row.reason);
    if (plan.kind !== 'fresh') expect(plan.record).toBe(row.existing);
  });

  it('ignores the device presence unless the record is Attached with the same spec', () => {
    for (const row of table.filter((r) => !r.check)) {
      const kinds = [true, false].map((present) => planAttach(row.existing, 'fp-a', present, attaching).kind);
      expect(kinds[0]).toBe(kinds[1]);
    }
  });
});
