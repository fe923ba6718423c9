// Where one operation's time went, phase by phase: each mark() records the time since the previous
// mark under its name (ms, rounded to 0.01). The attach engines log the result on a debug line
// ('attach timing'), which bench/attach.ts --phases summarizes; nothing else depends on it.

export class PhaseClock {
  #last: number;
  readonly #ms: Record<string, number> = {};

  constructor(now: number = performance.now()) {
    this.#last = now;
  }

  /** Records the time since the previous mark (or the clock's start) as `name`; again adds to it. */
  mark(name: string, now: number = performance.now()): void {
    this.#ms[name] = Math.round(((this.#ms[name] ?? 0) + now - this.#last) * 100) / 100;
    this.#last = now;
  }

  /** The phases so far, in the order they were first marked. */
  get phases(): Readonly<Record<string, number>> {
    return { ...this.#ms };
  }
}
