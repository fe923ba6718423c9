import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  canSendAsParent,
  NotifyEnvError,
  type NotifySender,
  notifyAssignments,
  parseNotifyEnv,
  SystemdNotifier,
  watchdogIntervalMs,
} from '../../../systemd/notify.js';

const quiet = { debug: () => {}, info: () => {}, warn: () => {} };

describe('parseNotifyEnv', () => {
  it('is null without NOTIFY_SOCKET (not run by systemd: nothing is sent)', () => {
    expect(parseNotifyEnv({}, 10)).toBeNull();
    expect(parseNotifyEnv({ NOTIFY_SOCKET: '', WATCHDOG_USEC: '30000000' }, 10)).toBeNull();
  });

  it('takes a path or an abstract name, and refuses anything else', () => {
    expect(parseNotifyEnv({ NOTIFY_SOCKET: '/run/systemd/notify' }, 10)).toEqual({
      socket: '/run/systemd/notify',
      watchdogUsec: null,
    });
    expect(parseNotifyEnv({ NOTIFY_SOCKET: '@/org/freedesktop/systemd1/notify/1' }, 10)?.socket).toBe(
      '@/org/freedesktop/systemd1/notify/1',
    );
    expect(() => parseNotifyEnv({ NOTIFY_SOCKET: 'relative/notify' }, 10)).toThrow(NotifyEnvError);
  });

  it('enables the watchdog when WATCHDOG_PID is unset or is this process', () => {
    const base = { NOTIFY_SOCKET: '/n', WATCHDOG_USEC: '30000000' };
    expect(parseNotifyEnv(base, 10)?.watchdogUsec).toBe(30_000_000);
    expect(parseNotifyEnv({ ...base, WATCHDOG_PID: '10' }, 10)?.watchdogUsec).toBe(30_000_000);
    // Inherited from a parent service: not ours to ping.
    expect(parseNotifyEnv({ ...base, WATCHDOG_PID: '11' }, 10)?.watchdogUsec).toBeNull();
  });

  it('refuses malformed watchdog values', () => {
    for (const WATCHDOG_USEC of ['0', '-1', '30s', '1e6']) {
      expect(() => parseNotifyEnv({ NOTIFY_SOCKET: '/n', WATCHDOG_USEC }, 10)).toThrow(/WATCHDOG_USEC/);
    }
    expect(() => parseNotifyEnv({ NOTIFY_SOCKET: '/n', WATCHDOG_USEC: '5', WATCHDOG_PID: 'x' }, 10)).toThrow(
      /WATCHDOG_PID/,
    );
  });

  it('pings at half the watchdog period', () => {
    expect(watchdogIntervalMs(30_000_000)).toBe(15_000);
    expect(watchdogIntervalMs(2_000_000)).toBe(1_000);
    expect(watchdogIntervalMs(10)).toBe(50);
  });
});

describe('notifyAssignments', () => {
  it('spells each field as KEY=VALUE', () => {
    expect(notifyAssignments({ READY: 1, STATUS: 'serving' })).toEqual(['READY=1', 'STATUS=serving']);
    expect(notifyAssignments({ WATCHDOG: 1 })).toEqual(['WATCHDOG=1']);
  });

  it('flattens STATUS to one bounded line, so it cannot forge another assignment', () => {
    expect(notifyAssignments({ STATUS: 'a\nREADY=1\r\n b' })).toEqual(['STATUS=a READY=1 b']);
    const [long] = notifyAssignments({ STATUS: 'x'.repeat(1000) });
    expect(long?.length).toBe('STATUS='.length + 256);
    expect(long?.endsWith('...')).toBe(true);
  });

  it('refuses line breaks in other values, bad keys and empty notifications', () => {
    expect(() => notifyAssignments({ MAINPID: '1\nREADY=1' })).toThrow(RangeError);
    expect(() => notifyAssignments({ 'READY=1\nX': 1 })).toThrow(RangeError);
    expect(() => notifyAssignments({ ready: 1 })).toThrow(RangeError);
    expect(() => notifyAssignments({})).toThrow(RangeError);
  });
});

