// Admission of engine operations: one at a time per sandbox (QEMU's lanes and the journal
// records of one sandbox are read, then changed; two operations interleaving there would pick
// the same lane or tear each other's objects down), and a bound on operations in flight across
// the node (each holds QMP round trips, an fsync'd journal, maybe a Ceph probe).

/** Raised when the caller's signal fires while it waits for its turn. */
function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('aborted', 'AbortError');
}

interface Waiter {
  grant: () => void;
  /** Queued ahead of every waiter that is not. */
  urgent: boolean;
  /** Runs when the waiter comes among the queue's first `lookahead` (once, then deleted). */
  onNear?: () => void;
}

const DEFAULT_LOOKAHEAD = 2;

function requireCount(what: string, value: number): void {
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`${what} ${value} must be >= 1`);
}

/** A counting semaphore whose waiters leave the queue when their signal aborts. */
export class Semaphore {
  #free: number;
  readonly #queue: Waiter[] = [];

  /**
   * `lookahead`: how many of the first waiters count as near their slot (`onNear` of acquire):
   * work they start then overlaps the operations ahead of them.
   */
  constructor(
    readonly capacity: number,
    readonly lookahead = 1,
  ) {
    requireCount('capacity', capacity);
    requireCount('lookahead', lookahead);
    this.#free = capacity;
  }

  get inUse(): number {
    return this.capacity - this.#free;
  }

  get waiting(): number {
    return this.#queue.length;
  }

  /**
   * Resolves with the release function once a slot is free. `onNear` runs once if the caller has
   * to wait, when it is among the first `lookahead` in the queue: work that needs no slot can
   * start then, overlapping the operations just ahead of it rather than the whole queue. An
   * `urgent` caller waits behind earlier urgent ones only, ahead of every other waiter.
   */
  acquire(signal?: AbortSignal, opts: { onNear?: () => void; urgent?: boolean } = {}): Promise<() => void> {
    const { onNear, urgent = false } = opts;
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    if (this.#free > 0) {
      this.#free--;
      return Promise.resolve(this.#releaser());
    }
    return new Promise((resolve, reject) => {
      const entry: Waiter = {
        grant: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve(this.#releaser());
        },
        urgent,
        ...(onNear !== undefined ? { onNear } : {}),
      };
      const onAbort = (): void => {
        const i = this.#queue.indexOf(entry);
        if (i >= 0) this.#queue.splice(i, 1);
        if (i >= 0 && i < this.lookahead) this.#queueMoved();
        reject(abortReason(signal as AbortSignal));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const at = urgent ? this.#queue.findIndex((w) => !w.urgent) : -1;
      if (at >= 0) this.#queue.splice(at, 0, entry);
      else this.#queue.push(entry);
      if ((at >= 0 ? at : this.#queue.length - 1) < this.lookahead) this.#queueMoved();
    });
  }

  /** Tells the waiters now among the first `lookahead` that they are near, once each. */
  #queueMoved(): void {
    for (const waiter of this.#queue.slice(0, this.lookahead)) {
      const onNear = waiter.onNear;
      if (onNear === undefined) continue;
      delete waiter.onNear;
      onNear();
    }
  }

  #releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#queue.shift();
      // The slot passes straight to the next waiter, so a newcomer cannot overtake the queue.
      if (next) {
        next.grant();
        this.#queueMoved();
      } else this.#free++;
    };
  }
}

/** One mutex per key, created on demand and dropped when nobody holds or waits for it. */
export class KeyedMutex<K> {
  readonly #locks = new Map<K, Semaphore>();

  /** `lookahead` as Semaphore's: how many waiters of a key count as near their turn. */
  constructor(readonly lookahead = 1) {
    // Checked now, not at the first key's Semaphore.
    requireCount('lookahead', lookahead);
  }

  /** `onNear` as Semaphore.acquire: runs when the caller, waiting, is near its turn for `key`. */
  async acquire(key: K, signal?: AbortSignal, onNear?: () => void): Promise<() => void> {
    let lock = this.#locks.get(key);
    if (lock === undefined) {
      lock = new Semaphore(1, this.lookahead);
      this.#locks.set(key, lock);
    }
    const held = lock;
    let release: () => void;
    try {
      release = await held.acquire(signal, onNear !== undefined ? { onNear } : {});
    } catch (err) {
      this.#dropIfIdle(key, held);
      throw err;
    }
    return () => {
      release();
      this.#dropIfIdle(key, held);
    };
  }

  /** Keys currently held or waited for (for tests and metrics). */
  get size(): number {
    return this.#locks.size;
  }

  #dropIfIdle(key: K, lock: Semaphore): void {
    if (lock.inUse === 0 && lock.waiting === 0 && this.#locks.get(key) === lock) this.#locks.delete(key);
  }
}

/**
 * The engine's admission: the sandbox's turn first, then a global slot, so operations queued
 * behind a busy sandbox do not sit on global slots that other sandboxes could use.
 */
export class OperationGate<K> {
  readonly #perKey: KeyedMutex<K>;
  readonly #global: Semaphore;

  /**
   * `lookahead`: how many operations waiting for a key are told they are near their turn
   * (default 2: in a burst, work they can do without the turn then has the time of two
   * operations ahead to finish, and is never older than that when the turn comes).
   */
  constructor(maxConcurrent: number, lookahead = DEFAULT_LOOKAHEAD) {
    this.#global = new Semaphore(maxConcurrent);
    this.#perKey = new KeyedMutex(lookahead);
  }

  get inFlight(): number {
    return this.#global.inUse;
  }

  /** `onNear` runs if the operation waits for `key`, when it is among the next `lookahead` of it. */
  async run<T>(
    key: K,
    signal: AbortSignal | undefined,
    fn: () => Promise<T>,
    onNear?: () => void,
  ): Promise<T> {
    const releaseKey = await this.#perKey.acquire(key, signal, onNear);
    try {
      const releaseSlot = await this.#global.acquire(signal);
      try {
        return await fn();
      } finally {
        releaseSlot();
      }
    } finally {
      releaseKey();
    }
  }
}
