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
  /** Runs when the waiter becomes the queue's first (once, then deleted). */
  onNext?: () => void;
}

/** A counting semaphore whose waiters leave the queue when their signal aborts. */
export class Semaphore {
  #free: number;
  readonly #queue: Waiter[] = [];

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1)
      throw new RangeError(`capacity ${capacity} must be >= 1`);
    this.#free = capacity;
  }

  get inUse(): number {
    return this.capacity - this.#free;
  }

  get waiting(): number {
    return this.#queue.length;
  }

  /**
   * Resolves with the release function once a slot is free. `onNext` runs once if the caller has
   * to wait, when it becomes the first in the queue (the next slot freed is its): work that needs
   * no slot can start then, overlapping the operation ahead rather than the whole queue.
   */
  acquire(signal?: AbortSignal, onNext?: () => void): Promise<() => void> {
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
        ...(onNext !== undefined ? { onNext } : {}),
      };
      const onAbort = (): void => {
        const i = this.#queue.indexOf(entry);
        if (i >= 0) this.#queue.splice(i, 1);
        if (i === 0) this.#headChanged();
        reject(abortReason(signal as AbortSignal));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#queue.push(entry);
      if (this.#queue.length === 1) this.#headChanged();
    });
  }

  #headChanged(): void {
    const head = this.#queue[0];
    const onNext = head?.onNext;
    if (head === undefined || onNext === undefined) return;
    delete head.onNext;
    onNext();
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
        this.#headChanged();
      } else this.#free++;
    };
  }
}

/** One mutex per key, created on demand and dropped when nobody holds or waits for it. */
export class KeyedMutex<K> {
  readonly #locks = new Map<K, Semaphore>();

  /** `onNext` as Semaphore.acquire: runs when the caller, waiting, is next for `key`. */
  async acquire(key: K, signal?: AbortSignal, onNext?: () => void): Promise<() => void> {
    let lock = this.#locks.get(key);
    if (lock === undefined) {
      lock = new Semaphore(1);
      this.#locks.set(key, lock);
    }
    const held = lock;
    let release: () => void;
    try {
      release = await held.acquire(signal, onNext);
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
  readonly #perKey = new KeyedMutex<K>();
  readonly #global: Semaphore;

  constructor(maxConcurrent: number) {
    this.#global = new Semaphore(maxConcurrent);
  }

  get inFlight(): number {
    return this.#global.inUse;
  }

  /** `onNext` runs if the operation waits for `key`, when it is the next of `key` to run. */
  async run<T>(
    key: K,
    signal: AbortSignal | undefined,
    fn: () => Promise<T>,
    onNext?: () => void,
  ): Promise<T> {
    const releaseKey = await this.#perKey.acquire(key, signal, onNext);
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
