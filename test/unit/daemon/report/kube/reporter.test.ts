import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { KubeError, type KubeHttp, type KubeRequest } from '../../../../../daemon/report/kube/kube-http.js';
import { createReporter, type SnapshotProvider } from '../../../../../daemon/report/kube/reporter.js';
import type { NodeStatusSnapshot } from '../../../../../daemon/report/kube/status.js';

/**
 * Answers as kube-apiserver 1.20 did in the integration test: applying /status of a missing
 * VmplugNode is a 404, creating an existing one a 409, a stopped server refuses connections.
 */
class FakeApiserver implements KubeHttp {
  readonly server = 'https://127.0.0.1:6443';
  up = true;
  exists = false;
  calls: string[] = [];
  lastStatus: unknown;
  async request(req: KubeRequest) {
    this.calls.push(`${req.method} ${req.path}`);
    if (!this.up) throw new KubeError('KUBE_UNREACHABLE', 'connect ECONNREFUSED 127.0.0.1:6443');
    if (req.path === '/apis/vmplug.io/v1alpha1/vmplugnodes/n1/status') {
      if (!this.exists) throw new KubeError('KUBE_HTTP', 'vmplugnodes.vmplug.io "n1" not found', 404);
      expect(req.contentType).toBe('application/apply-patch+yaml');
      expect(req.query).toEqual({ fieldManager: 'vmplugd', force: 'true' });
      this.lastStatus = (req.body as { status: unknown }).status;
      return { status: 200, body: req.body };
    }
    if (req.path === '/apis/vmplug.io/v1alpha1/vmplugnodes' && req.method === 'POST') {
      if (this.exists) throw new KubeError('KUBE_HTTP', 'already exists', 409);
      this.exists = true;
      return { status: 201, body: req.body };
    }
    return { status: 200, body: req.body };
  }
}

function provider(initial: NodeStatusSnapshot) {
  let snap = initial;
  const listeners = new Set<() => void>();
  const p: SnapshotProvider & { set(s: NodeStatusSnapshot): void } = {
    snapshot: () => snap,
    subscribe: (l) => {
      listeners.add(l);
      return () => listeners.delete(l);
    },
    set: (s) => {
      snap = s;
      for (const l of listeners) l();
    },
  };
  return p;
}

const snap = (state: string): NodeStatusSnapshot => ({
  node: {},
  sandboxes: [{ id: 's1', kind: 'kata', state, volumes: [], nics: [] }],
  conditions: [],
});

describe('NodeReporter', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('creates the missing VmplugNode, applies its status, and logs an outage once', async () => {
    const api = new FakeApiserver();
    const warn = vi.fn();
    const info = vi.fn();
    const p = provider(snap('running'));
    const r = await createReporter({
      nodeName: 'n1',
      provider: p,
      logger: { debug() {}, info, warn },
      http: api,
      backoff: { initialMs: 100, maxMs: 1_000 },
    });
    r.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(api.calls.filter((c) => c.includes('vmplugnodes'))).toEqual([
      'PATCH /apis/vmplug.io/v1alpha1/vmplugnodes/n1/status',
      'POST /apis/vmplug.io/v1alpha1/vmplugnodes',
      'PATCH /apis/vmplug.io/v1alpha1/vmplugnodes/n1/status',
    ]);
    expect(api.lastStatus).toMatchObject({ sandboxes: [{ state: 'running' }], summary: { sandboxes: 1 } });
    expect(api.calls).toContain(
      'PATCH /apis/coordination.k8s.io/v1/namespaces/vmplug-system/leases/vmplug-n1',
    );

    api.up = false;
    p.set(snap('paused'));
    await vi.advanceTimersByTimeAsync(30_000);
    expect(r.health()).toMatchObject({ reachable: false });
    expect(warn).toHaveBeenCalledTimes(1);
    p.set(snap('crashed'));
    api.up = true;
    await vi.advanceTimersByTimeAsync(2_000);
    expect(api.lastStatus).toMatchObject({ sandboxes: [{ state: 'crashed' }] });
    expect(r.health()).toMatchObject({ reachable: true });
    expect(info).toHaveBeenCalledWith({}, 'Kubernetes API server reachable again');
    await r.stop({ flushTimeoutMs: 0 });
  });

  it('stops without hanging while the server is away', async () => {
    const api = new FakeApiserver();
    api.up = false;
    const r = await createReporter({
      nodeName: 'n1',
      provider: provider(snap('running')),
      logger: { debug() {}, info() {}, warn() {} },
      http: api,
    });
    r.start();
    r.recordPodEvent({ podName: 'p', namespace: 'default' }, 'VolumeAttached', 'x');
    await vi.advanceTimersByTimeAsync(5_000);
    const stopped = r.stop({ flushTimeoutMs: 1_000 });
    await vi.advanceTimersByTimeAsync(1_000);
    await stopped;
    expect(r.health().events).toMatchObject({ sent: 0, queued: 1 });
  });

  it('writes no status before the node facts are complete, and after factsWaitMs anyway', async () => {
    const api = new FakeApiserver();
    const warn = vi.fn();
    let complete = false;
    const p = provider(snap('running'));
    const r = await createReporter({
      nodeName: 'n1',
      provider: { ...p, complete: () => complete },
      logger: { debug() {}, info() {}, warn },
      http: api,
      factsWaitMs: 10_000,
    });
    r.start();
    p.set(snap('paused'));
    await vi.advanceTimersByTimeAsync(3_000);
    expect(api.calls.filter((c) => c.includes('vmplugnodes'))).toEqual([]);
    // The facts complete: their change notice writes the status.
    complete = true;
    p.set(snap('running'));
    await vi.advanceTimersByTimeAsync(1_000);
    expect(api.lastStatus).toMatchObject({ sandboxes: [{ state: 'running' }] });
    await r.stop({ flushTimeoutMs: 0 });

    // Facts that never complete delay the first write by factsWaitMs only, with one warning.
    const api2 = new FakeApiserver();
    const r2 = await createReporter({
      nodeName: 'n1',
      provider: { ...provider(snap('running')), complete: () => false },
      logger: { debug() {}, info() {}, warn },
      http: api2,
      factsWaitMs: 10_000,
    });
    r2.start();
    await vi.advanceTimersByTimeAsync(9_000);
    expect(api2.lastStatus).toBeUndefined();
    await vi.advanceTimersByTimeAsync(2_000);
    expect(api2.lastStatus).toMatchObject({ sandboxes: [{ state: 'running' }] });
    expect(warn).toHaveBeenCalledWith(
      {},
      'node facts still incomplete; writing the node status without them',
    );
    await r2.stop({ flushTimeoutMs: 0 });
  });
});
