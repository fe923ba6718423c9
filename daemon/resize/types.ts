// The model shared by the Kata (QMP) and libvirt resizers.

/** What the API answers: the guest's vCPUs and memory now, and the ceilings it was started with. */
export interface GuestResources {
  vcpus: number;
  maxVcpus: number;
  memoryMiB: number;
  maxMemoryMiB: number;
}

/** `PATCH .../resources`: absent fields stay as they are. */
export interface ResizeRequest {
  vcpus?: number;
  memoryMiB?: number;
}

/** What a resizer knows beyond GuestResources, so validation can decide before anything changes. */
export interface ResourceView extends GuestResources {
  /** Memory changes in whole multiples of this (the guest's memory block size). */
  memoryStepMiB: number;
  /** Memory slots left for another DIMM. */
  freeMemorySlots: number;
  /** The lowest vCPU count reachable by removing what vmplug added. */
  minVcpus: number;
  /** Why vCPUs cannot be removed at all on this guest, when that is the case. */
  vcpuShrinkBlocked?: string;
  /** Sizes of the DIMMs vmplug added, newest first: shrinking removes them in this order. */
  removableDimmsMiB: number[];
}

export interface ResizeCallOptions {
  signal?: AbortSignal;
  /** Bound on waiting for the guest to release a CPU or DIMM. */
  unplugTimeoutMs?: number;
}

/** One sandbox's resize backend (QEMU's monitor or libvirt). */
export interface GuestResizer {
  readonly kind: 'kata' | 'libvirt';
  inspect(opts: ResizeCallOptions): Promise<ResourceView>;
  /** Brings the vCPU count to `target` (already validated against `view`). */
  setVcpus(target: number, view: ResourceView, opts: ResizeCallOptions): Promise<void>;
  /** Brings memory to `targetMiB` (already validated against `view`). */
  setMemory(targetMiB: number, view: ResourceView, opts: ResizeCallOptions): Promise<void>;
}

export function resourcesOf(view: ResourceView): GuestResources {
  return {
    vcpus: view.vcpus,
    maxVcpus: view.maxVcpus,
    memoryMiB: view.memoryMiB,
    maxMemoryMiB: view.maxMemoryMiB,
  };
}
