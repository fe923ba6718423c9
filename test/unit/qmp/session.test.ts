import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { backoffDelay } from '../../../qmp/backoff.js';
import { QmpAbortedError, QmpClosedError, QmpTimeoutError } from '../../../qmp/errors.js';
import { deviceIs } from '../../../qmp/events.js';
import { QmpSession, type QmpSessionStateChange } from '../../../qmp/session.js';
import { FakeQemu } from '../fakes/qmp-server.js';

let fake: FakeQemu;
const sessions: QmpSession[] = [];

beforeEach(async () => {
  fake = await FakeQemu.start();
});

afterEach(async () => {
  await Promise.all(sessions.splice(0).map((s) => s.close()));
  await fake.close();
});

function start(opts: Parameters<typeof QmpSession.start>[1] = {}): QmpSession {
  const s = QmpSession.start(fake.path, { backoff: { initialMs: 10, maxMs: 50 }, ...opts });
  sessions.push(s);
  return s;
}

function caught(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => {
      throw new Error('expected a rejection');
    },
    (e: unknown) => e,
  );
}

function nextState(s: QmpSession, state: string): Promise<QmpSessionStateChange> {
  return new Promise((resolve) => {
    const off = s.onStateChange((c) => {
      if (c.state === state) {
        off();
        resolve(c);
      }
    });
  });
}

describe('backoffDelay', () => {
  it('grows, is capped and jittered downwards', () => {
    const o = { initialMs: 100, maxMs: 1_000, factor: 2, jitter: 0.5 };
    expect([0, 1, 2, 3, 4, 10, 1000].map((a) => backoffDelay(a, o, () => 0))).toEqual([
      100, 200, 400, 800, 1000, 1000, 1000,
    ]);
    expect(backoffDelay(3, o, () => 0.999)).toBe(400);
    for (let i = 0; i < 100; i++) {
      const d = backoffDelay(i % 12, o);
      expect(d).toBeGreaterThanOrEqual(50);
      expect(d).toBeLessThanOrEqual(1_000);
    }
  });
});

