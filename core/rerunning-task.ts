/**
 * One run of a task at a time, and never a stale last one: a call while a run is under way shares
 * it and asks for one more after it, so the last run always starts after the last call (a scan of
 * the sandboxes' directory, a re-read of the pod volumes). `stopped()` ends the repeats.
 */
export class RerunningTask {
  readonly #task: () => Promise<void>;
  readonly #stopped: () => boolean;
  #running: Promise<void> | undefined;
  #again = false;

  constructor(task: () => Promise<void>, stopped: () => boolean = () => false) {
    this.#task = task;
    this.#stopped = stopped;
  }

  /** Runs the task now, or once more after the run under way (whose promise it answers). */
  run(): Promise<void> {
    if (this.#running !== undefined) {
      this.#again = true;
      return this.#running;
    }
    this.#running = (async () => {
      try {
        do {
          this.#again = false;
          await this.#task();
        } while (this.#again && !this.#stopped());
      } finally {
        this.#running = undefined;
      }
    })();
    return this.#running;
  }

  /** One more run after the current one (called from inside the task, too). */
  again(): void {
    this.#again = true;
  }

  /** The run under way, if any. */
  get running(): Promise<void> | undefined {
    return this.#running;
  }
}