describe('SystemdNotifier', () => {
  const env = { socket: '/n', watchdogUsec: null };

  it('sends notifications in the order asked, even when an earlier send is slower', async () => {
    const sent: string[][] = [];
    let first = true;
    const send: NotifySender = async (a) => {
      if (first) {
        first = false;
        await new Promise((r) => setTimeout(r, 30));
      }
      sent.push([...a]);
    };
    const n = new SystemdNotifier({ env, log: quiet, send });
    const a = n.status('reconciling');
    const b = n.ready('serving');
    const c = n.stopping('bye');
    expect(await Promise.all([a, b, c])).toEqual([true, true, true]);
    expect(sent).toEqual([
      ['STATUS=reconciling'],
      ['READY=1', 'STATUS=serving'],
      ['STOPPING=1', 'STATUS=bye'],
    ]);
    n.close();
  });

  it('logs a failed send and carries on (notification never takes the daemon down)', async () => {
    const warned: string[] = [];
    const log = { ...quiet, warn: (_o: unknown, msg: string) => void warned.push(msg) };
    let fail = true;
    const sent: string[][] = [];
    const send: NotifySender = async (a) => {
      if (fail) throw new Error('systemd-notify failed: No such file or directory');
      sent.push([...a]);
    };
    const n = new SystemdNotifier({ env, log, send });
    expect(await n.ready('serving')).toBe(false);
    fail = false;
    expect(await n.stopping('bye')).toBe(true);
    expect(warned).toEqual(['systemd notification failed']);
    expect(sent).toEqual([['STOPPING=1', 'STATUS=bye']]);
    n.close();
    expect(await n.status('after close')).toBe(false);
  });

  it('pings WATCHDOG=1 on a timer only when systemd asked, and stops on close', async () => {
    const pings: string[][] = [];
    const send: NotifySender = async (a) => void pings.push([...a]);
    const none = new SystemdNotifier({ env, log: quiet, send });
    none.startWatchdog();
    const n = new SystemdNotifier({ env: { socket: '/n', watchdogUsec: 100_000 }, log: quiet, send });
    n.startWatchdog();
    await expect.poll(() => pings.length, { timeout: 5_000 }).toBeGreaterThanOrEqual(3);
    n.close();
    const after = pings.length;
    await new Promise((r) => setTimeout(r, 200));
    expect(pings.length).toBe(after);
    expect(new Set(pings.map((p) => p.join()))).toEqual(new Set(['WATCHDOG=1']));
    none.close();
  });

  it('does not stack pings while a send hangs, and logs a failing run once', async () => {
    const warned: string[] = [];
    const log = { ...quiet, warn: (_o: unknown, msg: string) => void warned.push(msg) };
    let calls = 0;
    const send: NotifySender = (_a, signal) => {
      calls++;
      return new Promise((_resolve, reject) => {
        signal.addEventListener('abort', () => reject(signal.reason), { once: true });
      });
    };
    const n = new SystemdNotifier({ env: { socket: '/n', watchdogUsec: 100_000 }, log, send });
    n.startWatchdog();
    await new Promise((r) => setTimeout(r, 400));
    expect(calls).toBe(1);
    n.close();
    await new Promise((r) => setTimeout(r, 10));
    expect(warned).toEqual([]);
  });
});

describe('canSendAsParent', () => {
  it('reads CAP_SYS_ADMIN (bit 21) from the effective capability set', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vmplug-caps-'));
    const file = join(dir, 'status');
    await writeFile(file, 'Name:\tnode\nCapEff:\t000001ffffffffff\n');
    expect(await canSendAsParent(file)).toBe(true);
    await writeFile(file, 'Name:\tnode\nCapEff:\t0000000000000000\n');
    expect(await canSendAsParent(file)).toBe(false);
    await writeFile(file, 'Name:\tnode\nCapEff:\t0000000000200000\n');
    expect(await canSendAsParent(file)).toBe(true);
  });
});
