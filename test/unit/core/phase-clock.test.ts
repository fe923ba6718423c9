import { describe, expect, it } from 'vitest';
import { PhaseClock } from '../../../core/phase-clock.js';

describe('PhaseClock', () => {
  it('records the time between marks, in mark order, rounded to 0.01 ms', () => {
    const c = new PhaseClock(100);
    c.mark('turnMs', 100.5);
    c.mark('loadMs', 103.256);
    expect(c.phases).toEqual({ turnMs: 0.5, loadMs: 2.76 });
    expect(Object.keys(c.phases)).toEqual(['turnMs', 'loadMs']);
  });

  it('adds to a phase marked again', () => {
    const c = new PhaseClock(0);
    c.mark('a', 1);
    c.mark('b', 3);
    c.mark('a', 4);
    expect(c.phases).toEqual({ a: 2, b: 2 });
  });
});
