// Failures of a guest resize, each with a stable `code` (never rename one), the HTTP status the
// REST API answers with, and the request `field` it is about. Duck-typed as the daemon's
// CodedError, so problem+json carries them unchanged.

export type ResizeErrorCode =
  /** The value lies outside what this guest was started with (maxcpus, maxmem). */
  | 'RESOURCE_OUT_OF_RANGE'
  /** Memory is changed in whole DIMMs of the memory block size. */
  | 'MEMORY_MISALIGNED'
  /** Below what vmplug can give back: only what vmplug added can be removed. */
  | 'SHRINK_UNSUPPORTED'
  /** Every memory slot is taken. */
  | 'NO_MEMORY_SLOT'
  /** The guest did not release a CPU or DIMM in time; it stays plugged. */
  | 'GUEST_REFUSED_UNPLUG'
  /** The sandbox exists but cannot be resized (monitor unreachable, domain not running). */
  | 'SANDBOX_UNAVAILABLE'
  /** QEMU or libvirt refused the change. */
  | 'RESIZE_FAILED';

const statusOf: Record<ResizeErrorCode, number> = {
  RESOURCE_OUT_OF_RANGE: 422,
  MEMORY_MISALIGNED: 422,
  SHRINK_UNSUPPORTED: 422,
  NO_MEMORY_SLOT: 409,
  GUEST_REFUSED_UNPLUG: 409,
  SANDBOX_UNAVAILABLE: 503,
  RESIZE_FAILED: 500,
};

export class ResizeError extends Error {
  readonly status: number;
  readonly retryable: boolean;

  constructor(
    readonly code: ResizeErrorCode,
    message: string,
    readonly field?: 'vcpus' | 'memoryMiB',
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'ResizeError';
    this.status = statusOf[code];
    // An unreachable sandbox may come back. A guest that refused an unplug would most likely
    // refuse the same request again: a conflict for the caller to resolve, not a retry loop.
    this.retryable = code === 'SANDBOX_UNAVAILABLE';
  }
}
