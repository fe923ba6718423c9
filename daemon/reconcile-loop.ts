import { setTimeout as sleep } from 'node:timers/promises';
import type { ReadinessCheck } from './routes/health.js';

// Runs the engine's reconcile at start-up and then every `intervalMs` (0: start-up only), one run
// at a time, so that what a crash left half-done is finished and nothing of vmplug's leaks. A
// failed run is logged and retried at the next tick; it never stops the daemon.

export interface ReconcileLoopOptions {
  reconcile: (signal: AbortSignal) => Promise<unknown>;
  intervalMs: number;
  logger: {
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

  constructor(opts: ReconcileLoopOptions) {
    this.#o = opts;
    this.#firstRun = new Promise((resolve) => {
      this.#firstRunDone = resolve;
    });
  }

  /** Starts the loop; the first run begins at once. */
  start(): void {
    this.#loop ??= this.#run();
  }

  /** Resolves when the start-up run has finished (either way). */
  firstRun(): Promise<void> {
    return this.#firstRun;
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
      const started = performance.now();
      try {
        const summary = await this.#o.reconcile(AbortSignal.any([signal, AbortSignal.timeout(runTimeoutMs)]));
        this.#lastError = undefined;
        logger.info(
          { ms: Math.round(performance.now() - started), summary: summary ?? undefined },
          this.#runs === 0 ? 'start-up reconcile done' : 'reconcile done',
        );
      } catch (err) {
        if (signal.aborted) break;
        this.#lastError = (err as Error).message;
        logger.error({ err }, 'reconcile failed; retrying at the next interval');
      } finally {
        this.#runs++;
        this.#firstRunDone();
      }
      if (intervalMs === 0 || signal.aborted) break;
      try {
        await sleep(intervalMs, undefined, { signal });
      } catch {
        break;
      }
    }
  }
}
