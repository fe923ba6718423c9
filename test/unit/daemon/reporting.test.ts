import { describe, expect, it, vi } from 'vitest';
import type { SandboxId, VolumeId } from '../../../core/ids.js';
import type { SandboxRecord } from '../../../core/sandbox.js';
import { resolveConfig } from '../../../daemon/config.js';
import { servedAttachService } from '../../../daemon/main.js';
import type { KubeHttp, KubeRequest } from '../../../daemon/report/kube/kube-http.js';
import { DaemonMetrics } from '../../../daemon/report/metrics.js';
import { NodeFactsCache } from '../../../daemon/report/node-facts.js';
import { PodEvents, podEventTarget } from '../../../daemon/report/pod-events.js';
import { createStatusFeed } from '../../../daemon/report/status-feed.js';
import type { DomainChange, LibvirtDomains } from '../../../libvirt/domains.js';
import type { AttachSpec } from '../../../storage/volume-spec.js';
import { FakeAttachService, memoryLogger } from './helpers.js';

const spec: AttachSpec = {
  mode: 'block',
  source: { type: 'hostDevice', path: '/dev/loop7' },
  readOnly: false,
  bus: 'virtio-blk',
};

async function harness(opts: { kube?: boolean; domains?: LibvirtDomains } = {}) {
  const log = memoryLogger('debug');
  const { config } = resolveConfig({ nodeName: 'node-a', leaseNamespace: 'ops' }, {}, null);
  const records: SandboxRecord[] = [
    {
      id: 'sb1',
      kind: 'kata',
      state: 'running',
      discoveredAt: '2026-01-01T00:00:00.000Z',
      pod: { uid: 'u1', name: 'web-0', namespace: 'shop' },
    },
    { id: 'sb2', kind: 'kata', state: 'running', discoveredAt: '2026-01-01T00:00:00.000Z' },
  ];
  const fake = new FakeAttachService();
  const ctx = { signal: new AbortController().signal, log: log.logger };
  const requests: KubeRequest[] = [];
  const http: KubeHttp = {
    server: 'https://fake',
    request: async (req) => {
      requests.push(req);
      return { status: 200, body: {} };
    },
  };
  const nodeFacts = new NodeFactsCache({
    system: {
      cpu: async () => ({ manufacturer: '', brand: 'cpu', cores: 2, physicalCores: 2 }),
      cpuFlags: async () => 'vmx',
      osInfo: async () => ({ distro: 'd', release: '1', kernel: 'k', arch: 'x64', hostname: 'h' }),
      networkInterfaces: async () => [],
      mem: async () => ({ total: 1, free: 1, available: 1 }),
      blockDevices: async () => [],
      kvmDevice: async () => 'missing',
    },
  });
  const catalog = { list: () => records, get: (id: string) => records.find((r) => r.id === id) };
  const feed = await createStatusFeed({
    config,
    logger: log.logger,
    discovery: { onChange: () => () => {} },
    catalog,
    listVolumes: async (id) => {
      const out = [];
      for (const v of ['v1']) {
        try {
          out.push(await fake.get(id, v as VolumeId, ctx));
        } catch {
          // not attached
        }
      }
      return out;
    },
    ...(opts.domains !== undefined ? { libvirtDomains: opts.domains } : {}),
    nodeFacts,
    env: {},
    ...(opts.kube ? { reporter: { http, leaseRenewMs: 60_000 } } : {}),
  });
  const metrics = new DaemonMetrics({ sandboxes: () => records });
  const podEvents = new PodEvents(feed.reporter, catalog);
  // What vmplugd serves, wired as daemon/main.ts wires it.
  const reporting = {
    service: servedAttachService(fake, { metrics, feed, podEvents }),
    metrics,
    reporter: feed.reporter,
    stop: () => feed.stop(),
  };
  feed.start({ readiness: () => ({ ready: true, checks: {} }) });
  const events = () =>
    requests
      .filter((r) => r.method === 'POST' && r.path.endsWith('/events'))
      .map((r) => r.body as { reason: string; type: string; involvedObject: { name: string; uid?: string } });
  return { reporting, log, ctx, fake, requests, events, records };
}

