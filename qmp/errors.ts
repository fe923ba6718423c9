// Every failure of the QMP layer is one of these classes. Callers branch on `code` (stable
// strings) and `retryable`; messages name the command and the socket path but never command
// arguments, because arguments can carry secrets (cephx keys in `object-add secret`).

export type QmpErrorCode =
  | 'QMP_CONNECT_FAILED'
  | 'QMP_BUSY'
  | 'QMP_TIMEOUT'
  | 'QMP_ABORTED'
  | 'QMP_CLOSED'
  | 'QMP_PROTOCOL'
  | 'QMP_COMMAND_FAILED';

export abstract class QmpError extends Error {
  abstract readonly code: QmpErrorCode;
  /** True when trying again later (new connection, same command) can succeed. */
  abstract readonly retryable: boolean;

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The unix socket could not be connected (no such file, nobody listening, permission). */
export class QmpConnectError extends QmpError {
  readonly code = 'QMP_CONNECT_FAILED';
  readonly retryable = true;
  /** errno code from the socket, e.g. ENOENT, ECONNREFUSED, EACCES. */
  readonly errno: string | undefined;

  constructor(
    readonly path: string,
    cause: unknown,
  ) {
    const errno = errnoOf(cause);
    super(`cannot connect to QMP socket ${path}${errno ? ` (${errno})` : ''}`, { cause });
    this.errno = errno;
  }
}

/**
 * The socket accepted the connection but QEMU sent no greeting: a QMP monitor serves one client
 * at a time and parks the others in the listen backlog, so another client holds it (or QEMU's
 * main loop is stuck). Retry after the other client lets go.
 */
export class QmpBusyError extends QmpError {
  readonly code = 'QMP_BUSY';
  readonly retryable = true;

  constructor(
    readonly path: string,
    readonly waitedMs: number,
  ) {
    super(`QMP socket ${path} sent no greeting within ${waitedMs} ms: another client holds the monitor`);
  }
}

/** An operation outlived its time budget. A timed-out command may still complete in QEMU. */
export class QmpTimeoutError extends QmpError {
  readonly code = 'QMP_TIMEOUT';
  readonly retryable = true;

  constructor(
    readonly operation: string,
    readonly timeoutMs: number,
    /** Why it could not finish in time, when known (e.g. the session's last connect error). */
    cause?: QmpError,
  ) {
    super(
      `QMP ${operation} timed out after ${timeoutMs} ms${cause ? ` (${cause.code})` : ''}`,
      cause === undefined ? undefined : { cause },
    );
  }
}

/** The caller's AbortSignal fired. An aborted command that was already sent may still complete. */
export class QmpAbortedError extends QmpError {
  readonly code = 'QMP_ABORTED';
  readonly retryable = false;

  constructor(
    readonly operation: string,
    reason: unknown,
  ) {
    super(`QMP ${operation} aborted`, { cause: reason });
  }
}

/** The connection is gone (QEMU exited, socket dropped, client closed) before the answer came. */
export class QmpClosedError extends QmpError {
  readonly code = 'QMP_CLOSED';
  readonly retryable = true;

  constructor(
    readonly operation: string,
    cause?: unknown,
  ) {
    super(`QMP connection closed during ${operation}`, cause === undefined ? undefined : { cause });
  }
}

/** The peer broke the protocol (bad JSON, no greeting first, oversized message). */
export class QmpProtocolError extends QmpError {
  readonly code = 'QMP_PROTOCOL';
  readonly retryable = false;
}

/** QEMU answered `{"error": {"class", "desc"}}`. */
export class QmpCommandError extends QmpError {
  readonly code = 'QMP_COMMAND_FAILED';
  readonly retryable = false;

  constructor(
    readonly command: string,
    /** QMP error class: GenericError, CommandNotFound, DeviceNotFound, ... */
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`QMP ${command} failed: ${errorClass}: ${desc}`);
  }
}

export function isQmpError(err: unknown): err is QmpError {
  return err instanceof QmpError;
}

function errnoOf(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') {
    return err.code;
  }
  return undefined;
}
