// Every failure the attach engine reports is one of these classes. The REST layer maps them to
// problem+json (`code`, `status`, `field`); the CLI maps `code` to exit codes. Codes are stable
// strings: never rename one. Messages are for humans and must never carry a cephx key: builders
// of messages only ever see validated names, never a Secret's value.

export type VmplugErrorCode =
  | 'INVALID_ID'
  | 'INVALID_FIELD'
  | 'NOT_PASSTHROUGH'
  | 'MODE_MISMATCH'
  | 'SPEC_CONFLICT'
  | 'NOT_FOUND'
  | 'LANES_FULL'
  | 'CEPH_UNREACHABLE'
  | 'BACKEND_FAILED'
  | 'DETACH_PENDING'
  | 'INVALID_TRANSITION'
  | 'JOURNAL_CORRUPT'
  | 'JOURNAL_IO'
  | 'RECORD_FOREIGN';

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: VmplugErrorCode;
  field?: string;
}

export interface VmplugErrorOptions {
  field?: string;
  cause?: unknown;
}

export abstract class VmplugError extends Error {
  abstract readonly code: VmplugErrorCode;
  /** HTTP status the REST layer answers with. */
  abstract readonly status: number;
  /** True when the same request may succeed later without any change by the caller. */
  readonly retryable: boolean = false;
  /** The offending request field, in the request's own spelling (`source.monitors[1]`). */
  readonly field: string | undefined;

  constructor(message: string, options: VmplugErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.field = options.field;
  }

  toProblem(): Problem {
    const problem: Problem = {
      type: `urn:vmplug:error:${this.code.toLowerCase().replaceAll('_', '-')}`,
      title: this.name,
      status: this.status,
      detail: this.message,
      code: this.code,
    };
    if (this.field !== undefined) problem.field = this.field;
    return problem;
  }
}

export type ValidationCode = 'INVALID_ID' | 'INVALID_FIELD' | 'NOT_PASSTHROUGH' | 'MODE_MISMATCH';

/**
 * The request is malformed. Ids in the URL path are 400 (the resource name itself is bad); body
 * fields are 422 (well-formed JSON with unacceptable content).
 */
export class ValidationError extends VmplugError {
  readonly code: ValidationCode;
  readonly status: 400 | 422;
  declare readonly field: string;

  constructor(field: string, message: string, code: ValidationCode = 'INVALID_FIELD') {
    super(`${field}: ${message}`, { field });
    this.code = code;
    this.status = code === 'INVALID_ID' ? 400 : 422;
  }
}

/** The volume is attached (or being attached) with a different spec. */
export class ConflictError extends VmplugError {
  readonly code = 'SPEC_CONFLICT';
  readonly status = 409;
}

export class NotFoundError extends VmplugError {
  readonly code = 'NOT_FOUND';
  readonly status = 404;

  constructor(
    readonly what: 'sandbox' | 'volume',
    readonly id: string,
  ) {
    super(`${what} ${id} not found`);
  }
}

/** Every vmplug-reserved slot of the requested bus (vmplug-scsi0 ids, vmplug-rp<N>) is taken. */
export class LanesFullError extends VmplugError {
  readonly code = 'LANES_FULL';
  readonly status = 409;

  constructor(
    readonly bus: 'scsi' | 'virtio-blk',
    readonly capacity: number,
  ) {
    super(
      capacity === 0
        ? `the sandbox has no vmplug ${bus} lanes (was its QEMU started through bin/vmplug-qemu?)`
        : `all ${capacity} vmplug ${bus} lanes of the sandbox are in use; detach a volume first`,
    );
  }
}

/** No Ceph monitor answered in time: attach refused before QEMU's main loop could block on it. */
export class CephUnreachableError extends VmplugError {
  readonly code = 'CEPH_UNREACHABLE';
  readonly status = 503;
  override readonly retryable = true;

  constructor(
    readonly monitors: readonly string[],
    readonly waitedMs: number,
    options: VmplugErrorOptions = {},
  ) {
    super(`no Ceph monitor answered within ${waitedMs} ms (${monitors.join(', ')})`, options);
  }
}

/**
 * QEMU (over QMP) or libvirt refused or failed a step. The message names the step and the
 * backend's own error class/description; callers pass `secrets` so any value that could have
 * been echoed back is cut out before the message is built.
 */
export class BackendError extends VmplugError {
  readonly code = 'BACKEND_FAILED';
  readonly status = 502;
  override readonly retryable: boolean;

  constructor(
    readonly step: string,
    detail: string,
    options: VmplugErrorOptions & { retryable?: boolean; secrets?: readonly Redactable[] } = {},
  ) {
    super(`${step} failed: ${redact(detail, options.secrets ?? [])}`, options);
    this.retryable = options.retryable ?? false;
  }
}

/** Anything holding a secret value that may be cut out of text (see volume-spec's Secret). */
export interface Redactable {
  redactFrom(text: string): string;
}

function redact(text: string, secrets: readonly Redactable[]): string {
  return secrets.reduce((t, s) => s.redactFrom(t), text);
}

/**
 * The guest has not released the device within the bound: the unplug stays requested, and a
 * retry of the detach continues from here (never deleting the backend under the guest).
 */
export class DetachPendingError extends VmplugError {
  readonly code = 'DETACH_PENDING';
  readonly status = 503;
  override readonly retryable = true;

  constructor(
    readonly deviceId: string,
    readonly waitedMs: number,
  ) {
    super(`the guest has not released device ${deviceId} after ${waitedMs} ms; retry the detach`);
  }
}

export class InvalidTransitionError extends VmplugError {
  readonly code = 'INVALID_TRANSITION';
  readonly status = 500;

  constructor(
    readonly from: string,
    readonly to: string,
  ) {
    super(`journal: no transition from ${from} to ${to}`);
  }
}

export class JournalCorruptError extends VmplugError {
  readonly code = 'JOURNAL_CORRUPT';
  readonly status = 500;

  constructor(
    readonly path: string,
    reason: string,
  ) {
    super(`journal record ${path} is corrupt: ${reason}`);
  }
}

export class JournalIoError extends VmplugError {
  readonly code = 'JOURNAL_IO';
  readonly status = 500;

  constructor(
    readonly operation: string,
    readonly path: string,
    cause: unknown,
  ) {
    const errno = (cause as { code?: unknown } | null)?.code;
    super(`journal ${operation} ${path} failed${typeof errno === 'string' ? ` (${errno})` : ''}`, { cause });
  }
}

/**
 * A Kata direct-volume record is already at the path of this targetPath and vmplug did not write
 * it (another plugin's, an operator's): it is never overwritten or removed.
 */
export class ForeignRecordError extends VmplugError {
  readonly code = 'RECORD_FOREIGN';
  readonly status = 409;

  constructor(readonly recordPath: string) {
    super(`a Kata direct-volume record vmplug did not write is at ${recordPath}; it is left untouched`, {
      field: 'targetPath',
    });
  }
}
