// Every failure of the libvirt binding is a LibvirtError with a stable `code` (never rename one).
// libvirt's numeric code and domain ride along for logs. Messages are libvirt's own text prefixed
// with the operation; the addon never puts call arguments into them, so a secret value passed to
// secretSetValue cannot appear in one.

export type LibvirtErrorCode =
  | 'LIBVIRT_ADDON_MISSING'
  | 'LIBVIRT_CONNECT_FAILED'
  | 'LIBVIRT_CLOSED'
  | 'LIBVIRT_CONNECTION_LOST'
  | 'LIBVIRT_TIMEOUT'
  | 'LIBVIRT_ABORTED'
  | 'LIBVIRT_NO_DOMAIN'
  | 'LIBVIRT_NO_SECRET'
  | 'LIBVIRT_INVALID_ARG'
  | 'LIBVIRT_XML'
  | 'LIBVIRT_OPERATION_INVALID'
  | 'LIBVIRT_OPERATION_FAILED'
  | 'LIBVIRT_OPERATION_TIMEOUT'
  | 'LIBVIRT_UNSUPPORTED'
  | 'LIBVIRT_DEVICE_MISSING'
  | 'LIBVIRT_ACCESS_DENIED'
  | 'LIBVIRT_ERROR';

export interface LibvirtErrorDetails {
  operation: string;
  /** libvirt's virErrorNumber, when libvirt reported the error. */
  libvirtCode?: number;
  /** libvirt's virErrorDomain (which subsystem raised it). */
  libvirtDomain?: number;
  cause?: unknown;
}

export class LibvirtError extends Error {
  readonly operation: string;
  readonly libvirtCode: number | undefined;
  readonly libvirtDomain: number | undefined;

  constructor(
    readonly code: LibvirtErrorCode,
    message: string,
    details: LibvirtErrorDetails,
  ) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'LibvirtError';
    this.operation = details.operation;
    this.libvirtCode = details.libvirtCode;
    this.libvirtDomain = details.libvirtDomain;
  }

  /** True when the same call may succeed later without any change by the caller. */
  get retryable(): boolean {
    return (
      this.code === 'LIBVIRT_TIMEOUT' ||
      this.code === 'LIBVIRT_OPERATION_TIMEOUT' ||
      this.code === 'LIBVIRT_CONNECTION_LOST' ||
      this.code === 'LIBVIRT_CONNECT_FAILED'
    );
  }
}

// virErrorNumber values from libvirt/virterror.h (stable ABI).
const byLibvirtCode: ReadonlyMap<number, LibvirtErrorCode> = new Map([
  [3, 'LIBVIRT_UNSUPPORTED'], // VIR_ERR_NO_SUPPORT
  [8, 'LIBVIRT_INVALID_ARG'], // VIR_ERR_INVALID_ARG
  [9, 'LIBVIRT_OPERATION_FAILED'], // VIR_ERR_OPERATION_FAILED
  [27, 'LIBVIRT_XML'], // VIR_ERR_XML_ERROR
  [35, 'LIBVIRT_XML'], // VIR_ERR_XML_DETAIL
  [42, 'LIBVIRT_NO_DOMAIN'], // VIR_ERR_NO_DOMAIN
  [45, 'LIBVIRT_ACCESS_DENIED'], // VIR_ERR_AUTH_FAILED
  [55, 'LIBVIRT_OPERATION_INVALID'], // VIR_ERR_OPERATION_INVALID
  [65, 'LIBVIRT_INVALID_ARG'], // VIR_ERR_INVALID_SECRET
  [66, 'LIBVIRT_NO_SECRET'], // VIR_ERR_NO_SECRET
  [67, 'LIBVIRT_UNSUPPORTED'], // VIR_ERR_CONFIG_UNSUPPORTED
  [68, 'LIBVIRT_OPERATION_TIMEOUT'], // VIR_ERR_OPERATION_TIMEOUT (e.g. the domain's job lock)
  [74, 'LIBVIRT_UNSUPPORTED'], // VIR_ERR_ARGUMENT_UNSUPPORTED
  [84, 'LIBVIRT_UNSUPPORTED'], // VIR_ERR_OPERATION_UNSUPPORTED
  [88, 'LIBVIRT_ACCESS_DENIED'], // VIR_ERR_ACCESS_DENIED
  [92, 'LIBVIRT_XML'], // VIR_ERR_XML_INVALID_SCHEMA
  [99, 'LIBVIRT_DEVICE_MISSING'], // VIR_ERR_DEVICE_MISSING
]);

const VIR_ERR_INTERNAL_ERROR = 1;
const VIR_ERR_INVALID_CONN = 6;
const VIR_ERR_SYSTEM_ERROR = 38;
const VIR_ERR_RPC = 39;
const VIR_FROM_RPC = 7;

/** The shape of an error the addon rejects with (job.cc MakeJsError). */
interface NativeError {
  message: string;
  operation?: string;
  libvirtKind?: 'libvirt' | 'closed' | 'invalid';
  libvirtCode?: number;
  libvirtDomain?: number;
}

function isNativeError(err: unknown): err is NativeError {
  return err instanceof Error && typeof (err as NativeError).libvirtKind === 'string';
}

/** Turns whatever the addon threw or rejected with into a LibvirtError. */
export function fromNative(err: unknown, operation: string): LibvirtError {
  if (err instanceof LibvirtError) return err;
  if (!isNativeError(err)) {
    // Argument checks in the addon throw TypeError/RangeError before any libvirt call.
    const message = err instanceof Error ? err.message : String(err);
    return new LibvirtError('LIBVIRT_INVALID_ARG', `${operation}: ${message}`, { operation, cause: err });
  }
  const details: LibvirtErrorDetails = { operation };
  if (err.libvirtCode !== undefined) details.libvirtCode = err.libvirtCode;
  if (err.libvirtDomain !== undefined) details.libvirtDomain = err.libvirtDomain;
  const message = `${operation}: ${err.message}`;
  if (err.libvirtKind === 'closed') return new LibvirtError('LIBVIRT_CLOSED', message, details);
  const code = err.libvirtCode ?? 0;
  if (operation === 'connect') return new LibvirtError('LIBVIRT_CONNECT_FAILED', message, details);
  // A dead libvirtd or a keepalive timeout: the RPC layer reports the socket closed.
  if (
    code === VIR_ERR_INVALID_CONN ||
    code === VIR_ERR_RPC ||
    (err.libvirtDomain === VIR_FROM_RPC && (code === VIR_ERR_INTERNAL_ERROR || code === VIR_ERR_SYSTEM_ERROR))
  ) {
    return new LibvirtError('LIBVIRT_CONNECTION_LOST', message, details);
  }
  return new LibvirtError(byLibvirtCode.get(code) ?? 'LIBVIRT_ERROR', message, details);
}
