// A set of listeners with vmplug's one error policy: a listener that throws is reported to the
// handler the owner injects (its logger), never re-thrown and never allowed to stop the other
// listeners. Re-throwing later (queueMicrotask) would turn one buggy subscriber into an uncaught
// exception that takes vmplugd down. qmp/ imports nothing of ours and applies the same policy in
// qmp/events.ts.

export type ListenerErrorHandler = (err: unknown) => void;

/** The default report when an owner has no logger: a process warning, never a throw. */
export function warnListenerError(err: unknown): void {
  process.emitWarning(err instanceof Error ? err : new Error(String(err)), 'ListenerError');
}

export class ListenerSet<A extends unknown[]> {
  readonly #listeners = new Set<(...args: A) => void>();
  readonly #onError: ListenerErrorHandler;

  constructor(onError: ListenerErrorHandler = warnListenerError) {
    this.#onError = onError;
  }

  /** Adds `listener`; returns the function that removes it. */
  add(listener: (...args: A) => void): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  remove(listener: (...args: A) => void): void {
    this.#listeners.delete(listener);
  }

  get size(): number {
    return this.#listeners.size;
  }

  /** Calls every listener present when the emit began (one added meanwhile waits for the next). */
  emit(...args: A): void {
    for (const listener of [...this.#listeners]) {
      try {
        listener(...args);
      } catch (err) {
        try {
          this.#onError(err);
        } catch {
          // a throwing reporter must not undo the policy
        }
      }
    }
  }
}
