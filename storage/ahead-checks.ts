import { performance } from 'node:perf_hooks';

// Checks of an attach that read nothing of its sandbox (the Ceph monitor probe, the out-of-process
// rbd open), started before the sandbox's turn when that turn is taken: a burst of attaches to one
// sandbox otherwise runs them one after another under its lock, though they could all run while
// the attaches ahead do their QMP steps. Only a fresh outcome is used: one that settled within
// `freshMs` before its attach needs it, or one still running (its attach waits for it, as it
// would for the same check started in its turn). An older outcome is dropped and the check runs
// again in the turn, so "Ceph answered" is never older than that bound when the guest's own QEMU
// opens the image.

/** Default bound on the age of a check's outcome (ms): a burst's queue, not an operator's pause. */
export const DEFAULT_AHEAD_FRESH_MS = 2_000;

/** What a check started ahead answers when it found it has nothing to do (the turn checks itself). */
export const NOT_APPLICABLE = Symbol('not applicable');

/** One check started ahead of its turn: its outcome and when it came. */
export class AheadCheck {
  readonly #outcome: Promise<'done' | 'not applicable'>;
  #settledAt: number | undefined;
  #aborted = false;

  constructor(
    run: () => Promise<unknown>,
    signal: AbortSignal,
    readonly now: () => number = () => performance.now(),
  ) {
    this.#outcome = run().then(
      (value) => {
        this.#settledAt = this.now();
        return value === NOT_APPLICABLE ? 'not applicable' : 'done';
      },
      (err: unknown) => {
        this.#settledAt = this.now();
        // Called off (its attach ended, or was aborted): no outcome to reuse.
        if (signal.aborted) this.#aborted = true;
        throw err;
      },
    );
    // Nobody may ever take it (the attach found its volume attached already).
    this.#outcome.catch(() => undefined);
  }

  /** Settles when the check does, whatever its age (for a check that runs after this one). */
  get outcome(): Promise<unknown> {
    return this.#outcome;
  }

  /**
   * In the turn: this check's outcome (a success, or the refusal it met) when it is still running
   * or settled at most `freshMs` ago; otherwise, or when it was called off or had nothing to do,
   * `again()`, the check run now.
   */
  take(freshMs: number, again: () => Promise<unknown>): Promise<unknown> {
    if (this.#aborted) return again();
    if (this.#settledAt !== undefined && this.now() - this.#settledAt > freshMs) return again();
    return this.#outcome.then((r) => (r === 'not applicable' ? again() : undefined));
  }
}

/** `check`'s outcome while fresh (AheadCheck.take), or `run()` when there is none. */
export function takeFresh(
  check: AheadCheck | undefined,
  freshMs: number,
  run: () => Promise<unknown>,
): Promise<unknown> {
  return check === undefined ? run() : check.take(freshMs, run);
}

/** The checks an attach started before its sandbox's turn (attach-service.ts), by name. */
export interface AttachAhead {
  /** The Ceph monitor probe of an rbd attach. */
  ceph?: AheadCheck;
  /** The out-of-process rbd open, after the probe. */
  preflight?: AheadCheck;
}
