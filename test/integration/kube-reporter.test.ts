/**
 * The Kubernetes reporter against a real kube-apiserver + etcd (built from Debian's kubernetes
 * source package). The project's CRD and RBAC are installed from deploy/, and the reporter runs
 * as the vmplugd service account with a TokenRequest token, so the RBAC rules are proven enough.
 */
import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createKubeHttp, type KubeHttp, type KubeRequest } from '../../daemon/report/kube/kube-http.js';
import {
  createReporter,
  type Reporter,
  type ReporterLogger,
  type SnapshotProvider,
} from '../../daemon/report/kube/reporter.js';
import type { NodeStatusSnapshot } from '../../daemon/report/kube/status.js';
import { applyDeployFiles, prepareVmplugCluster, until } from '../env/kube/manifests.js';
import { type KubeApiserver, startKubeApiserver } from '../env/kube.js';

const NODE = 'node-a';
const NS = 'vmplug-system';

class FakeProvider implements SnapshotProvider {
  #snap: NodeStatusSnapshot;
  #listeners = new Set<() => void>();
  constructor(initial: NodeStatusSnapshot) {
    this.#snap = initial;
  }
  snapshot(): NodeStatusSnapshot {
    return this.#snap;
  }
  subscribe(l: () => void): () => void {
    this.#listeners.add(l);
    return () => this.#listeners.delete(l);
  }
  set(s: NodeStatusSnapshot): void {
    this.#snap = s;
    for (const l of this.#listeners) l();
  }
}

function snapshot(volumes: string[], state = 'running'): NodeStatusSnapshot {
  return {
    node: { hostname: NODE, kernel: '6.1.0', arch: 'x64', cpu: { cores: 2 }, memoryBytes: 2 ** 34 },
    sandboxes: [
      {
        id: 'sb-1',
        kind: 'kata',
        state,
        pod: { uid: 'uid-1', name: 'vm-pod', namespace: 'default' },
        volumes: volumes.map((v) => ({ volumeId: v, mode: 'rbd', bus: 'virtio-blk', state: 'attached' })),
        nics: [{ id: 'nic0', state: 'attached', mac: '52:54:00:00:00:01' }],
      },
    ],
    conditions: [{ type: 'Ready', status: 'True', reason: 'Serving' }],
  };
}

const quiet: ReporterLogger = { debug() {}, info() {}, warn() {} };

/** Counts the status writes the API server accepted, by wrapping the real client. */
function counting(http: KubeHttp): KubeHttp & { statusWrites: number } {
  const w = {
    server: http.server,
    statusWrites: 0,
    async request(req: KubeRequest) {
      const res = await http.request(req);
      if (req.method === 'PATCH' && req.path.endsWith('/status')) w.statusWrites++;
      return res;
    },
  };
  return w;
}

describe('Kubernetes reporter against a real kube-apiserver', () => {
  let kube: KubeApiserver;
  let admin: KubeHttp;
  let saKubeconfig: string;
  const reporters: Reporter[] = [];

  const getNode = async (): Promise<{
    status?: { sandboxes?: { volumes?: { volumeId: string }[]; state: string }[] };
    metadata: { resourceVersion: string; managedFields?: { manager: string; subresource?: string }[] };
  }> =>
    (await admin.request({ method: 'GET', path: `/apis/vmplug.io/v1alpha1/vmplugnodes/${NODE}` }))
      .body as never;
  const volumesOf = (n: Awaited<ReturnType<typeof getNode>>): string[] =>
    (n.status?.sandboxes?.[0]?.volumes ?? []).map((v) => v.volumeId);

  beforeAll(async () => {
    kube = await startKubeApiserver();
    console.info(`kube-apiserver ready in ${Math.round(kube.lastStartMs)} ms`);
    const cluster = await prepareVmplugCluster(kube);
    admin = cluster.admin;
    saKubeconfig = cluster.serviceAccountKubeconfig;
  });

  afterAll(async () => {
    for (const r of reporters) await r.stop({ flushTimeoutMs: 0 });
    await kube?.stop();
  });

  async function startReporter(provider: SnapshotProvider, http?: KubeHttp): Promise<Reporter> {
    const r = await createReporter({
      nodeName: NODE,
      provider,
      logger: quiet,
      kubeconfigPath: saKubeconfig,
      ...(http ? { http } : {}),
      leaseNamespace: NS,
      leaseRenewMs: 1_000,
      backoff: { initialMs: 100, maxMs: 1_000 },
    });
    reporters.push(r);
    r.start();
    return r;
  }

  it('accepts the DaemonSet manifest (server-side dry run)', async () => {
    const [res] = await applyDeployFiles(kube, ['daemonset.yaml'], { dryRun: true });
    expect(res?.kind).toBe('DaemonSet');
  });

  it('creates the VmplugNode and keeps its status, sends a Pod event, renews the lease', async () => {
    const provider = new FakeProvider(snapshot(['vol-a']));
    const sa = await createKubeHttp({ kind: 'kubeconfig', path: saKubeconfig });
    const reporter = await startReporter(provider, sa);

    const node = await until('the status', async () => {
      const n = await getNode();
      return volumesOf(n).length === 1 ? n : undefined;
    });
    expect(volumesOf(node)).toEqual(['vol-a']);
    expect(node.metadata.managedFields?.some((f) => f.manager === 'vmplugd')).toBe(true);
    const full = node as unknown as { status: Record<string, unknown> };
    expect(full.status.summary).toEqual({ sandboxes: 1, volumes: 1, nics: 1, podVolumes: 0 });
    expect(full.status.conditions).toEqual([{ type: 'Ready', status: 'True', reason: 'Serving' }]);

    // Snapshot change -> CR reflects it; timed for the report (not asserted).
    const samples: number[] = [];
    for (let i = 0; i < 5; i++) {
      await reporter.flush();
      await new Promise((r) => setTimeout(r, 1_100)); // past the write interval
      const want = `vol-t${i}`;
      const t0 = performance.now();
      provider.set(snapshot(['vol-a', want]));
      await until('the change', async () =>
        (await volumesOf(await getNode())).includes(want) ? true : undefined,
      );
      samples.push(performance.now() - t0);
    }
    samples.sort((a, b) => a - b);
    console.info(
      `snapshot change -> CR status: median ${Math.round(samples[2] ?? 0)} ms, max ${Math.round(samples[4] ?? 0)} ms`,
    );

    const pod = (await admin.request({ method: 'GET', path: '/api/v1/namespaces/default/pods/vm-pod' }))
      .body as {
      metadata: { uid: string };
    };
    reporter.recordPodEvent(
      { podUid: pod.metadata.uid, podName: 'vm-pod', namespace: 'default' },
      'VolumeAttached',
      'vol-a attached as virtio-blk (rbd)',
    );
    reporter.recordPodEvent(
      { podName: 'vm-pod', namespace: 'default' },
      'VolumeAttachFailed',
      'boom',
      'Warning',
    );
    const events = await until('the pod events', async () => {
      const list = (await admin.request({ method: 'GET', path: '/api/v1/namespaces/default/events' }))
        .body as {
        items: {
          reason: string;
          type: string;
          involvedObject: { name: string; uid?: string };
          source: { host: string };
        }[];
      };
      return list.items.length >= 2 ? list.items : undefined;
    });
    const attached = events.find((e) => e.reason === 'VolumeAttached');
    expect(attached?.involvedObject).toMatchObject({ name: 'vm-pod', uid: pod.metadata.uid });
    expect(attached?.source.host).toBe(NODE);
    expect(events.find((e) => e.reason === 'VolumeAttachFailed')?.type).toBe('Warning');

    const lease = await until('the lease', async () => {
      const l = (
        await admin.request({
          method: 'GET',
          path: `/apis/coordination.k8s.io/v1/namespaces/${NS}/leases/vmplug-${NODE}`,
        })
      ).body as { spec: { holderIdentity: string; renewTime: string } };
      return l;
    });
    expect(lease.spec.holderIdentity).toBe(NODE);
    const renewed = await until('a lease renewal', async () => {
      const l = (
        await admin.request({
          method: 'GET',
          path: `/apis/coordination.k8s.io/v1/namespaces/${NS}/leases/vmplug-${NODE}`,
        })
      ).body as { spec: { renewTime: string } };
      return l.spec.renewTime !== lease.spec.renewTime ? l : undefined;
    });
    expect(Date.parse(renewed.spec.renewTime)).toBeGreaterThan(Date.parse(lease.spec.renewTime));
    expect(reporter.health()).toMatchObject({ enabled: true, reachable: true });
    await reporter.stop();
  });

  it('coalesces a burst of 50 changes into a few writes, ending on the last status', async () => {
    const provider = new FakeProvider(snapshot(['vol-a']));
    const http = counting(await createKubeHttp({ kind: 'kubeconfig', path: saKubeconfig }));
    const reporter = await startReporter(provider, http);
    await reporter.flush();
    const before = http.statusWrites;
    const rvBefore = Number((await getNode()).metadata.resourceVersion);

    const t0 = performance.now();
    for (let i = 0; i < 50; i++) {
      provider.set(snapshot(['vol-a', `burst-${i}`]));
      await new Promise((r) => setTimeout(r, 10));
    }
    const burstMs = performance.now() - t0;
    await reporter.flush();
    const writes = http.statusWrites - before;
    const node = await getNode();
    console.info(`burst of 50 changes over ${Math.round(burstMs)} ms -> ${writes} status writes`);
    expect(volumesOf(node).sort()).toEqual(['burst-49', 'vol-a']);
    // One write per started second of the burst, plus the trailing one.
    expect(writes).toBeLessThanOrEqual(Math.ceil(burstMs / 1_000) + 1);
    expect(writes).toBeGreaterThanOrEqual(1);
    // Nothing else wrote the object meanwhile (etcd revisions are global; 1 write = +1 or so).
    expect(Number(node.metadata.resourceVersion)).toBeGreaterThan(rvBefore);

    // Unchanged snapshots write nothing.
    const settled = http.statusWrites;
    provider.set(snapshot(['vol-a', 'burst-49']));
    provider.set(snapshot(['burst-49', 'vol-a']));
    await new Promise((r) => setTimeout(r, 1_500));
    await reporter.flush();
    expect(http.statusWrites).toBe(settled);
    await reporter.stop();
  });

  it('survives an API server restart and catches up with the latest status and queued events', async () => {
    const provider = new FakeProvider(snapshot(['vol-a']));
    const reporter = await startReporter(provider);
    await reporter.flush();

    await kube.stopApiserver();
    provider.set(snapshot(['vol-a', 'during-outage-1']));
    reporter.recordPodEvent({ podName: 'vm-pod', namespace: 'default' }, 'VolumeDetached', 'during outage');
    await until('the reporter to notice', async () => (reporter.health().reachable ? undefined : true));
    provider.set(snapshot(['during-outage-2'], 'paused'));
    await new Promise((r) => setTimeout(r, 1_500));
    expect(reporter.health().reachable).toBe(false);

    const t0 = performance.now();
    await kube.startApiserver();
    const node = await until('the status to catch up', async () => {
      const n = await getNode();
      return volumesOf(n).join() === 'during-outage-2' ? n : undefined;
    });
    console.info(
      `apiserver restart ready in ${Math.round(kube.lastStartMs)} ms; status caught up ${Math.round(performance.now() - t0)} ms after restart began`,
    );
    expect(node.status?.sandboxes?.[0]?.state).toBe('paused');
    await until('the queued event', async () => {
      const list = (await admin.request({ method: 'GET', path: '/api/v1/namespaces/default/events' }))
        .body as {
        items: { reason: string }[];
      };
      return list.items.some((e) => e.reason === 'VolumeDetached') ? true : undefined;
    });
    await until('reachable again', async () => (reporter.health().reachable ? true : undefined));
    await reporter.stop();
  });

  it('recreates a deleted VmplugNode', async () => {
    const provider = new FakeProvider(snapshot(['vol-a']));
    const reporter = await startReporter(provider);
    await reporter.flush();
    await admin.request({ method: 'DELETE', path: `/apis/vmplug.io/v1alpha1/vmplugnodes/${NODE}` });
    provider.set(snapshot(['vol-after-delete']));
    await until('the recreated node', async () =>
      volumesOf(await getNode()).join() === 'vol-after-delete' ? true : undefined,
    );
    await reporter.stop();
  });

  it('is disabled, saying so once, when no cluster is configured', async () => {
    const lines: string[] = [];
    const log: ReporterLogger = {
      debug() {},
      info: (_o, m) => lines.push(m),
      warn: (_o, m) => lines.push(m),
    };
    const r = await createReporter({
      nodeName: NODE,
      provider: new FakeProvider(snapshot([])),
      logger: log,
      env: {},
    });
    r.start();
    r.start();
    r.recordPodEvent({ podName: 'p', namespace: 'default' }, 'X', 'y');
    expect(r.enabled).toBe(false);
    expect(lines).toEqual(['no Kubernetes cluster configured; not reporting']);
    await r.stop();
  });
});
