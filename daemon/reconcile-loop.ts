import { setTimeout as sleep } from 'node:timers/promises';
import type { ReadinessCheck } from '../core/readiness.js';

// Runs the engine's reconcile at start-up, then every `intervalMs` (0: start-up only) and when kicked, one run
// at a time, so that what a crash left half-done is finished and nothing of vmplug's leaks. A
// failed run is logged and retried at the next tick; it never stops the daemon.

export interface ReconcileLoopOptions {
  reconcile: (signal: AbortSignal) => Promise<unknown>;
  intervalMs: number;
  logger: {
    debug(obj: Record<string, unknown>, msg: string): void;
    info(obj: Record<string, unknown>, msg: string): void;
    error(obj: Record<string, unknown>, msg: string): void;
  };
  /** Bound of one run (default: the interval, at least 60 s). */
  runTimeoutMs?: number;
}

export class ReconcileLoop {
  readonly #o: ReconcileLoopOptions;
  readonly #stopper = new AbortController();
  #loop: Promise<void> | undefined;
  #runs = 0;
  #lastError: string | undefined;
  #firstRun: Promise<void>;
  #firstRunDone!: () => void;
  /** Wakes the wait between runs early (kick()). */
  #wake: AbortController | undefined;
  /** A kick came during a run: run once more right after it. */
  #kicked = false;

  constructor(opts: ReconcileLoopOptions) {
    this.#o = opts;
    this.#firstRun = new Promise((resolve) => {
      this.#firstRunDone = resolve;
    });
  }

  /** Starts the loop; the first run begins at once. */
  start(): void {
    if (this.#stopper.signal.aborted) return;
    this.#loop ??= this.#run();
  }

  /** Resolves when the start-up run has finished (either way). */
  firstRun(): Promise<void> {
    return this.#firstRun;
  }

  /**
   * Runs again now (or right after the run in progress) instead of at the next tick: something
   * changed that a run settles, e.g. a sandbox found gone whose records are to be released.
   */
  kick(): void {
    this.#kicked = true;
    this.#wake?.abort();
  }

  readiness(): ReadinessCheck {
    if (this.#runs === 0) return { ok: false, detail: 'start-up reconcile not finished' };
    return this.#lastError === undefined
      ? { ok: true, detail: `${this.#runs} run(s)` }
      : { ok: true, detail: `last run failed: ${this.#lastError}` };
  }

  /** Aborts a run in progress and waits for the loop to end. */
  async stop(): Promise<void> {
    this.#stopper.abort();
    await this.#loop;
  }

  async #run(): Promise<void> {
    const signal = this.#stopper.signal;
    const { intervalMs, logger } = this.#o;
    const runTimeoutMs = this.#o.runTimeoutMs ?? Math.max(60_000, intervalMs);
    for (;;) {
      this.#kicked = false;
      const started = performance.now();
      try {
        const summary = await this.#o.reconcile(AbortSignal.any([signal, AbortSignal.timeout(runTimeoutMs)]));
        this.#lastError = undefined;
        const fields = { ms: Math.round(performance.now() - started), summary: summary ?? undefined };
        // The start-up run and any run that did or found something are worth a line; quiet rounds are not.
        if (this.#runs === 0) logger.info(fields, 'start-up reconcile done');
        else if (eventful(summary)) logger.info(fields, 'reconcile done');
        else logger.debug(fields, 'reconcile done, nothing to repair');
      } catch (err) {
        if (signal.aborted) break;
        this.#lastError = (err as Error).message;
        logger.error({ err }, 'reconcile failed; retrying at the next interval');
      } finally {
        this.#runs++;
        this.#firstRunDone();
      }
      if (signal.aborted) break;
      if (this.#kicked) continue;
      this.#wake = new AbortController();
      try {
        // intervalMs 0: no periodic runs, only kicked ones.
        await sleep(intervalMs === 0 ? 2 ** 31 - 1 : intervalMs, undefined, {
          signal: AbortSignal.any([signal, this.#wake.signal]),
          ref: intervalMs !== 0,
        });
      } catch {
        if (signal.aborted) break;
      } finally {
        this.#wake = undefined;
      }
    }
  }
}

/** True when a summary holds any non-empty list (repairs, skipped, pending, failures...). */
function eventful(summary: unknown): boolean {
  if (typeof summary !== 'object' || summary === null) return false;
  return Object.values(summary).some((v) => Array.isArray(v) && v.length > 0);
}
