import type { CallOptions } from '../../qmp/index.js';
import type { BackendCallOptions } from './types.js';

/**
 * One time budget for a whole backend call: every QMP command, child process and wait inside it
 * gets what is left, and the caller's signal, so the call as a whole ends in `timeoutMs`.
 */
export class Budget {
  readonly signal: AbortSignal;
  readonly #until: number;
  readonly #startedAt = performance.now();

  constructor(opts: BackendCallOptions | undefined, defaultMs: number) {
    const ms = opts?.timeoutMs ?? defaultMs;
    this.#until = this.#startedAt + ms;
    const timeout = AbortSignal.timeout(Math.max(1, ms));
    this.signal = opts?.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
  }

  left(): number {
    return Math.max(0, Math.round(this.#until - performance.now()));
  }

  elapsed(): number {
    return Math.round(performance.now() - this.#startedAt);
  }

  /** For a QMP call: the time left, at most `capMs`. */
  call(capMs = Number.POSITIVE_INFINITY): CallOptions {
    return { timeoutMs: Math.min(this.left(), capMs), signal: this.signal };
  }
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
