import { describe, expect, it, vi } from 'vitest';
import { parseNicId, parseSandboxId } from '../../../core/ids.js';
import type { SandboxRecord } from '../../../core/sandbox.js';
import { resolveConfig } from '../../../daemon/config.js';
import type { KubeHttp, KubeRequest } from '../../../daemon/report/kube/kube-http.js';
import type { NicStatus } from '../../../daemon/report/kube/status.js';
import { NodeFactsCache } from '../../../daemon/report/node-facts.js';
import { observeNicService } from '../../../daemon/report/observed-nics.js';
import { PodEvents } from '../../../daemon/report/pod-events.js';
import { createStatusFeed } from '../../../daemon/report/status-feed.js';
import { type NicService, type NicView, parseNicSpec } from '../../../net/index.js';
import { memoryLogger } from './helpers.js';

// NIC operations as the Kubernetes reporter sees them: Pod events for news only, and the NICs in
// the VmplugNode status.

const sb1 = parseSandboxId('sb1');
const sb2 = parseSandboxId('sb2');
const net1 = parseNicId('net1');
const spec = parseNicSpec({ hostInterface: { type: 'tap', bridge: 'br0' } }, sb1, net1);

function nicView(sandboxId: string): NicView {
  return {
    sandboxId,
    nicId: 'net1',
    state: 'Attached',
    mac: spec.mac,
    spec: { mac: spec.mac, hostInterface: { type: 'tap', bridge: 'br0' }, queues: 1 },
    tap: 'vmpt0123456789a',
    tapOwned: true,
    netdevId: 'vmpn-0123456789abcdef',
    deviceId: 'vmpnd-0123456789abcdef',
    port: 'vmplug-rp0',
    timeline: [],
  };
}

describe('NIC reporting', () => {
  it('Pod events for a new NIC attach, a detach and a failure; none for repeats or pod-less sandboxes; NICs in the status', async () => {
    const log = memoryLogger('debug');
    const { config } = resolveConfig({ nodeName: 'node-a' }, {}, null);
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
    const requests: KubeRequest[] = [];
    const http: KubeHttp = {
      server: 'https://fake',
      request: async (req) => {
        requests.push(req);
        return { status: 200, body: {} };
      },
    };
    const attached = new Set<string>();
    let fail: Error | undefined;
    const inner: NicService = {
      attach: async (sandboxId) => {
        if (fail) throw fail;
        const created = !attached.has(sandboxId);
        attached.add(sandboxId);
        return { created, nic: nicView(sandboxId) };
      },
      detach: async (sandboxId) => attached.delete(sandboxId),
      get: async (sandboxId) => nicView(sandboxId),
      list: async (sandboxId) => (attached.has(sandboxId) ? [nicView(sandboxId)] : []),
    };
    const catalog = { list: () => records, get: (id: string) => records.find((r) => r.id === id) };
    const feed = await createStatusFeed({
      config,
      logger: log.logger,
      discovery: { onChange: () => () => {} },
      catalog,
      listVolumes: async () => [],
      nodeFacts: new NodeFactsCache({
        system: {
          cpu: async () => ({ manufacturer: '', brand: 'cpu', cores: 2, physicalCores: 2 }),
          cpuFlags: async () => '',
          osInfo: async () => ({ distro: 'd', release: '1', kernel: 'k', arch: 'x64', hostname: 'h' }),
          networkInterfaces: async () => [],
          mem: async () => ({ total: 1, free: 1, available: 1 }),
          blockDevices: async () => [],
          kvmDevice: async () => 'missing',
        },
      }),
      env: {},
      reporter: { http, leaseRenewMs: 60_000 },
    });
    feed.start({
      readiness: () => ({ ready: true, checks: {} }),
      listNics: async (id): Promise<NicStatus[]> =>
        (await inner.list(parseSandboxId(id))).map((n) => ({
          id: n.nicId,
          mac: n.mac,
          tap: n.tap,
          state: n.state,
        })),
    });
    const podEvents = new PodEvents(feed.reporter, catalog);
    const nics = observeNicService(inner, (op) => podEvents.nic(op));
    const ctx = { signal: new AbortController().signal, log: log.logger };

    await nics.attach(sb1, net1, spec, ctx);
    await nics.attach(sb1, net1, spec, ctx); // repeat: no news
    await nics.attach(sb2, net1, spec, ctx); // no pod: no event
    feed.nicsChanged('sb1');
    await vi.waitFor(
      () =>
        expect(
          requests.some(
            (r) =>
              r.method === 'PATCH' &&
              r.path.endsWith('/status') &&
              JSON.stringify(r.body).includes('"tap":"vmpt0123456789a"'),
          ),
        ).toBe(true),
      { timeout: 20_000 },
    );
    expect(await nics.detach(sb1, net1, ctx)).toBe(true);
    expect(await nics.detach(sb1, net1, ctx)).toBe(false); // unknown: no news
    fail = Object.assign(new Error('no free root port'), { code: 'LANES_FULL' });
    await expect(nics.attach(sb1, net1, spec, ctx)).rejects.toThrow();
    await feed.reporter.flush();
    const events = requests
      .filter((r) => r.method === 'POST' && r.path.endsWith('/events'))
      .map(
        (r) => r.body as { reason: string; type: string; message: string; involvedObject: { name: string } },
      );
    expect(events.map((e) => `${e.reason}/${e.type}/${e.involvedObject.name}`)).toEqual([
      'NicAttached/Normal/web-0',
      'NicDetached/Normal/web-0',
      'NicAttachFailed/Warning/web-0',
    ]);
    expect(events[2]?.message).toContain('LANES_FULL');
    await feed.stop();
  });
});
