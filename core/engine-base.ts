import type { OperationGate } from './gate.js';

// What every engine (Kata volumes over QMP, libvirt volumes, NICs) does the same way, written
// once, the way undici's DispatcherBase owns closed/destroyed state and admission and its
// subclasses implement only the dispatch:
//   - state: open -> closing (no new operation; those in flight drain) -> closed;
//   - admission through the node's OperationGate: one operation per sandbox across ALL engines
//     sharing the gate (volumes, NICs and resizes of a sandbox compete for the same PCI root
//     ports: KubeVirt's domainModifyLock), and a bound on operations in flight on the node;
//   - in-flight tracking, so close() can wait for them;
//   - drain on close: a grace period, then the operations' signals abort with the closed error.

export type EngineState = 'open' | 'closing' | 'closed';

export interface EngineBaseOptions {
  /** The node's one gate; engines built alone (tests, tools) get a private one. */
  gate: OperationGate<string>;
  /** The error an operation gets once the engine is closing (each engine keeps its own class). */
  closedError: () => Error;
}

export abstract class EngineBase {
  readonly #gate: OperationGate<string>;
  readonly #closedError: () => Error;
  readonly #running = new Set<Promise<unknown>>();
  /** Fires when close()'s grace runs out: every admitted operation's signal follows it. */
  readonly #abort = new AbortController();
  #state: EngineState = 'open';

  protected constructor(opts: EngineBaseOptions) {
    this.#gate = opts.gate;
    this.#closedError = opts.closedError;
  }

  get state(): EngineState {
    return this.#state;
  }

  /** Operations holding a slot of the gate right now (every engine sharing the gate counts). */
  get inFlight(): number {
    return this.#gate.inFlight;
  }

  /**
   * Runs `fn` once `key`'s turn and a node slot are granted. `fn` gets the signal to use: the
   * caller's, also aborted when close()'s grace runs out. Refused with the closed error once
   * close() began. `onNear` runs if the operation has to wait, when it is near its turn for `key`
   * (OperationGate's lookahead).
   */
  protected admit<T>(
    key: string,
    signal: AbortSignal,
    fn: (signal: AbortSignal) => Promise<T>,
    onNear?: () => void,
  ): Promise<T> {
    if (this.#state !== 'open') return Promise.reject(this.#closedError());
    const opSignal = AbortSignal.any([signal, this.#abort.signal]);
    const p = this.#gate.run(key, opSignal, () => fn(opSignal), onNear);
    this.#running.add(p);
    const forget = (): void => {
      this.#running.delete(p);
    };
    p.then(forget, forget);
    return p;
  }

  /**
   * Stops admitting operations and waits for those in flight (reconcile rounds included) to end.
   * After `graceMs` (default: no limit) their signals abort, so they unwind and answer.
   */
  async close(opts: { graceMs?: number } = {}): Promise<void> {
    if (this.#state === 'open') this.#state = 'closing';
    const grace = opts.graceMs;
    const timer =
      grace !== undefined && Number.isFinite(grace)
        ? setTimeout(() => this.#abort.abort(this.#closedError()), grace)
        : undefined;
    try {
      while (this.#running.size > 0) await Promise.allSettled([...this.#running]);
    } finally {
      if (timer !== undefined) clearTimeout(timer);
    }
    this.#state = 'closed';
  }
}
