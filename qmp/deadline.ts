import { QmpAbortedError, type QmpError, QmpTimeoutError } from './errors.js';

export interface CallOptions {
  /** Time budget in ms; the layer's default applies when left out. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * Arms a timer and an abort listener for one operation; `onExpire` runs at most once with the
 * typed error. Returns the disarm function, which the caller must run when the operation settles
 * so no timer or listener outlives it.
 */
export function armDeadline(
  operation: string,
  timeoutMs: number,
  signal: AbortSignal | undefined,
  onExpire: (err: QmpError) => void,
): () => void {
  let done = false;
  const fire = (err: QmpError): void => {
    if (done) return;
    disarm();
    onExpire(err);
  };
  const onAbort = (): void => fire(new QmpAbortedError(operation, signal?.reason));
  const timer = Number.isFinite(timeoutMs)
    ? setTimeout(() => fire(new QmpTimeoutError(operation, timeoutMs)), Math.max(0, timeoutMs))
    : undefined;
  signal?.addEventListener('abort', onAbort, { once: true });
  function disarm(): void {
    if (done) return;
    done = true;
    if (timer !== undefined) clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
  }
  if (signal?.aborted) onAbort();
  return disarm;
}

/** Resolves after `ms`, or rejects early with QMP_ABORTED. */
export function delay(ms: number, signal: AbortSignal | undefined, operation: string): Promise<void> {
  return new Promise((resolve, reject) => {
    armDeadline(operation, ms, signal, (err) => {
      if (err instanceof QmpTimeoutError) resolve();
      else reject(err);
    });
  });
}

/**
 * `promise`, or a rejection with the signal's reason once it aborts first. What `promise` still
 * settles to is dropped; `onLate` gets a value that arrives after the abort (a file handle to
 * close, say: a call on libuv's pool cannot be called off).
 */
export function untilAborted<T>(
  promise: Promise<T>,
  signal: AbortSignal,
  onLate?: (value: T) => void,
): Promise<T> {
  const late = (): void => {
    promise.then(onLate, () => undefined);
  };
  if (signal.aborted) {
    late();
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => {
      late();
      reject(signal.reason);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}
