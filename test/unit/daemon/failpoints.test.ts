import { describe, expect, it } from 'vitest';
import { failpointHook, parseFailpoint } from '../../../daemon/failpoints.js';
import { createLogger } from '../../../daemon/logger.js';
import type { JournalRecord } from '../../../storage/journal.js';

describe('crash failpoints', () => {
  it('parses kill-before and kill-after of a known state, and nothing when unset', () => {
    expect(parseFailpoint(undefined)).toBeUndefined();
    expect(parseFailpoint('')).toBeUndefined();
    expect(parseFailpoint('kill-after:Pending')).toEqual({ kind: 'kill-after', state: 'Pending' });
    expect(parseFailpoint('kill-before:Attached')).toEqual({ kind: 'kill-before', state: 'Attached' });
    expect(parseFailpoint('stop-after:Pending')).toEqual({ kind: 'stop-after', state: 'Pending' });
  });

  it('refuses anything else with a message naming the variable', () => {
    for (const bad of ['kill-after:Nope', 'kill:Pending', 'kill-after:', 'kill-after:Pending;rm']) {
      const r = parseFailpoint(bad);
      expect(r).toBeInstanceOf(Error);
      expect((r as Error).message).toContain('VMPLUG_FAILPOINT');
    }
  });

  it('fires only for its state and phase', () => {
    let kills = 0;
    const hook = failpointHook(
      { kind: 'kill-before', state: 'Attached' },
      createLogger({ level: 'silent' }),
      () => {
        kills++;
      },
    );
    const rec = (state: string) => ({ state }) as unknown as JournalRecord;
    hook?.(rec('Attached'), 'after');
    hook?.(rec('BlockdevAdded'), 'before');
    expect(kills).toBe(0);
    hook?.(rec('Attached'), 'before');
    expect(kills).toBe(1);
  });

  it('stop-after stops (SIGSTOP) after the write instead of killing', () => {
    const signals: string[] = [];
    const hook = failpointHook(
      { kind: 'stop-after', state: 'Pending' },
      createLogger({ level: 'silent' }),
      (signal) => {
        signals.push(signal);
      },
    );
    const rec = (state: string) => ({ state }) as unknown as JournalRecord;
    hook?.(rec('Pending'), 'before');
    expect(signals).toEqual([]);
    hook?.(rec('Pending'), 'after');
    expect(signals).toEqual(['SIGSTOP']);
  });
});
