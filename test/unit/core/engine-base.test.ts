import { describe, expect, it } from 'vitest';
import { EngineBase } from '../../../core/engine-base.js';
import { OperationGate } from '../../../core/gate.js';

class Closed extends Error {}

class TestEngine extends EngineBase {
  constructor(gate: OperationGate<string>) {
    super({ gate, closedError: () => new Closed('shutting down') });
  }
  run<T>(
    key: string,
    fn: (signal: AbortSignal) => Promise<T>,
    signal = new AbortController().signal,
  ): Promise<T> {
    return this.admit(key, signal, fn);
  }
}

const tick = () => new Promise((r) => setTimeout(r, 1));

describe('EngineBase', () => {
  it('engines sharing a gate take one turn per sandbox between them', async () => {
    const gate = new OperationGate<string>(8);
    const volumes = new TestEngine(gate);
    const nics = new TestEngine(gate);
    const order: string[] = [];
    let release = (): void => {};
    const first = volumes.run('sb1', () =>
      new Promise<void>((r) => (release = r)).then(() => order.push('volume')),
    );
    const second = nics.run('sb1', async () => order.push('nic'));
    const other = nics.run('sb2', async () => order.push('other sandbox'));
    await other;
    await tick();
    expect(order).toEqual(['other sandbox']);
    expect(volumes.inFlight).toBe(1);
    release();
    await Promise.all([first, second]);
    expect(order).toEqual(['other sandbox', 'volume', 'nic']);
  });

  it('close refuses new operations, drains those in flight, then is closed', async () => {
    const e = new TestEngine(new OperationGate(2));
    let release = (): void => {};
    const running = e.run('sb', () => new Promise<string>((r) => (release = () => r('done'))));
    await tick();
    const closing = e.close();
    expect(e.state).toBe('closing');
    await expect(e.run('sb', async () => 'late')).rejects.toBeInstanceOf(Closed);
    release();
    await expect(running).resolves.toBe('done');
    await closing;
    expect(e.state).toBe('closed');
  });

  it('after the grace, operations in flight see their signal abort with the closed error', async () => {
    const e = new TestEngine(new OperationGate(2));
    const running = e.run(
      'sb',
      (signal) =>
        new Promise((_, reject) =>
          signal.addEventListener('abort', () => reject(signal.reason), { once: true }),
        ),
    );
    await tick();
    await e.close({ graceMs: 5 });
    await expect(running).rejects.toBeInstanceOf(Closed);
  });
});
