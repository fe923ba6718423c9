import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { QmpClient } from '../../../qmp/client.js';
import {
  QmpAbortedError,
  QmpBusyError,
  QmpClosedError,
  QmpCommandError,
  QmpConnectError,
  QmpProtocolError,
  QmpTimeoutError,
} from '../../../qmp/errors.js';
import { deviceIs } from '../../../qmp/events.js';
import { lateAnswerOf } from '../../../qmp/late-answers.js';
import { FakeQemu } from '../fakes/qmp-server.js';

let fake: FakeQemu;
const clients: QmpClient[] = [];

beforeEach(async () => {
  fake = await FakeQemu.start();
});

afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await fake.close();
});

async function connect(opts: Parameters<typeof QmpClient.connect>[1] = {}): Promise<QmpClient> {
  const c = await QmpClient.connect(fake.path, opts);
  clients.push(c);
  return c;
}

function caught(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    (v) => {
      throw new Error(`expected a rejection, got ${JSON.stringify(v)}`);
    },
    (e: unknown) => e,
  );
}

describe('QmpClient.connect', () => {
  it('reads the greeting and negotiates capabilities before anything else', async () => {
    const c = await connect();
    expect(c.greeting.QMP.version.qemu).toEqual({ major: 7, minor: 2, micro: 22 });
    expect(c.greeting.QMP.capabilities).toEqual(['oob']);
    expect(fake.received[0]).toMatchObject({ execute: 'qmp_capabilities' });
    expect(fake.received[0]).not.toHaveProperty('arguments');
    expect(await c.execute('query-status')).toEqual({ status: 'running', singlestep: false, running: true });
  });

  it('works when the server sends every byte separately', async () => {
    fake.transmit = (s, bytes) => {
      for (let i = 0; i < bytes.length; i++) s.write(bytes.subarray(i, i + 1));
    };
    const c = await connect();
    expect(await c.execute('query-status')).toMatchObject({ running: true });
  });

  it('fails with QMP_CONNECT_FAILED when the socket does not exist', async () => {
    const err = await caught(QmpClient.connect(`${fake.dir}/missing.sock`));
    expect(err).toBeInstanceOf(QmpConnectError);
    expect(err).toMatchObject({ code: 'QMP_CONNECT_FAILED', errno: 'ENOENT', retryable: true });
  });

  it('fails with QMP_BUSY when another client holds the monitor, and connects once it lets go', async () => {
    const first = await connect();
    const started = performance.now();
    const err = await caught(QmpClient.connect(fake.path, { greetingTimeoutMs: 150 }));
    expect(err).toBeInstanceOf(QmpBusyError);
    expect(err).toMatchObject({ code: 'QMP_BUSY', retryable: true });
    expect(performance.now() - started).toBeLessThan(1_000);

    // A parked client is greeted when the holder leaves, as QEMU does from its listen backlog.
    const waiting = QmpClient.connect(fake.path, { greetingTimeoutMs: 2_000 });
    await new Promise((r) => setTimeout(r, 50));
    await first.close();
    const second = await waiting;
    clients.push(second);
    expect(await second.execute('query-status')).toMatchObject({ running: true });
  });

  it('honours the overall timeout and an AbortSignal', async () => {
    fake.greet = false;
    const t = await caught(QmpClient.connect(fake.path, { timeoutMs: 100, greetingTimeoutMs: 5_000 }));
    expect(t).toBeInstanceOf(QmpBusyError);

    const ac = new AbortController();
    const p = caught(QmpClient.connect(fake.path, { signal: ac.signal }));
    setTimeout(() => ac.abort(new Error('shutting down')), 30);
    const a = await p;
    expect(a).toBeInstanceOf(QmpAbortedError);
    expect(a).toMatchObject({ code: 'QMP_ABORTED' });

    const pre = new AbortController();
    pre.abort();
    expect(await caught(QmpClient.connect(fake.path, { signal: pre.signal }))).toBeInstanceOf(
      QmpAbortedError,
    );
  });

  it('rejects a peer that does not greet with a QMP greeting', async () => {
    fake.greet = false;
    const p = caught(QmpClient.connect(fake.path));
    await new Promise((r) => setTimeout(r, 30));
    fake.sendRaw('{"hello": 1}\r\n');
    expect(await p).toBeInstanceOf(QmpProtocolError);
  });
});

