// The one error root of vmplug and its one code table (as fastify's lib/errors.js). Every failure
// the engines (storage/, net/), the guest resize and the daemon report is a VmplugError carrying a
// code from ERROR_CODES; the REST layer maps it to problem+json by that code, the CLI maps the code
// to exit codes. Codes are stable strings: never rename one, never change a status. Messages are
// for humans and must never carry a cephx key: builders of messages only ever see validated
// names, never a Secret's value. qmp/ and libvirt/ keep their own wire-level errors (they import
// nothing of ours); the engines translate them into these.

export interface ErrorCodeInfo {
  /** HTTP status the REST layer answers with. */
  readonly status: number;
  /** problem+json `title`: one short summary per code (RFC 9457: the same for every occurrence). */
  readonly title: string;
  /** True when the same request may succeed later unchanged (the CLI exits 5, a CSI plugin requeues). */
  readonly retryable?: boolean;
}

export const ERROR_CODES = {
  // Requests the caller must change.
  INVALID_ID: { status: 400, title: 'Invalid id' },
  INVALID_FIELD: { status: 422, title: 'Invalid field' },
  NOT_PASSTHROUGH: { status: 422, title: 'Not a passthrough device' },
  MODE_MISMATCH: { status: 422, title: 'Mode mismatch' },
  INVALID_REQUEST: { status: 400, title: 'Invalid request' },
  INVALID_JSON: { status: 400, title: 'Invalid JSON' },
  BODY_TOO_LARGE: { status: 413, title: 'Body too large' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, title: 'Unsupported media type' },
  ROUTE_NOT_FOUND: { status: 404, title: 'Route not found' },
  NOT_FOUND: { status: 404, title: 'Not found' },
  SPEC_CONFLICT: { status: 409, title: 'Spec conflict' },
  LANES_FULL: { status: 409, title: 'Lanes full' },
  // Block mode: the host uses the device, or it is outside the node's allow-list.
  DEVICE_IN_USE: { status: 409, title: 'Device in use by the host' },
  DEVICE_NOT_ALLOWED: { status: 403, title: 'Device not allowed' },
  // Pod volumes: a Kata direct-volume record vmplug did not write.
  RECORD_FOREIGN: { status: 409, title: 'Foreign record' },
  // Guest resize.
  RESOURCE_OUT_OF_RANGE: { status: 422, title: 'Resource out of range' },
  MEMORY_MISALIGNED: { status: 422, title: 'Memory misaligned' },
  SHRINK_UNSUPPORTED: { status: 422, title: 'Shrink unsupported' },
  NO_MEMORY_SLOT: { status: 409, title: 'No memory slot' },
  // A guest that refused an unplug would most likely refuse the same request again: a conflict
  // for the caller to resolve, not a retry loop.
  GUEST_REFUSED_UNPLUG: { status: 409, title: 'Guest refused unplug' },
  SANDBOX_UNAVAILABLE: { status: 503, title: 'Sandbox unavailable', retryable: true },
  RESIZE_FAILED: { status: 500, title: 'Resize failed' },
  // Backends and the node.
  CEPH_UNREACHABLE: { status: 503, title: 'Ceph unreachable', retryable: true },
  /** Monitors answer but the image cannot be opened in time (an OSD stalled): refused before the guest's QEMU. */
  CEPH_STALLED: { status: 503, title: 'Ceph stalled', retryable: true },
  /** 502; net/ answers 503 when the failure is retryable (see NicBackendError). */
  BACKEND_FAILED: { status: 502, title: 'Backend failed' },
  HOST_NETWORK_FAILED: { status: 502, title: 'Host network failed' },
  DETACH_PENDING: { status: 503, title: 'Detach pending', retryable: true },
  // The daemon.
  NOT_READY: { status: 503, title: 'Not ready', retryable: true },
  SHUTTING_DOWN: { status: 503, title: 'Shutting down', retryable: true },
  INVALID_TRANSITION: { status: 500, title: 'Invalid transition' },
  JOURNAL_CORRUPT: { status: 500, title: 'Journal corrupt' },
  JOURNAL_IO: { status: 500, title: 'Journal I/O failed' },
  INTERNAL: { status: 500, title: 'Internal error' },
} as const satisfies Record<string, ErrorCodeInfo>;

export type VmplugErrorCode = keyof typeof ERROR_CODES;

export function isVmplugErrorCode(code: unknown): code is VmplugErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERROR_CODES, code);
}

/** `urn:vmplug:error:body-too-large` for BODY_TOO_LARGE. */
export function problemType(code: string): string {
  return `urn:vmplug:error:${code.toLowerCase().replaceAll('_', '-')}`;
}

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: VmplugErrorCode;
  field?: string;
}

export interface VmplugErrorOptions {
  field?: string | undefined;
  cause?: unknown;
  /** Overrides the code's default (BackendError: a QMP timeout may be retried). */
  retryable?: boolean;
  /** Overrides the code's status; only net/'s retryable BACKEND_FAILED (503) uses it. */
  status?: number;
}

export class VmplugError<C extends VmplugErrorCode = VmplugErrorCode> extends Error {
  readonly code: C;
  /** HTTP status the REST layer answers with. */
  readonly status: number;
  /** True when the same request may succeed later without any change by the caller. */
  readonly retryable: boolean;
  /** The offending request field, in the request's own spelling (`source.monitors[1]`). */
  readonly field: string | undefined;

  constructor(code: C, message: string, options: VmplugErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    const info: ErrorCodeInfo = ERROR_CODES[code];
    this.code = code;
    this.status = options.status ?? info.status;
    this.retryable = options.retryable ?? info.retryable ?? false;
    this.field = options.field;
  }

