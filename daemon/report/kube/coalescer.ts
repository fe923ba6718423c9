import { backoffDelay, type RetryTiming } from './backoff.js';

/**
 * Keeps one remote copy of a local value true with as few writes as possible: at most one write
 * per `minIntervalMs`, none when the value's hash equals the last one written, backoff while
 * writes fail. It holds no queue of values: each write reads the latest value at that moment, so
 * a long outage costs no memory and the first write after it carries the newest state.
 */

export interface CoalescerOptions extends RetryTiming {
  minIntervalMs: number;
  /**
   * Rewrite even an unchanged value this often, so a status someone else edited or deleted is
   * put right. 0 turns it off.
   */
  resyncMs: number;
}

export interface CoalescerStats {
  /** Writes that succeeded. */
  writes: number;
  /** Writes that failed (each is retried with backoff). */
  failures: number;
  /** Change signals that found the value as last written. */
  unchanged: number;
  consecutiveFailures: number;
  lastWriteAt?: number;
  lastError?: string;
}

export interface CoalescerHooks<T> {
  read(): T;
  /** False while the value is not worth writing yet; the next notify() after it turns true writes. */
  ready?(): boolean;
  hash(value: T): string;
  write(value: T, signal: AbortSignal): Promise<void>;
  /** Told about every failure and the first success after failures (for logging transitions). */
  onFailure?(err: unknown, consecutive: number): void;
  onRecovered?(afterFailures: number): void;
}

export class Coalescer<T> {
  readonly #hooks: CoalescerHooks<T>;
  readonly #o: CoalescerOptions;
  readonly #now: () => number;
  readonly #abort = new AbortController();
  #timer: NodeJS.Timeout | undefined;
  #resync: NodeJS.Timeout | undefined;
  #inFlight: Promise<void> | undefined;
  #dirty = false;
  #force = false;
  #lastHash: string | undefined;
  #lastAttemptAt = Number.NEGATIVE_INFINITY;
  #stopped = false;
  #idleWaiters: (() => void)[] = [];
  readonly #stats: CoalescerStats = { writes: 0, failures: 0, unchanged: 0, consecutiveFailures: 0 };

  constructor(hooks: CoalescerHooks<T>, options: CoalescerOptions) {
    this.#hooks = hooks;
    this.#o = options;
    this.#now = options.now ?? Date.now;
  }

  /** Writes the current value now (subject to the interval), then keeps it true. */
  start(): void {
    if (this.#stopped) return;
    if (this.#o.resyncMs > 0 && !this.#resync) {
      this.#resync = setInterval(() => {
        this.#force = true;
        this.notify();
      }, this.#o.resyncMs);
      this.#resync.unref();
    }
    this.notify();
  }

  /** The value may have changed. Cheap; call it on every change. */
  notify(): void {
    if (this.#stopped) return;
    this.#dirty = true;
    this.#schedule();
  }

  /** Forget what was written (e.g. the remote object was recreated) and write again. */
  invalidate(): void {
    this.#lastHash = undefined;
    this.notify();
  }

  stats(): CoalescerStats {
    return { ...this.#stats };
  }

  /** Resolves when nothing is pending or in flight (for tests and shutdown). */
  idle(): Promise<void> {
    if (!this.#busy()) return Promise.resolve();
    return new Promise((r) => this.#idleWaiters.push(r));
  }

  /** Stops timers and aborts a write in flight. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    clearInterval(this.#resync);
    this.#timer = undefined;
    this.#abort.abort();
    await this.#inFlight?.catch(() => undefined);
    this.#wakeIdle();
  }

  #busy(): boolean {
    return !this.#stopped && (this.#dirty || this.#timer !== undefined || this.#inFlight !== undefined);
  }

  #wakeIdle(): void {
    if (this.#busy()) return;
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const w of waiters) w();
  }

  #delay(): number {
    const sinceLast = this.#now() - this.#lastAttemptAt;
    const interval = Math.max(0, this.#o.minIntervalMs - sinceLast);
    const n = this.#stats.consecutiveFailures;
    if (n === 0) return interval;
    const backoff = backoffDelay(this.#o.backoff, n);
    return Math.max(interval, backoff - sinceLast);
  }

  #schedule(): void {
    if (this.#stopped || this.#timer || this.#inFlight || !this.#dirty) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#run();
    }, this.#delay());
  }

  #run(): void {
    if (this.#stopped || !this.#dirty) {
      this.#wakeIdle();
      return;
    }
    this.#dirty = false;
    if (this.#hooks.ready?.() === false) {
      this.#wakeIdle();
      return;
    }
    const value = this.#hooks.read();
    const hash = this.#hooks.hash(value);
    if (hash === this.#lastHash && !this.#force) {
      this.#stats.unchanged++;
      this.#wakeIdle();
      return;
    }
    this.#force = false;
    this.#lastAttemptAt = this.#now();
    this.#inFlight = this.#hooks.write(value, this.#abort.signal).then(
      () => {
        this.#lastHash = hash;
        this.#stats.writes++;
        this.#stats.lastWriteAt = this.#now();
        const after = this.#stats.consecutiveFailures;
        this.#stats.consecutiveFailures = 0;
        if (after > 0) this.#hooks.onRecovered?.(after);
      },
      (err: unknown) => {
        // Aborted by stop(): not a failure of the remote end.
        if (this.#stopped) return;
        this.#stats.failures++;
        this.#stats.consecutiveFailures++;
        this.#stats.lastError = err instanceof Error ? err.message : String(err);
        // The value may not have reached the server: write it (or a newer one) again.
        this.#dirty = true;
        this.#lastHash = undefined;
        this.#hooks.onFailure?.(err, this.#stats.consecutiveFailures);
      },
    );
    void this.#inFlight.finally(() => {
      this.#inFlight = undefined;
      this.#schedule();
      this.#wakeIdle();
    });
  }
}