describe('QmpClient commands', () => {
  it('matches replies to concurrent commands by id', async () => {
    let n = 0;
    fake.handlers.set('echo', (args) => ({ return: { n: args?.n, seq: n++ } }));
    const c = await connect();
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) => c.execute('echo', { n: i })));
    results.forEach((r, i) => {
      expect(r).toMatchObject({ n: i });
    });
  });

  it('matches replies sent out of order (as OOB replies may be)', async () => {
    fake.handlers.set('later', () => ({ noReply: true }));
    const c = await connect();
    const a = c.execute('later', { which: 'a' });
    const b = c.execute('later', { which: 'b' });
    await new Promise((r) => setTimeout(r, 30));
    const ids = fake.received.filter((m) => m.execute === 'later').map((m) => m.id);
    fake.replyTo(ids[1], { return: 'B' });
    fake.replyTo(ids[0], { return: 'A' });
    expect(await Promise.all([a, b])).toEqual(['A', 'B']);
  });

  it('surfaces QMP errors with class, desc and command, never the arguments', async () => {
    fake.handlers.set('object-add', () => ({
      error: {
        class: 'GenericError',
        desc: "attempt to add duplicate property 's0' to object (type 'container')",
      },
    }));
    const c = await connect();
    const err = await caught(
      c.execute('object-add', { 'qom-type': 'secret', id: 's0', data: 'c2VjcmV0LWtleQ==', format: 'base64' }),
    );
    expect(err).toBeInstanceOf(QmpCommandError);
    expect(err).toMatchObject({
      code: 'QMP_COMMAND_FAILED',
      command: 'object-add',
      errorClass: 'GenericError',
      desc: "attempt to add duplicate property 's0' to object (type 'container')",
    });
    expect(JSON.stringify(err)).not.toContain('c2VjcmV0LWtleQ==');
    expect(String(err)).not.toContain('c2VjcmV0LWtleQ==');
    expect((err as Error).stack).not.toContain('c2VjcmV0LWtleQ==');

    const nf = await caught(c.execute('nope'));
    expect(nf).toMatchObject({ errorClass: 'CommandNotFound', desc: 'The command nope has not been found' });
  });

  it('times out a command, hands its late reply to the timeout error and keeps working', async () => {
    fake.handlers.set('slow', () => ({ noReply: true }));
    const c = await connect();
    const err = await caught(c.execute('slow', undefined, { timeoutMs: 50 }));
    expect(err).toBeInstanceOf(QmpTimeoutError);
    expect(err).toMatchObject({ code: 'QMP_TIMEOUT', operation: 'slow', timeoutMs: 50 });
    // The promise rides on the error unseen by JSON (logs), found through wrapping errors too.
    expect(JSON.stringify(err)).not.toContain('lateAnswer');
    const inDoubt = lateAnswerOf(new Error('wrapped', { cause: err }));
    expect(inDoubt?.command).toBe('slow');
    const late = inDoubt?.answer;
    const slowId = fake.received.find((m) => m.execute === 'slow')?.id;
    fake.replyTo(slowId, { return: 'late' });
    expect(await late).toMatchObject({ kind: 'return', command: 'slow', value: 'late' });
    expect((await late)?.afterMs).toBeGreaterThanOrEqual(50);
    expect(await c.execute('query-status')).toMatchObject({ running: true });
  });

  it('settles the late answer of an aborted command with its error reply, and of others with lost on close', async () => {
    fake.handlers.set('slow', () => ({ noReply: true }));
    const c = await connect();
    const ac = new AbortController();
    const aborted = caught(c.execute('slow', { n: 1 }, { signal: ac.signal }));
    const timedOut = caught(c.execute('slow', { n: 2 }, { timeoutMs: 30 }));
    await new Promise((r) => setTimeout(r, 10));
    ac.abort();
    const [a, t] = await Promise.all([aborted, timedOut]);
    expect(a).toBeInstanceOf(QmpAbortedError);
    const [first, second] = fake.received.filter((m) => m.execute === 'slow').map((m) => m.id);
    fake.replyTo(first, { error: { class: 'GenericError', desc: 'refused late' } });
    const refused = await lateAnswerOf(a)?.answer;
    expect(refused).toMatchObject({ kind: 'error', command: 'slow' });
    expect(refused?.kind === 'error' && refused.error).toMatchObject({
      code: 'QMP_COMMAND_FAILED',
      desc: 'refused late',
    });
    expect(second).toBeDefined();
    fake.dropClient();
    expect(await lateAnswerOf(t)?.answer).toMatchObject({ kind: 'lost', command: 'slow' });
  });

  it('has nothing in doubt for a command never sent or answered in time', async () => {
    const c = await connect();
    const ac = new AbortController();
    ac.abort();
    expect(lateAnswerOf(await caught(c.execute('slow', undefined, { signal: ac.signal })))).toBeUndefined();
    fake.handlers.set('bad', () => ({ error: { class: 'GenericError', desc: 'no' } }));
    expect(lateAnswerOf(await caught(c.execute('bad')))).toBeUndefined();
  });

  it('aborts a command in flight and refuses one whose signal already fired', async () => {
    fake.handlers.set('slow', () => ({ noReply: true }));
    const c = await connect();
    const ac = new AbortController();
    const p = caught(c.execute('slow', undefined, { signal: ac.signal }));
    ac.abort();
    expect(await p).toBeInstanceOf(QmpAbortedError);
    await new Promise((r) => setTimeout(r, 20));
    const before = fake.received.length;
    expect(await caught(c.execute('query-status', undefined, { signal: ac.signal }))).toBeInstanceOf(
      QmpAbortedError,
    );
    await new Promise((r) => setTimeout(r, 20));
    expect(fake.received.length).toBe(before);
  });

  it('fails every pending command with QMP_CLOSED when the socket drops, and later calls too', async () => {
    fake.handlers.set('slow', () => ({ noReply: true }));
    const c = await connect();
    const closed = new Promise((resolve) => c.onClose(resolve));
    const pending = [1, 2, 3].map(() => caught(c.execute('slow', undefined, { timeoutMs: 60_000 })));
    await new Promise((r) => setTimeout(r, 20));
    fake.dropClient();
    for (const e of await Promise.all(pending)) {
      expect(e).toBeInstanceOf(QmpClosedError);
      expect(e).toMatchObject({ code: 'QMP_CLOSED', operation: 'slow' });
    }
    expect(await closed).toBeInstanceOf(QmpClosedError);
    expect(c.closed).toBe(true);
    expect(await caught(c.execute('query-status'))).toBeInstanceOf(QmpClosedError);
  });

  it('reads a multi-MB reply arriving in 64 KiB writes, interleaved with an event', async () => {
    const entries = Array.from({ length: 50_000 }, (_, i) => ({
      name: `${i}`,
      'meta-type': 'object',
      members: [],
    }));
    fake.handlers.set('query-qmp-schema', (_args, ctx) => {
      ctx.emit('RESUME');
      return { return: entries };
    });
    fake.transmit = (s, bytes) => {
      for (let i = 0; i < bytes.length; i += 65_536) s.write(bytes.subarray(i, i + 65_536));
    };
    const c = await connect();
    const resumed = c.waitFor('RESUME', undefined, { timeoutMs: 5_000 });
    const schema = await c.execute<unknown[]>('query-qmp-schema');
    expect(schema).toHaveLength(50_000);
    await resumed;
  });

  it('fails pending commands with QMP_PROTOCOL when the peer sends garbage', async () => {
    fake.handlers.set('slow', () => ({ noReply: true }));
    const c = await connect();
    const p = caught(c.execute('slow'));
    await new Promise((r) => setTimeout(r, 20));
    fake.sendRaw('this is not json\r\n');
    expect(await p).toBeInstanceOf(QmpProtocolError);
    expect(c.closed).toBe(true);
  });

  it('rejects arguments JSON cannot encode without sending or leaking a pending entry', async () => {
    const c = await connect();
    await expect(c.execute('query-status', { n: 1n })).rejects.toBeInstanceOf(TypeError);
    expect(await c.execute('query-status')).toMatchObject({ running: true });
  });

  it('closes politely', async () => {
    const c = await connect();
    await c.close();
    expect(c.closed).toBe(true);
  });
});

