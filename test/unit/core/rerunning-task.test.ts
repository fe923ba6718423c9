import { describe, expect, it } from 'vitest';
import { RerunningTask } from '../../../core/rerunning-task.js';

describe('RerunningTask', () => {
  it('calls during a run share it and bring exactly one more run after it', async () => {
    const started: number[] = [];
    let release: (() => void) | undefined;
    const task = new RerunningTask(async () => {
      started.push(started.length);
      await new Promise<void>((r) => {
        release = r;
      });
    });
    const first = task.run();
    const second = task.run();
    const third = task.run();
    expect(second).toBe(first);
    expect(third).toBe(first);
    release?.();
    await new Promise((r) => setTimeout(r, 0));
    expect(started).toEqual([0, 1]);
    release?.();
    await first;
    expect(task.running).toBeUndefined();
  });

  it('again() from inside the task asks for one more run; stopped() ends the repeats', async () => {
    let runs = 0;
    let stop = false;
    const task: RerunningTask = new RerunningTask(
      async () => {
        runs += 1;
        if (runs < 3) task.again();
        if (runs === 2) stop = true;
      },
      () => stop,
    );
    await task.run();
    expect(runs).toBe(2);
  });

  it('a failing run rejects its callers and leaves the task ready for the next', async () => {
    let fail = true;
    const task = new RerunningTask(async () => {
      if (fail) throw new Error('boom');
    });
    await expect(task.run()).rejects.toThrow('boom');
    fail = false;
    await expect(task.run()).resolves.toBeUndefined();
  });
});
