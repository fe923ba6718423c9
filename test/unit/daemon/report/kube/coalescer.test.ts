import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Coalescer, type CoalescerOptions } from '../../../../../daemon/report/kube/coalescer.js';

/** A remote end whose writes complete when the test says, or at once. */
class FakeRemote {
  written: number[] = [];
  started: number[] = [];
  failNext = 0;
  manual = false;
  #pending: { resolve: () => void; reject: (e: Error) => void; value: number }[] = [];
  write = (value: number, signal: AbortSignal): Promise<void> => {
    this.started.push(value);
    if (this.failNext > 0) {
      this.failNext--;
      return Promise.reject(new Error('connect ECONNREFUSED'));
    }
    if (!this.manual) {
      this.written.push(value);
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      signal.addEventListener('abort', () => reject(new Error('aborted')), { once: true });
      this.#pending.push({ resolve, reject, value });
    });
  };
  complete(): void {
    const p = this.#pending.shift();
    if (!p) throw new Error('no write in flight');
    this.written.push(p.value);
    p.resolve();
  }
}

const opts: CoalescerOptions = {
  minIntervalMs: 1_000,
  backoff: { initialMs: 500, maxMs: 8_000 },
  resyncMs: 0,
};

function make(o: Partial<CoalescerOptions> = {}) {
  let value = 0;
  const remote = new FakeRemote();
  const c = new Coalescer<number>(
    { read: () => value, hash: (v) => String(v), write: remote.write },
    { ...opts, ...o, now: () => Date.now() },
  );
  return {
    c,
    remote,
    set(v: number) {
      value = v;
      c.notify();
    },
  };
}

describe('Coalescer', () => {
  beforeEach(() => {
    vi.useFakeTimers({ now: 1_000_000 });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('writes the first value at once, then at most once per interval, always the latest', async () => {
    const { c, remote, set } = make();
    set(1);
    c.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(remote.written).toEqual([1]);

    for (let i = 2; i <= 51; i++) {
      set(i);
      await vi.advanceTimersByTimeAsync(15); // 50 changes over 750 ms
    }
    expect(remote.written).toEqual([1]);
    await vi.advanceTimersByTimeAsync(250);
    expect(remote.written).toEqual([1, 51]);
    await vi.advanceTimersByTimeAsync(5_000);
    expect(remote.written).toEqual([1, 51]);
    expect(c.stats()).toMatchObject({ writes: 2, failures: 0 });
    await c.stop();
  });

  it('skips a value equal to the last one written', async () => {
    const { c, remote, set } = make();
    set(7);
    c.start();
    await vi.advanceTimersByTimeAsync(0);
    set(8);
    set(7); // back to what the server has
    await vi.advanceTimersByTimeAsync(2_000);
    expect(remote.written).toEqual([7]);
    expect(c.stats().unchanged).toBe(1);
    await c.stop();
  });

  it('never has two writes in flight; a change during a slow write is written after it', async () => {
    const { c, remote, set } = make();
    remote.manual = true;
    set(1);
    c.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(remote.started).toEqual([1]);
    set(2);
    set(3);
    await vi.advanceTimersByTimeAsync(5_000);
    expect(remote.started).toEqual([1]); // still waiting on the first
    remote.complete();
    await vi.advanceTimersByTimeAsync(0);
    // The interval counts from the start of the last write, which is long past.
    expect(remote.started).toEqual([1, 3]);
    remote.complete();
    await vi.advanceTimersByTimeAsync(0);
    expect(remote.written).toEqual([1, 3]);
    await c.stop();
  });

  it('backs off while writes fail, keeps only the latest value, and catches up', async () => {
    const { c, remote, set } = make();
    remote.failNext = 4;
    set(1);
    c.start();
    await vi.advanceTimersByTimeAsync(0); // fail 1
    expect(c.stats().consecutiveFailures).toBe(1);
    set(2);
    set(3);
    // Retries at +1000 (interval > 500 backoff), then 1000, 2000, 4000 after each attempt.
    await vi.advanceTimersByTimeAsync(1_000); // fail 2
    await vi.advanceTimersByTimeAsync(1_000); // fail 3
    expect(remote.started).toEqual([1, 3, 3]);
    await vi.advanceTimersByTimeAsync(1_999);
    expect(remote.started).toHaveLength(3);
    await vi.advanceTimersByTimeAsync(1); // fail 4
    set(4);
    await vi.advanceTimersByTimeAsync(3_999);
    expect(remote.written).toEqual([]);
    await vi.advanceTimersByTimeAsync(1); // succeeds with the newest
    expect(remote.written).toEqual([4]);
    expect(c.stats()).toMatchObject({ writes: 1, failures: 4, consecutiveFailures: 0 });
    await c.stop();
  });

  it('caps the backoff', async () => {
    const { c, remote, set } = make({ backoff: { initialMs: 500, maxMs: 2_000 } });
    remote.failNext = 100;
    set(1);
    c.start();
    await vi.advanceTimersByTimeAsync(60_000);
    // 1 + attempts at 1000, 2000 and then every 2000 ms: about 31 in a minute.
    expect(remote.started.length).toBeGreaterThanOrEqual(29);
    expect(remote.started.length).toBeLessThanOrEqual(32);
    await c.stop();
  });

  it('rewrites an unchanged value on resync', async () => {
    const { c, remote, set } = make({ resyncMs: 10_000 });
    set(1);
    c.start();
    await vi.advanceTimersByTimeAsync(25_000);
    expect(remote.written).toEqual([1, 1, 1]);
    await c.stop();
  });

  it('idle() resolves once the latest value is written; stop() aborts a write in flight', async () => {
    const { c, remote, set } = make();
    remote.manual = true;
    set(1);
    c.start();
    let idle = false;
    void c.idle().then(() => {
      idle = true;
    });
    await vi.advanceTimersByTimeAsync(0);
    expect(idle).toBe(false);
    remote.complete();
    await vi.advanceTimersByTimeAsync(0);
    expect(idle).toBe(true);

    set(2);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(remote.started).toEqual([1, 2]);
    await c.stop();
    expect(remote.written).toEqual([1]);
    set(3);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(remote.started).toEqual([1, 2]);
  });
});