describe('what vmplugd reports (status feed, Pod events, metrics)', () => {
  it('without a cluster: a disabled reporter that says so once, metrics still counted', async () => {
    const h = await harness();
    expect(h.reporting.reporter.enabled).toBe(false);
    await h.reporting.service.attach('sb1' as SandboxId, 'v1' as VolumeId, spec, h.ctx);
    expect(h.log.lines().filter((l) => /no Kubernetes cluster configured/.test(String(l.msg)))).toHaveLength(
      1,
    );
    expect(await h.reporting.metrics.text()).toMatch(
      /^vmplug_attach_total\{mode="block",frontend="virtio-blk",result="ok"\} 1$/m,
    );
    await h.reporting.stop();
  });

  it('Pod events for a new attach, a detach and a failure of a sandbox with a pod; none without one', async () => {
    const h = await harness({ kube: true });
    const sb1 = 'sb1' as SandboxId;
    const v1 = 'v1' as VolumeId;
    await h.reporting.service.attach(sb1, v1, spec, h.ctx);
    await h.reporting.service.attach(sb1, v1, spec, h.ctx); // idempotent repeat: no news
    await h.reporting.service.attach('sb2' as SandboxId, v1, spec, h.ctx); // no pod: no event
    await h.reporting.reporter.flush();
    // The detach is labelled from the volume list read after the attach.
    await vi.waitFor(
      () =>
        expect(
          h.requests.some(
            (r) =>
              r.method === 'PATCH' &&
              r.path.endsWith('/status') &&
              JSON.stringify(r.body).includes('"volumeId":"v1"'),
          ),
        ).toBe(true),
      { timeout: 20_000 },
    );
    await h.reporting.service.detach(sb1, v1, h.ctx);
    h.fake.fail = Object.assign(new Error('lanes full'), { code: 'LANES_FULL' });
    await expect(h.reporting.service.attach(sb1, 'v9' as VolumeId, spec, h.ctx)).rejects.toThrow();
    await h.reporting.reporter.flush();
    expect(
      h.events().map((e) => `${e.reason}/${e.type}/${e.involvedObject.name}/${e.involvedObject.uid}`),
    ).toEqual([
      'VolumeAttached/Normal/web-0/u1',
      'VolumeDetached/Normal/web-0/u1',
      'VolumeAttachFailed/Warning/web-0/u1',
    ]);
    const metrics = await h.reporting.metrics.text();
    expect(metrics).toMatch(/^vmplug_detach_total\{mode="block",frontend="virtio-blk",result="ok"\} 1$/m);
    expect(metrics).toMatch(/^vmplug_operation_errors_total\{op="attach",code="LANES_FULL"\} 1$/m);
    // The Lease goes to the configured namespace.
    expect(
      h.requests.some((r) => r.path.startsWith('/apis/coordination.k8s.io/v1/namespaces/ops/leases/')),
    ).toBe(true);
    await h.reporting.stop();
  });

  it("the request's pod gets the events of a sandbox whose runtime records none; the runtime's wins", async () => {
    const h = await harness({ kube: true });
    const uid = '5f0c3b1e-9d2a-4c7b-8e6f-1a2b3c4d5e6f';
    const sb2 = 'sb2' as SandboxId;
    const v1 = 'v1' as VolumeId;
    const withPod: AttachSpec = { ...spec, pod: { uid, name: 'db-0', namespace: 'data' } };
    await h.reporting.service.attach(sb2, v1, withPod, h.ctx);
    // The detach names only ids: its pod is the one recorded with the volume, as last read.
    await vi.waitFor(
      () =>
        expect(
          h.requests.some(
            (r) =>
              r.method === 'PATCH' &&
              r.path.endsWith('/status') &&
              /"id":"sb2".*"volumeId":"v1"/.test(JSON.stringify(r.body)),
          ),
        ).toBe(true),
      { timeout: 20_000 },
    );
    await h.reporting.service.detach(sb2, v1, h.ctx);
    // sb1's runtime names web-0: it wins over what the request says.
    await h.reporting.service.attach('sb1' as SandboxId, v1, withPod, h.ctx);
    // A pod known by uid alone cannot be an Event's object.
    await h.reporting.service.attach(sb2, 'v2' as VolumeId, { ...spec, pod: { uid } }, h.ctx);
    await h.reporting.reporter.flush();
    expect(
      h
        .events()
        .map(
          (e) =>
            `${e.reason}/${e.involvedObject.name}/${(e as { involvedObject: { namespace?: string } }).involvedObject.namespace}/${e.involvedObject.uid}`,
        ),
    ).toEqual([
      `VolumeAttached/db-0/data/${uid}`,
      `VolumeDetached/db-0/data/${uid}`,
      'VolumeAttached/web-0/shop/u1',
    ]);
    await h.reporting.stop();
  });

  it('podEventTarget: runtime first, the request as fallback, the uid added only for the same pod', () => {
    const req = { uid: 'u-req', name: 'a', namespace: 'n' };
    expect(podEventTarget({ name: 'a', namespace: 'n' }, req)).toEqual({
      podName: 'a',
      namespace: 'n',
      podUid: 'u-req',
    });
    expect(podEventTarget({ name: 'b', namespace: 'n' }, req)).toEqual({ podName: 'b', namespace: 'n' });
    expect(podEventTarget({ uid: 'u-rt', name: 'a', namespace: 'n' }, req)).toEqual({
      podName: 'a',
      namespace: 'n',
      podUid: 'u-rt',
    });
    expect(podEventTarget({ uid: 'u-rt' }, req)).toEqual({ podName: 'a', namespace: 'n', podUid: 'u-req' });
    expect(podEventTarget(undefined, req)).toEqual({ podName: 'a', namespace: 'n', podUid: 'u-req' });
    expect(podEventTarget(undefined, { uid: 'u-req' })).toBeUndefined();
    expect(podEventTarget(undefined, undefined)).toBeUndefined();
  });

  it('a libvirt domain change reaches the status without waiting for a resync', async () => {
    const listeners = new Set<(c: DomainChange) => void>();
    const domains = {
      onChange: (l: (c: DomainChange) => void) => {
        listeners.add(l);
        return () => listeners.delete(l);
      },
    } as unknown as LibvirtDomains;
    const h = await harness({ kube: true, domains });
    const wrote = (needle: string) =>
      h.requests.some(
        (r) => r.method === 'PATCH' && r.path.endsWith('/status') && JSON.stringify(r.body).includes(needle),
      );
    await vi.waitFor(() => expect(wrote('"id":"sb1"')).toBe(true), { timeout: 20_000 });
    h.records.push({
      id: 'dom-1',
      kind: 'libvirt',
      state: 'paused',
      discoveredAt: '2026-01-01T00:00:00.000Z',
    });
    for (const l of listeners) {
      l({
        kind: 'updated',
        domain: { name: 'dom-1', uuid: '00000000-0000-4000-8000-000000000001', state: 'paused' },
      } as unknown as DomainChange);
    }
    await vi.waitFor(() => expect(wrote('"id":"dom-1"')).toBe(true), { timeout: 20_000 });
    await h.reporting.stop();
    expect(listeners.size).toBe(0);
  });
});
