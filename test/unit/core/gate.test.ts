import { describe, expect, it } from 'vitest';
import { KeyedMutex, OperationGate, Semaphore } from '../../../core/gate.js';

const tick = () => new Promise((r) => setTimeout(r, 1));

describe('Semaphore', () => {
  it('grants up to its capacity, then in arrival order', async () => {
    const s = new Semaphore(2);
    const order: number[] = [];
    const r1 = await s.acquire();
    const r2 = await s.acquire();
    const waits = [3, 4].map((n) =>
      s.acquire().then((release) => {
        order.push(n);
        return release;
      }),
    );
    await tick();
    expect(order).toEqual([]);
    expect(s.waiting).toBe(2);
    r1();
    r1(); // a second release of the same grant is a no-op
    const r3 = await waits[0];
    expect(order).toEqual([3]);
    expect(s.inUse).toBe(2);
    r2();
    (await waits[1])?.();
    r3?.();
    expect(s.inUse).toBe(0);
  });

  it('a waiter whose signal aborts leaves the queue', async () => {
    const s = new Semaphore(1);
    const held = await s.acquire();
    const ac = new AbortController();
    const waiting = s.acquire(ac.signal);
    ac.abort(new Error('gone'));
    await expect(waiting).rejects.toThrow('gone');
    expect(s.waiting).toBe(0);
    held();
    expect(s.inUse).toBe(0);
    await expect(s.acquire(AbortSignal.abort(new Error('already')))).rejects.toThrow('already');
  });

  it('refuses a capacity below one', () => {
    expect(() => new Semaphore(0)).toThrow(RangeError);
  });

  it('queues an urgent waiter behind earlier urgent ones only', async () => {
    const s = new Semaphore(1);
    const release = await s.acquire();
    const order: string[] = [];
    // Each takes its slot, notes it and passes it on.
    const wait = (name: string, urgent: boolean) =>
      s.acquire(undefined, { urgent }).then((r) => {
        order.push(name);
        r();
      });
    const waits = [wait('a', false), wait('b', false), wait('u1', true), wait('u2', true)];
    release();
    await Promise.all(waits);
    expect(order).toEqual(['u1', 'u2', 'a', 'b']);
  });
});

describe('KeyedMutex and OperationGate', () => {
  it('serializes one key, runs different keys together, and forgets idle keys', async () => {
    const m = new KeyedMutex<string>();
    const a1 = await m.acquire('a');
    const b1 = await m.acquire('b');
    let a2Got = false;
    const a2 = m.acquire('a').then((r) => {
      a2Got = true;
      return r;
    });
    await tick();
    expect(a2Got).toBe(false);
    a1();
    (await a2)();
    b1();
    expect(m.size).toBe(0);
  });

  it('never runs more than the global bound, nor two on one key', async () => {
    const gate = new OperationGate<string>(3);
    let now = 0;
    let peak = 0;
    const perKey = new Map<string, number>();
    let keyPeak = 0;
    const job = (key: string) =>
      gate.run(key, undefined, async () => {
        now++;
        perKey.set(key, (perKey.get(key) ?? 0) + 1);
        peak = Math.max(peak, now);
        keyPeak = Math.max(keyPeak, perKey.get(key) ?? 0);
        await tick();
        perKey.set(key, (perKey.get(key) ?? 1) - 1);
        now--;
      });
    await Promise.all(Array.from({ length: 40 }, (_, i) => job(`k${i % 8}`)));
    expect(peak).toBe(3);
    expect(keyPeak).toBe(1);
    expect(gate.inFlight).toBe(0);
  });

  it('a failing operation releases its turn', async () => {
    const gate = new OperationGate<string>(1);
    await expect(
      gate.run('k', undefined, async () => {
        throw new Error('boom');
      }),
    ).rejects.toThrow('boom');
    expect(await gate.run('k', undefined, async () => 42)).toBe(42);
  });

  it('tells a waiter when it is next for its key, once, and never one that did not wait', async () => {
    const gate = new OperationGate<string>(4, 1);
    const events: string[] = [];
    const releases: Array<() => void> = [];
    const op = (name: string) =>
      gate.run(
        'k',
        undefined,
        () =>
          new Promise<void>((r) => {
            events.push(`${name} runs`);
            releases.push(r);
          }),
        () => events.push(`${name} next`),
      );
    const a = op('a');
    const b = op('b');
    const c = op('c');
    while (releases.length < 1) await tick();
    // b is next while a runs; c waits behind b, not yet next.
    expect(events).toEqual(['b next', 'a runs']);
    releases[0]?.();
    while (releases.length < 2) await tick();
    expect(events).toEqual(['b next', 'a runs', 'c next', 'b runs']);
    releases[1]?.();
    while (releases.length < 3) await tick();
    releases[2]?.();
    await Promise.all([a, b, c]);
    expect(events.filter((e) => e.startsWith('a'))).toEqual(['a runs']);
  });

  it('the waiter behind one that gave up is next in its place', async () => {
    const gate = new OperationGate<string>(4, 1);
    const events: string[] = [];
    let release: (() => void) | undefined;
    const a = gate.run('k', undefined, () => new Promise<void>((r) => (release = r)));
    const abort = new AbortController();
    const b = gate.run(
      'k',
      abort.signal,
      async () => {},
      () => events.push('b next'),
    );
    const c = gate.run(
      'k',
      undefined,
      async () => {},
      () => events.push('c next'),
    );
    while (release === undefined) await tick();
    expect(events).toEqual(['b next']);
    abort.abort();
    await expect(b).rejects.toBeDefined();
    expect(events).toEqual(['b next', 'c next']);
    release();
    await Promise.all([a, c]);
  });

  it('with a lookahead of 2 (the default), the first two waiters of a key are near', async () => {
    const gate = new OperationGate<string>(4);
    const near: string[] = [];
    let release: (() => void) | undefined;
    const a = gate.run('k', undefined, () => new Promise<void>((r) => (release = r)));
    const rest = ['b', 'c', 'd'].map((n) =>
      gate.run(
        'k',
        undefined,
        async () => {},
        () => near.push(n),
      ),
    );
    while (release === undefined) await tick();
    expect(near).toEqual(['b', 'c']);
    release();
    await Promise.all([a, ...rest]);
    expect(near).toEqual(['b', 'c', 'd']);
    expect(() => new OperationGate<string>(1, 0)).toThrow(RangeError);
  });
});