describe('QmpClient events', () => {
  it('delivers events to subscribers by name and to "*"', async () => {
    const c = await connect();
    const stops: unknown[] = [];
    const all: string[] = [];
    const off = c.subscribe('STOP', (e) => stops.push(e));
    c.subscribe('*', (e) => all.push(e.event));
    fake.emit('STOP');
    fake.emit('RESUME');
    await c.execute('query-status');
    off();
    fake.emit('STOP');
    await c.execute('query-status');
    expect(stops).toHaveLength(1);
    expect(stops[0]).toMatchObject({ event: 'STOP', timestamp: { seconds: expect.any(Number) } });
    expect(all).toEqual(['STOP', 'RESUME', 'STOP']);
  });

  it('waitFor armed before the command catches an event sent before the reply, skipping virtio-backend', async () => {
    fake.handlers.set('device_del', (args, ctx) => {
      ctx.emit('DEVICE_DELETED', { path: `/machine/peripheral/${args?.id}/virtio-backend` });
      ctx.emit('DEVICE_DELETED', { device: String(args?.id), path: `/machine/peripheral/${args?.id}` });
      return { return: {} };
    });
    const c = await connect();
    const deleted = c.waitFor('DEVICE_DELETED', deviceIs('vd0'), { timeoutMs: 1_000 });
    await c.execute('device_del', { id: 'vd0' });
    const ev = await deleted;
    expect(ev.data).toEqual({ device: 'vd0', path: '/machine/peripheral/vd0' });
  });

  it('waitFor times out, can be aborted or cancelled, and fails when the connection closes', async () => {
    const c = await connect();
    expect(await caught(c.waitFor('DEVICE_DELETED', undefined, { timeoutMs: 30 }))).toMatchObject({
      code: 'QMP_TIMEOUT',
      operation: 'waitFor DEVICE_DELETED',
    });
    const ac = new AbortController();
    const aborted = c.waitFor('STOP', undefined, { signal: ac.signal });
    ac.abort();
    expect(await caught(aborted)).toBeInstanceOf(QmpAbortedError);
    const cancelled = c.waitFor('STOP');
    cancelled.cancel();
    expect(await caught(cancelled)).toBeInstanceOf(QmpAbortedError);
    // Dropped without awaiting: must not surface as an unhandled rejection.
    c.waitFor('STOP', undefined, { timeoutMs: 10 });
    const onClose = c.waitFor('STOP', undefined, { timeoutMs: 60_000 });
    fake.dropClient();
    expect(await caught(onClose)).toBeInstanceOf(QmpClosedError);
    await new Promise((r) => setTimeout(r, 30));
  });

  it('keeps delivering when a listener throws', async () => {
    const errors: unknown[] = [];
    const c = await connect();
    c.subscribe('STOP', () => {
      throw new Error('listener bug');
    });
    const got = c.waitFor('STOP', undefined, { timeoutMs: 1_000 });
    const onErr = (e: unknown) => errors.push(e);
    process.on('uncaughtException', onErr);
    try {
      fake.emit('STOP');
      await got;
      await new Promise((r) => setTimeout(r, 10));
    } finally {
      process.off('uncaughtException', onErr);
    }
    expect(await c.execute('query-status')).toMatchObject({ running: true });
  });
});
