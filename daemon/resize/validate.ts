import { ResizeError } from './errors.js';
import type { ResizeRequest, ResourceView } from './types.js';

// Decides whether a request can be met before anything is changed, so a refused request leaves
// the guest as it was. Pure: unit-tested without a guest.

/** What to change; a field is present only when it differs from now. */
export interface ResizePlan {
  vcpus?: number;
  memoryMiB?: number;
}

export function planResize(request: ResizeRequest, view: ResourceView): ResizePlan {
  const plan: ResizePlan = {};
  if (request.vcpus !== undefined) {
    const v = request.vcpus;
    if (!Number.isInteger(v) || v < 1 || v > view.maxVcpus)
      throw new ResizeError(
        'RESOURCE_OUT_OF_RANGE',
        `vcpus must be an integer from 1 to ${view.maxVcpus} (the guest's maxcpus), got ${v}`,
        'vcpus',
      );
    if (v < view.vcpus && view.vcpuShrinkBlocked !== undefined)
      throw new ResizeError(
        'SHRINK_UNSUPPORTED',
        `vcpus cannot go below the current ${view.vcpus}: ${view.vcpuShrinkBlocked}`,
        'vcpus',
      );
    if (v < view.minVcpus)
      throw new ResizeError(
        'SHRINK_UNSUPPORTED',
        `vcpus cannot go below ${view.minVcpus}: only vCPUs that vmplug hot-added can be removed (now ${view.vcpus})`,
        'vcpus',
      );
    if (v !== view.vcpus) plan.vcpus = v;
  }
  if (request.memoryMiB !== undefined) {
    const m = request.memoryMiB;
    if (!Number.isInteger(m) || m <= 0 || m > view.maxMemoryMiB)
      throw new ResizeError(
        'RESOURCE_OUT_OF_RANGE',
        `memoryMiB must be an integer from 1 to ${view.maxMemoryMiB} (the guest's maxmem), got ${m}`,
        'memoryMiB',
      );
    const delta = m - view.memoryMiB;
    if (delta % view.memoryStepMiB !== 0)
      throw new ResizeError(
        'MEMORY_MISALIGNED',
        `memoryMiB must differ from the current ${view.memoryMiB} by a multiple of ${view.memoryStepMiB} MiB (the guest's memory block size), got ${m}`,
        'memoryMiB',
      );
    if (delta > 0 && view.freeMemorySlots < 1)
      throw new ResizeError(
        'NO_MEMORY_SLOT',
        'every memory slot of the guest is taken; shrink first or start the guest with more slots',
        'memoryMiB',
      );
    if (delta < 0) {
      const reachable = shrinkSteps(view);
      if (!reachable.includes(m))
        throw new ResizeError(
          'SHRINK_UNSUPPORTED',
          reachable.length === 0
            ? `memoryMiB cannot go below the current ${view.memoryMiB}: vmplug added no memory to this guest`
            : `memoryMiB can only shrink by removing the DIMMs vmplug added, to one of ${reachable.join(', ')}, got ${m}`,
          'memoryMiB',
        );
    }
    if (delta !== 0) plan.memoryMiB = m;
  }
  return plan;
}

/** Memory sizes reached by removing vmplug's DIMMs newest first. */
export function shrinkSteps(view: ResourceView): number[] {
  const steps: number[] = [];
  let at = view.memoryMiB;
  for (const size of view.removableDimmsMiB) {
    at -= size;
    steps.push(at);
  }
  return steps;
}

/** How many of the newest vmplug DIMMs to remove to reach `targetMiB` (validated by planResize). */
export function dimmsToRemove(view: ResourceView, targetMiB: number): number {
  const i = shrinkSteps(view).indexOf(targetMiB);
  if (i < 0)
    throw new ResizeError(
      'SHRINK_UNSUPPORTED',
      `no set of vmplug DIMMs leaves ${targetMiB} MiB`,
      'memoryMiB',
    );
  return i + 1;
}
