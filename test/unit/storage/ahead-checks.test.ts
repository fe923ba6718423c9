import { describe, expect, it } from 'vitest';
import { AheadCheck, NOT_APPLICABLE, takeFresh } from '../../../storage/ahead-checks.js';

const never = new AbortController().signal;

describe('AheadCheck', () => {
  it('hands over a running check, then its outcome while fresh, then runs the check again', async () => {
    let now = 0;
    let finish: () => void = () => {};
    let again = 0;
    const rerun = async () => {
      again++;
    };
    const check = new AheadCheck(
      () => new Promise<void>((r) => (finish = r)),
      never,
      () => now,
    );
    const running = check.take(100, rerun);
    now = 10;
    finish();
    await running;
    now = 110;
    await check.take(100, rerun);
    expect(again).toBe(0);
    now = 111;
    await check.take(100, rerun);
    expect(again).toBe(1);
  });

  it('hands over a fresh refusal as it came', async () => {
    const refused = new AheadCheck(async () => {
      throw new Error('ceph down');
    }, never);
    await expect(refused.take(1_000, async () => undefined)).rejects.toThrow('ceph down');
  });

  it('runs the check again when the one ahead was called off or had nothing to do', async () => {
    const off = new AbortController();
    const calledOff = new AheadCheck(
      () => new Promise((_, reject) => off.signal.addEventListener('abort', () => reject(off.signal.reason))),
      off.signal,
    );
    off.abort();
    await calledOff.outcome.catch(() => undefined);
    await expect(calledOff.take(1_000, async () => 'again')).resolves.toBe('again');

    // Still running when taken, then found nothing to do (the sandbox was not there yet).
    let finish: (v: unknown) => void = () => {};
    const skipped = new AheadCheck(() => new Promise((r) => (finish = r)), never);
    const taken = skipped.take(1_000, async () => 'again');
    finish(NOT_APPLICABLE);
    await expect(taken).resolves.toBe('again');
    await expect(takeFresh(undefined, 1_000, async () => 'none ahead')).resolves.toBe('none ahead');
  });
});
