// Failures of the NIC engine. Like storage's errors they carry a stable `code`, the HTTP `status`
// the REST layer answers with, the offending request `field` where there is one, and `retryable`;
// the daemon maps them to problem+json by duck typing. Codes shared with storage mean the same
// thing there; never rename one.

export type NetErrorCode =
  | 'INVALID_ID'
  | 'INVALID_FIELD'
  | 'SPEC_CONFLICT'
  | 'NOT_FOUND'
  | 'LANES_FULL'
  | 'HOST_NETWORK_FAILED'
  | 'BACKEND_FAILED'
  | 'DETACH_PENDING'
  | 'JOURNAL_CORRUPT'
  | 'JOURNAL_IO';

export interface NetProblem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: NetErrorCode;
  field?: string;
}

export abstract class NetError extends Error {
  abstract readonly code: NetErrorCode;
  abstract readonly status: number;
  readonly retryable: boolean;
  readonly field: string | undefined;

  constructor(message: string, options: { field?: string; cause?: unknown; retryable?: boolean } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.field = options.field;
    this.retryable = options.retryable ?? false;
  }

  toProblem(): NetProblem {
    const p: NetProblem = {
      type: `urn:vmplug:error:${this.code.toLowerCase().replaceAll('_', '-')}`,
      title: this.name,
      status: this.status,
      detail: this.message,
      code: this.code,
    };
    if (this.field !== undefined) p.field = this.field;
    return p;
  }
}

/** A bad id (400, it names the resource) or a bad body field (422). */
export class InvalidNicSpecError extends NetError {
  readonly code: 'INVALID_ID' | 'INVALID_FIELD';
  readonly status: 400 | 422;
  declare readonly field: string;

  constructor(field: string, message: string, code: 'INVALID_ID' | 'INVALID_FIELD' = 'INVALID_FIELD') {
    super(`${field}: ${message}`, { field });
    this.code = code;
    this.status = code === 'INVALID_ID' ? 400 : 422;
  }
}

/** The NIC exists with another spec, or is being detached. */
export class NicConflictError extends NetError {
  readonly code = 'SPEC_CONFLICT';
  readonly status = 409;
}

export class NicNotFoundError extends NetError {
  readonly code = 'NOT_FOUND';
  readonly status = 404;

  constructor(
    readonly what: 'sandbox' | 'nic',
    readonly id: string,
  ) {
    super(`${what} ${id} not found`);
  }
}

/** Every vmplug root port of the sandbox holds a device. */
export class NicLanesFullError extends NetError {
  readonly code = 'LANES_FULL';
  readonly status = 409;

  constructor(readonly ports: number) {
    super(`no free vmplug root port for a NIC (the sandbox has ${ports}); detach a NIC or a volume`);
  }
}

/** An `ip` command failed (no such bridge, tap busy, permission). */
export class HostNetworkError extends NetError {
  readonly code = 'HOST_NETWORK_FAILED';
  readonly status: number;

  constructor(
    readonly operation: string,
    message: string,
    options: { field?: string; cause?: unknown; retryable?: boolean; status?: number } = {},
  ) {
    super(`${operation}: ${message}`, options);
    this.status = options.status ?? 502;
  }
}

/** QEMU refused or did not answer. */
export class NicBackendError extends NetError {
  readonly code = 'BACKEND_FAILED';
  readonly status: number;

  constructor(
    readonly operation: string,
    message: string,
    options: { cause?: unknown; retryable?: boolean } = {},
  ) {
    super(`${operation}: ${message}`, options);
    this.status = options.retryable ? 503 : 502;
  }
}

/** The guest has not released the NIC yet; the record stays Detaching and a retry continues. */
export class NicDetachPendingError extends NetError {
  readonly code = 'DETACH_PENDING';
  readonly status = 503;

  constructor(device: string, waitedMs: number) {
    super(`the guest has not released NIC device ${device} within ${waitedMs} ms; retry the detach`, {
      retryable: true,
    });
  }
}

export class NicJournalError extends NetError {
  readonly code: 'JOURNAL_CORRUPT' | 'JOURNAL_IO';
  readonly status = 500;

  constructor(code: 'JOURNAL_CORRUPT' | 'JOURNAL_IO', message: string, cause?: unknown) {
    super(message, { cause });
    this.code = code;
  }
}
