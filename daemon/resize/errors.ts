import { VmplugError } from '../../core/errors.js';

// Failures of a guest resize, each with a stable `code` (never rename one) and the request
// `field` it is about; statuses and retryability come from core/errors.ts's table.

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

export class ResizeError extends VmplugError<ResizeErrorCode> {
  constructor(
    code: ResizeErrorCode,
    message: string,
    field?: 'vcpus' | 'memoryMiB',
    options: { cause?: unknown } = {},
  ) {
    super(code, message, { field, cause: options.cause });
  }
}