describe('QmpSession', () => {
  it('becomes ready and executes; execute waits for readiness', async () => {
    const s = start();
    expect(s.state).toBe('connecting');
    expect(await s.execute('query-status')).toMatchObject({ running: true });
    expect(s.state).toBe('ready');
    expect(s.generation).toBe(1);
    expect(s.greeting?.QMP.version.qemu.major).toBe(7);
  });

  it('reports a throwing state or event listener and never re-throws it', async () => {
    const reported: unknown[] = [];
    const uncaught: unknown[] = [];
    const onUncaught = (e: unknown) => uncaught.push(e);
    process.on('uncaughtException', onUncaught);
    try {
      const s = start({ onListenerError: (e) => reported.push(e) });
      s.onStateChange(() => {
        throw new Error('state listener bug');
      });
      const after = nextState(s, 'ready');
      s.subscribe('STOP', () => {
        throw new Error('event listener bug');
      });
      await after;
      const stopped = s.waitFor('STOP', undefined, { timeoutMs: 5_000 });
      fake.emit('STOP');
      await stopped;
      await new Promise((r) => setTimeout(r, 20));
      expect(await s.execute('query-status')).toMatchObject({ running: true });
    } finally {
      process.off('uncaughtException', onUncaught);
    }
    expect(uncaught).toEqual([]);
    expect(reported.map((e) => (e as Error).message)).toEqual(['state listener bug', 'event listener bug']);
  });

  it('reconnects after the connection drops and keeps subscribers', async () => {
    const s = start();
    await s.ready();
    const seen: string[] = [];
    s.subscribe('STOP', (e) => seen.push(`${e.event}@${s.generation}`));
    fake.emit('STOP');
    await s.execute('query-status');

    const reconnecting = nextState(s, 'connecting');
    fake.dropClient();
    const change = await reconnecting;
    expect(change.error).toBeInstanceOf(QmpClosedError);
    await nextState(s, 'ready');
    expect(s.generation).toBe(2);
    fake.emit('STOP');
    await s.execute('query-status');
    expect(seen).toEqual(['STOP@1', 'STOP@2']);
    expect(fake.received.filter((m) => m.execute === 'qmp_capabilities')).toHaveLength(2);
  });

  it('reconnects with backoff when QEMU restarts on the same path', async () => {
    const s = start({ backoff: { initialMs: 20, maxMs: 80, jitter: 0.5 } });
    await s.ready();
    const states: string[] = [];
    s.onStateChange((c) => states.push(c.state + (c.error ? `:${c.error.code}` : '')));
    await fake.stopListening();
    await new Promise((r) => setTimeout(r, 300));
    const attemptsWhileDown = states.length;
    // Gone for 300 ms at 20..80 ms per attempt: a handful of attempts, not a spin.
    expect(attemptsWhileDown).toBeGreaterThanOrEqual(3);
    expect(attemptsWhileDown).toBeLessThan(25);
    expect(states).toContain('connecting:QMP_CONNECT_FAILED');
    // A command issued while QEMU is away waits for it, within its own timeout.
    const pending = s.execute('query-status', undefined, { timeoutMs: 5_000 });
    await fake.listen();
    expect(await pending).toMatchObject({ running: true });
    expect(s.state).toBe('ready');
  });

  it('fails a command in flight when the connection drops, without replaying it', async () => {
    fake.handlers.set('slow', () => ({ noReply: true }));
    const s = start();
    await s.ready();
    const p = caught(s.execute('slow', undefined, { timeoutMs: 5_000 }));
    await new Promise((r) => setTimeout(r, 20));
    fake.dropClient();
    expect(await p).toBeInstanceOf(QmpClosedError);
    await s.ready();
    await s.execute('query-status');
    expect(fake.received.filter((m) => m.execute === 'slow')).toHaveLength(1);
  });

  it('times out waiting for a busy monitor and says it was busy', async () => {
    const holder = new (await import('node:net')).Socket();
    await new Promise<void>((r) => holder.connect(fake.path, () => r()));
    holder.on('error', () => {});
    try {
      const s = start({ greetingTimeoutMs: 50 });
      const err = await caught(s.execute('query-status', undefined, { timeoutMs: 300 }));
      expect(err).toBeInstanceOf(QmpTimeoutError);
      expect((err as Error).message).toContain('QMP_BUSY');
      expect(s.lastError?.code).toBe('QMP_BUSY');
      holder.destroy();
      await s.ready({ timeoutMs: 2_000 });
    } finally {
      holder.destroy();
    }
  });

  it('keeps waitFor across a reconnect', async () => {
    const s = start();
    await s.ready();
    const w = s.waitFor('DEVICE_DELETED', deviceIs('vd1'), { timeoutMs: 3_000 });
    fake.dropClient();
    await nextState(s, 'ready');
    fake.emit('DEVICE_DELETED', { path: '/machine/peripheral/vd1/virtio-backend' });
    fake.emit('DEVICE_DELETED', { device: 'vd1', path: '/machine/peripheral/vd1' });
    expect((await w).data?.device).toBe('vd1');
  });

  it('honours AbortSignal while waiting for readiness', async () => {
    await fake.stopListening();
    const s = start();
    const ac = new AbortController();
    const p = caught(s.execute('query-status', undefined, { signal: ac.signal, timeoutMs: 5_000 }));
    setTimeout(() => ac.abort(), 30);
    expect(await p).toBeInstanceOf(QmpAbortedError);
  });

  it('closes: state closed, waiters and later calls fail, no reconnect', async () => {
    const s = start();
    await s.ready();
    const w = caught(s.waitFor('STOP', undefined, { timeoutMs: 60_000 }));
    const connections = fake.connections;
    await s.close();
    expect(s.state).toBe('closed');
    expect(await w).toBeInstanceOf(QmpClosedError);
    expect(await caught(s.execute('query-status'))).toBeInstanceOf(QmpClosedError);
    await new Promise((r) => setTimeout(r, 50));
    expect(fake.connections).toBe(connections);
  });

  it('gives up after maxAttempts', async () => {
    await fake.stopListening();
    const s = start({ maxAttempts: 3 });
    const closed = await nextState(s, 'closed');
    expect(closed.error?.code).toBe('QMP_CONNECT_FAILED');
    expect(await caught(s.execute('query-status'))).toBeInstanceOf(QmpClosedError);
  });
});