  toProblem(): Problem {
    const problem: Problem = {
      type: problemType(this.code),
      title: ERROR_CODES[this.code].title,
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
export class ValidationError extends VmplugError<ValidationCode> {
  declare readonly field: string;

  constructor(field: string, message: string, code: ValidationCode = 'INVALID_FIELD') {
    super(code, `${field}: ${message}`, { field });
  }
}

/** The volume or NIC is attached (or being attached) with a different spec. */
export class ConflictError extends VmplugError<'SPEC_CONFLICT'> {
  constructor(message: string, options: VmplugErrorOptions = {}) {
    super('SPEC_CONFLICT', message, options);
  }
}

export class NotFoundError extends VmplugError<'NOT_FOUND'> {
  constructor(
    readonly what: 'sandbox' | 'volume' | 'nic',
    readonly id: string,
  ) {
    super('NOT_FOUND', `${what} ${id} not found`);
  }
}

/**
 * The host itself uses the block device (mounted, swap, held by device-mapper/md/LVM, or claimed
 * exclusively by the kernel): a guest writing to it would corrupt or take over the node.
 */
export class DeviceInUseError extends VmplugError<'DEVICE_IN_USE'> {
  declare readonly field: string;
  constructor(field: string, message: string) {
    super('DEVICE_IN_USE', `${field}: ${message}`, { field });
  }
}

/** The resolved device is outside the node's allow-list (the `allowedDevices` setting). */
export class DeviceNotAllowedError extends VmplugError<'DEVICE_NOT_ALLOWED'> {
  declare readonly field: string;
  constructor(field: string, message: string) {
    super('DEVICE_NOT_ALLOWED', `${field}: ${message}`, { field });
  }
}

export class LanesFullError extends VmplugError<'LANES_FULL'> {
  constructor(
    readonly bus: 'scsi' | 'virtio-blk',
    readonly capacity: number,
  ) {
    super(
      'LANES_FULL',
      capacity === 0
        ? `the sandbox has no vmplug ${bus} lanes (was its QEMU started through bin/vmplug-qemu?)`
        : `all ${capacity} vmplug ${bus} lanes of the sandbox are in use; detach a volume first`,
    );
  }
}

/** No Ceph monitor answered in time: attach refused before QEMU's main loop could block on it. */
export class CephUnreachableError extends VmplugError<'CEPH_UNREACHABLE'> {
  constructor(
    readonly monitors: readonly string[],
    readonly waitedMs: number,
    options: VmplugErrorOptions = {},
  ) {
    super(
      'CEPH_UNREACHABLE',
      `no Ceph monitor answered within ${waitedMs} ms (${monitors.join(', ')})`,
      options,
    );
  }
}

/**
 * The monitors answer, but a throwaway process could not open the image (its header lives on an
 * OSD) within the bound: attaching it in the guest's QEMU would freeze the guest until Ceph serves
 * it again, so the attach is refused first.
 */
export class CephStalledError extends VmplugError<'CEPH_STALLED'> {
  constructor(
    readonly image: string,
    readonly waitedMs: number,
    options: VmplugErrorOptions = {},
  ) {
    super(
      'CEPH_STALLED',
      `Ceph could not open image ${image} within ${waitedMs} ms (monitors answer; an OSD does not serve it); retry later`,
      options,
    );
  }
}

/**
 * QEMU (over QMP) or libvirt refused or failed a step. The message names the step and the
 * backend's own error class/description; callers pass `secrets` so any value that could have
 * been echoed back is cut out before the message is built.
 */
export class BackendError extends VmplugError<'BACKEND_FAILED'> {
  constructor(
    readonly step: string,
    detail: string,
    options: VmplugErrorOptions & { secrets?: readonly Redactable[] } = {},
  ) {
    super('BACKEND_FAILED', `${step} failed: ${redact(detail, options.secrets ?? [])}`, options);
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
export class DetachPendingError extends VmplugError<'DETACH_PENDING'> {
  constructor(
    readonly deviceId: string,
    readonly waitedMs: number,
  ) {
    super(
      'DETACH_PENDING',
      `the guest has not released device ${deviceId} after ${waitedMs} ms; retry the detach`,
    );
  }
}

export class InvalidTransitionError extends VmplugError<'INVALID_TRANSITION'> {
  constructor(
    readonly from: string,
    readonly to: string,
  ) {
    super('INVALID_TRANSITION', `journal: no transition from ${from} to ${to}`);
  }
}

export class JournalCorruptError extends VmplugError<'JOURNAL_CORRUPT'> {
  constructor(
    readonly path: string,
    reason: string,
  ) {
    super('JOURNAL_CORRUPT', `journal record ${path} is corrupt: ${reason}`);
  }
}

export class JournalIoError extends VmplugError<'JOURNAL_IO'> {
  constructor(
    readonly operation: string,
    readonly path: string,
    cause: unknown,
  ) {
    const errno = (cause as { code?: unknown } | null)?.code;
    super(
      'JOURNAL_IO',
      `journal ${operation} ${path} failed${typeof errno === 'string' ? ` (${errno})` : ''}`,
      {
        cause,
      },
    );
  }
}

/**
 * A Kata direct-volume record is already at the path of this targetPath and vmplug did not write
 * it (another plugin's, an operator's): it is never overwritten or removed.
 */
export class ForeignRecordError extends VmplugError<'RECORD_FOREIGN'> {
  constructor(readonly recordPath: string) {
    super(
      'RECORD_FOREIGN',
      `a Kata direct-volume record vmplug did not write is at ${recordPath}; it is left untouched`,
      { field: 'targetPath' },
    );
  }
}
