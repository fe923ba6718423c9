import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  DropOldestQueue,
  EventSender,
  microTime,
  podEventBody,
} from '../../../../../daemon/report/kube/events.js';
import { KubeError, type KubeHttp, type KubeRequest } from '../../../../../daemon/report/kube/kube-http.js';

const quiet = { warn() {}, debug() {} };

/** Answers like an API server that is up, down (connection refused), or refusing. */
class FakeApi implements KubeHttp {
  readonly server = 'https://127.0.0.1:6443';
  mode: 'up' | 'down' | 403 | 404 = 'up';
  posted: { reason: string; name: string }[] = [];
  attempts = 0;
  async request(req: KubeRequest) {
    this.attempts++;
    if (this.mode === 'down') throw new KubeError('KUBE_UNREACHABLE', 'connect ECONNREFUSED 127.0.0.1:6443');
    if (this.mode !== 'up') throw new KubeError('KUBE_HTTP', `${this.mode} no`, this.mode);
    const body = req.body as { reason: string; metadata: { name: string } };
    this.posted.push({ reason: body.reason, name: body.metadata.name });
    return { status: 201, body };
  }
}

const target = { podName: 'vm-pod', namespace: 'default', podUid: 'u-1' };

describe('DropOldestQueue', () => {
  it('keeps the newest items and counts what it dropped', () => {
    const q = new DropOldestQueue<number>(3);
    for (let i = 1; i <= 5; i++) q.push(i);
    expect([q.shift(), q.shift(), q.shift(), q.shift()]).toEqual([3, 4, 5, undefined]);
    expect(q.dropped).toBe(2);
    expect(() => new DropOldestQueue(0)).toThrow(RangeError);
  });
});

describe('pod event body', () => {
  it('is a core/v1 Event on the Pod with bounded reason and message', () => {
    const b = podEventBody(
      {
        target,
        reason: 'VolumeAttached',
        message: 'x'.repeat(5000),
        type: 'Normal',
        at: Date.UTC(2026, 0, 2, 3, 4, 5, 678),
        name: 'vm-pod.1',
      },
      'node-a',
    );
    expect(b).toMatchObject({
      metadata: { name: 'vm-pod.1', namespace: 'default' },
      involvedObject: { kind: 'Pod', name: 'vm-pod', namespace: 'default', uid: 'u-1' },
      type: 'Normal',
      firstTimestamp: '2026-01-02T03:04:05Z',
      source: { component: 'vmplugd', host: 'node-a' },
    });
    expect((b.message as string).length).toBe(1024);
    expect(microTime(Date.UTC(2026, 0, 2, 3, 4, 5, 678))).toBe('2026-01-02T03:04:05.678000Z');
  });
});

describe('EventSender', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  const make = (api: FakeApi, maxQueued = 4) =>
    new EventSender(
      api,
      { nodeName: 'node-a', maxQueued, backoff: { initialMs: 100, maxMs: 1_000 }, requestTimeoutMs: 1_000 },
      quiet,
    );

  it('sends in order', async () => {
    const api = new FakeApi();
    const s = make(api);
    s.record(target, 'A', 'a', 'Normal');
    s.record(target, 'B', 'b', 'Warning');
    await vi.advanceTimersByTimeAsync(0);
    expect(api.posted.map((p) => p.reason)).toEqual(['A', 'B']);
    expect(s.stats()).toEqual({ sent: 2, dropped: 0, rejected: 0, queued: 0 });
    await s.stop();
  });

  it('holds a bounded queue while the server is down, then sends the newest in order, each once', async () => {
    const api = new FakeApi();
    api.mode = 'down';
    const s = make(api, 4);
    for (const r of ['A', 'B', 'C', 'D', 'E', 'F']) s.record(target, r, r, 'Normal');
    await vi.advanceTimersByTimeAsync(10_000);
    expect(api.posted).toEqual([]);
    expect(s.stats()).toMatchObject({ dropped: 2, queued: 4 });
    // Backoff, capped: about one attempt a second, not a busy loop.
    expect(api.attempts).toBeLessThan(20);
    api.mode = 'up';
    await vi.advanceTimersByTimeAsync(1_000);
    expect(api.posted.map((p) => p.reason)).toEqual(['C', 'D', 'E', 'F']);
    expect(new Set(api.posted.map((p) => p.name)).size).toBe(4);
    await s.stop();
  });

  it('drops an event the server refuses for good, retries one it refuses for now', async () => {
    const api = new FakeApi();
    api.mode = 404;
    const s = make(api);
    s.record(target, 'Gone', 'namespace deleted', 'Normal');
    await vi.advanceTimersByTimeAsync(0);
    expect(s.stats()).toMatchObject({ rejected: 1, queued: 0 });

    api.mode = 403; // e.g. RBAC not loaded yet on a starting apiserver
    s.record(target, 'Later', 'x', 'Normal');
    await vi.advanceTimersByTimeAsync(300);
    expect(s.stats()).toMatchObject({ rejected: 1, queued: 1 });
    api.mode = 'up';
    await vi.advanceTimersByTimeAsync(1_000);
    expect(api.posted.map((p) => p.reason)).toEqual(['Later']);

    api.mode = 403; // forever: given up after a bounded number of tries
    s.record(target, 'Never', 'x', 'Normal');
    await vi.advanceTimersByTimeAsync(30_000);
    expect(s.stats()).toMatchObject({ rejected: 2, queued: 0 });
    await s.stop();
  });
});
