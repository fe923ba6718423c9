// The retry timing every Kubernetes writer of the reporter shares (status coalescer, pod events,
// lease): one shape for the options and one rule for the delay after failures.

/** Retry delay after failures: `initialMs` doubling up to `maxMs`. */
export interface Backoff {
  initialMs: number;
  maxMs: number;
}

/** Options of a writer that retries with backoff; `now` is for tests. */
export interface RetryTiming {
  backoff: Backoff;
  now?: () => number;
}

/** A retrying writer whose every request has a deadline. */
export interface RequestTiming extends RetryTiming {
  requestTimeoutMs: number;
}

/** The delay after `failures` (>= 1) consecutive failures. */
export function backoffDelay(b: Backoff, failures: number): number {
  return Math.min(b.maxMs, b.initialMs * 2 ** (failures - 1));
}
