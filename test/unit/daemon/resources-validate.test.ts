import { describe, expect, it } from 'vitest';
import { ResizeError } from '../../../daemon/resize/errors.js';
import type { ResourceView } from '../../../daemon/resize/types.js';
import { dimmsToRemove, planResize, shrinkSteps } from '../../../daemon/resize/validate.js';

// A guest as QEMU reports it after `-smp 1,maxcpus=2 -m 256M,slots=4,maxmem=1024M` and vmplug
// added one vCPU and two DIMMs (128 MiB, then 256 MiB).
const view: ResourceView = {
  vcpus: 2,
  maxVcpus: 2,
  memoryMiB: 640,
  maxMemoryMiB: 1024,
  memoryStepMiB: 128,
  freeMemorySlots: 2,
  minVcpus: 1,
  removableDimmsMiB: [256, 128],
};

function refusal(fn: () => unknown): ResizeError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ResizeError);
    return err as ResizeError;
  }
  throw new Error('expected a refusal');
}

describe('planResize', () => {
  it('plans only what changes', () => {
    expect(planResize({ vcpus: 2, memoryMiB: 640 }, view)).toEqual({});
    expect(planResize({ vcpus: 1 }, view)).toEqual({ vcpus: 1 });
    expect(planResize({ memoryMiB: 1024 }, view)).toEqual({ memoryMiB: 1024 });
    expect(planResize({ memoryMiB: 384 }, view)).toEqual({ memoryMiB: 384 });
  });

  it.each([
    [{ vcpus: 3 }, 'RESOURCE_OUT_OF_RANGE', 'vcpus', 422],
    [{ vcpus: 0 }, 'RESOURCE_OUT_OF_RANGE', 'vcpus', 422],
    [{ vcpus: 1.5 }, 'RESOURCE_OUT_OF_RANGE', 'vcpus', 422],
    [{ memoryMiB: 1152 }, 'RESOURCE_OUT_OF_RANGE', 'memoryMiB', 422],
    [{ memoryMiB: 0 }, 'RESOURCE_OUT_OF_RANGE', 'memoryMiB', 422],
    [{ memoryMiB: 700 }, 'MEMORY_MISALIGNED', 'memoryMiB', 422],
    // 512 would need the older 128 MiB DIMM out while the newer 256 MiB one stays.
    [{ memoryMiB: 512 }, 'SHRINK_UNSUPPORTED', 'memoryMiB', 422],
    [{ memoryMiB: 128 }, 'SHRINK_UNSUPPORTED', 'memoryMiB', 422],
  ] as const)('%j is refused with %s on %s', (request, code, field, status) => {
    const err = refusal(() => planResize(request, view));
    expect(err).toMatchObject({ code, field, status });
  });

  it('checks every field before anything changes', () => {
    expect(refusal(() => planResize({ vcpus: 1, memoryMiB: 4096 }, view)).field).toBe('memoryMiB');
  });

  it('refuses to go below the CPUs vmplug did not add', () => {
    const boot = { ...view, vcpus: 1, minVcpus: 1, maxVcpus: 4 };
    expect(planResize({ vcpus: 1 }, boot)).toEqual({});
    const two = { ...view, vcpus: 2, minVcpus: 2, maxVcpus: 4 };
    expect(refusal(() => planResize({ vcpus: 1 }, two))).toMatchObject({
      code: 'SHRINK_UNSUPPORTED',
      field: 'vcpus',
    });
  });

  it('says why when vCPUs cannot be removed on this guest at all', () => {
    const blocked = { ...view, vcpuShrinkBlocked: 'QEMU runs without KVM' };
    const err = refusal(() => planResize({ vcpus: 1 }, blocked));
    expect(err).toMatchObject({ code: 'SHRINK_UNSUPPORTED', field: 'vcpus' });
    expect(err.message).toContain('without KVM');
    expect(planResize({ vcpus: 2 }, blocked)).toEqual({});
  });

  it('needs a free slot to grow memory', () => {
    const full = { ...view, freeMemorySlots: 0 };
    expect(refusal(() => planResize({ memoryMiB: 768 }, full))).toMatchObject({
      code: 'NO_MEMORY_SLOT',
      status: 409,
      field: 'memoryMiB',
    });
    expect(planResize({ memoryMiB: 384 }, full)).toEqual({ memoryMiB: 384 });
  });

  it('has nothing to shrink when vmplug added no memory', () => {
    const boot = { ...view, memoryMiB: 256, removableDimmsMiB: [] };
    expect(refusal(() => planResize({ memoryMiB: 128 }, boot)).message).toContain('added no memory');
  });
});

describe('shrink steps', () => {
  it('removes the newest DIMMs first', () => {
    expect(shrinkSteps(view)).toEqual([384, 256]);
    expect(dimmsToRemove(view, 384)).toBe(1);
    expect(dimmsToRemove(view, 256)).toBe(2);
    expect(() => dimmsToRemove(view, 512)).toThrow(ResizeError);
  });
});

describe('ResizeError', () => {
  it('is retryable only where the same request may later succeed', () => {
    expect(new ResizeError('GUEST_REFUSED_UNPLUG', 'x', 'vcpus').retryable).toBe(false);
    expect(new ResizeError('SANDBOX_UNAVAILABLE', 'x').retryable).toBe(true);
    expect(new ResizeError('MEMORY_MISALIGNED', 'x', 'memoryMiB').retryable).toBe(false);
  });
});
