import { describe, expect, it } from 'vitest';
import { ListenerSet } from '../../../core/listeners.js';

describe('ListenerSet', () => {
  it('reports a throwing listener to the handler and still calls the others', () => {
    const reported: unknown[] = [];
    const set = new ListenerSet<[number]>((err) => reported.push(err));
    const seen: number[] = [];
    set.add(() => {
      throw new Error('bug');
    });
    set.add((n) => seen.push(n));
    expect(() => set.emit(1)).not.toThrow();
    expect(seen).toEqual([1]);
    expect(reported).toEqual([new Error('bug')]);
  });

  it('removes listeners; one added during an emit waits for the next emit', () => {
    const set = new ListenerSet<[]>(() => {
      throw new Error('a throwing reporter is swallowed too');
    });
    const seen: string[] = [];
    const late = () => seen.push('late');
    const off = set.add(() => {
      seen.push('first');
      set.add(late);
    });
    set.emit();
    expect(seen).toEqual(['first']);
    off();
    set.remove(late);
    set.add(() => {
      throw new Error('x');
    });
    expect(() => set.emit()).not.toThrow();
    expect(set.size).toBe(1);
    expect(seen).toEqual(['first']);
  });
});
