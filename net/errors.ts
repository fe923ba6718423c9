// Failures of the NIC engine that storage has no twin for. They extend the one root in
// core/errors.ts (codes and statuses from its table); bad input, conflicts, missing sandboxes or
// NICs and journal failures use core's ValidationError, ConflictError, NotFoundError,
// JournalCorruptError and JournalIoError. Never rename a code.

import { VmplugError } from '../core/errors.js';

/** Every vmplug root port of the sandbox holds a device. */
export class NicLanesFullError extends VmplugError<'LANES_FULL'> {
  constructor(readonly ports: number) {
    super(
      'LANES_FULL',
      `no free vmplug root port for a NIC (the sandbox has ${ports}); detach a NIC or a volume`,
    );
  }
}

/** An `ip` command failed (no such bridge, tap busy, permission). */
export class HostNetworkError extends VmplugError<'HOST_NETWORK_FAILED'> {
  constructor(
    readonly operation: string,
    message: string,
    options: { field?: string; cause?: unknown; retryable?: boolean } = {},
  ) {
    super('HOST_NETWORK_FAILED', `${operation}: ${message}`, options);
  }
}

/** QEMU refused or did not answer: 503 when a retry may succeed, else 502. */
export class NicBackendError extends VmplugError<'BACKEND_FAILED'> {
  constructor(
    readonly operation: string,
    message: string,
    options: { cause?: unknown; retryable?: boolean } = {},
  ) {
    super('BACKEND_FAILED', `${operation}: ${message}`, {
      ...options,
      status: options.retryable ? 503 : 502,
    });
  }
}

/** The guest has not released the NIC yet; the record stays Detaching and a retry continues. */
export class NicDetachPendingError extends VmplugError<'DETACH_PENDING'> {
  constructor(device: string, waitedMs: number) {
    super(
      'DETACH_PENDING',
      `the guest has not released NIC device ${device} within ${waitedMs} ms; retry the detach`,
    );
  }
}
