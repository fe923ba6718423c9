import { afterEach, describe, expect, it } from 'vitest';
import type { SandboxId } from '../../../core/ids.js';
import type { SandboxCatalog, SandboxRecord } from '../../../core/sandbox.js';
import { buildServer, type VmplugServer } from '../../../daemon/http/server.js';
import { combineCatalogs, discoveryCatalog } from '../../../daemon/sandboxes/catalog.js';
import type { DiscoveredSandbox } from '../../../daemon/sandboxes/discovery.js';
import type { Attachment } from '../../../storage/attach-service.js';
import { cephxKey, FakeAttachService, memoryLogger } from './helpers.js';

const discovered: DiscoveredSandbox[] = [
  {
    id: 'sb1' as SandboxId,
    kind: 'kata',
    reachability: 'present',
    vmState: 'running',
    qemuStatus: 'running',
    pod: { uid: 'uid-1', name: 'web-0', namespace: 'shop' },
    qemuPid: 1234,
    monitorPath: '/run/vmplug/sandboxes/sb1/qmp.sock',
    discoveredAt: '2026-01-01T00:00:00.000Z',
    generation: 1,
  },
  {
    id: 'sb2' as SandboxId,
    kind: 'kata',
    reachability: 'unreachable',
    reason: 'cannot connect to QMP socket (ECONNREFUSED)',
    vmState: 'unknown',
    monitorPath: '/run/vmplug/sandboxes/sb2/qmp.sock',
    discoveredAt: '2026-01-01T00:00:01.000Z',
    generation: 0,
  },
];

const catalog: SandboxCatalog = discoveryCatalog({
  list: () => discovered,
  get: (id) => discovered.find((d) => d.id === id),
});

describe('sandbox routes', () => {
  let app: VmplugServer | undefined;
  afterEach(async () => {
    await app?.close();
    app = undefined;
  });

  async function server(): Promise<{ app: VmplugServer; service: FakeAttachService }> {
    const service = new FakeAttachService();
    const { logger } = memoryLogger();
    const listVolumes = async (id: SandboxId): Promise<Attachment[]> =>
      id === 'sb1'
        ? [await service.get(id, 'vol1' as never, { signal: new AbortController().signal, log: logger })]
        : [];
    app = await buildServer({
      logger,
      attachService: service,
      readiness: () => ({ ready: true, checks: {} }),
      catalog,
      listVolumes,
    });
    await app.inject({
      method: 'PUT',
      url: '/v1/sandboxes/sb1/volumes/vol1',
      payload: {
        mode: 'rbd',
        source: {
          type: 'rbd',
          pool: 'rbd',
          image: 'img',
          monitors: ['127.0.0.1:6789'],
          user: 'u',
          key: cephxKey(),
        },
      },
    });
    return { app, service };
  }

  it('lists sandboxes with state, pod and volumes, never a key', async () => {
    const { app } = await server();
    const res = await app.inject({ method: 'GET', url: '/v1/sandboxes' });
    expect(res.statusCode).toBe(200);
    const body = res.json() as { items: (SandboxRecord & { volumes: Attachment[] })[] };
    expect(body.items.map((s) => [s.id, s.state])).toEqual([
      ['sb1', 'running'],
      ['sb2', 'unreachable'],
    ]);
    expect(body.items[0]).toMatchObject({
      kind: 'kata',
      hypervisorStatus: 'running',
      pod: { uid: 'uid-1', name: 'web-0', namespace: 'shop' },
      pid: 1234,
    });
    expect(body.items[0]?.volumes.map((v) => v.volumeId)).toEqual(['vol1']);
    expect(body.items[1]).toMatchObject({ reason: expect.stringContaining('ECONNREFUSED'), volumes: [] });
    expect(res.body).not.toContain(cephxKey());
  });

  it('filters by podUid', async () => {
    const { app } = await server();
    const one = await app.inject({ method: 'GET', url: '/v1/sandboxes?podUid=uid-1' });
    expect((one.json() as { items: { id: string }[] }).items.map((s) => s.id)).toEqual(['sb1']);
    const none = await app.inject({ method: 'GET', url: '/v1/sandboxes?podUid=other' });
    expect(none.json()).toEqual({ items: [] });
    const bad = await app.inject({ method: 'GET', url: '/v1/sandboxes?colour=red' });
    expect(bad.statusCode).toBe(400);
    expect(bad.headers['content-type']).toContain('application/problem+json');
  });

  it('shows one sandbox, 404 for an unknown one, 400 for a bad id', async () => {
    const { app } = await server();
    const res = await app.inject({ method: 'GET', url: '/v1/sandboxes/sb1' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({ id: 'sb1', state: 'running', volumes: [{ volumeId: 'vol1' }] });
    const missing = await app.inject({ method: 'GET', url: '/v1/sandboxes/nope' });
    expect(missing.statusCode).toBe(404);
    expect(missing.json()).toMatchObject({ code: 'NOT_FOUND', retryable: false });
    const bad = await app.inject({ method: 'GET', url: '/v1/sandboxes/a..b' });
    expect(bad.statusCode).toBe(400);
    expect(bad.json()).toMatchObject({ code: 'INVALID_ID', field: 'sandboxId' });
  });

  it('a server without a catalog lists nothing', async () => {
    const { logger } = memoryLogger();
    app = await buildServer({
      logger,
      attachService: new FakeAttachService(),
      readiness: () => ({ ready: true, checks: {} }),
    });
    const res = await app.inject({ method: 'GET', url: '/v1/sandboxes' });
    expect(res.json()).toEqual({ items: [] });
  });

  it('combineCatalogs lists Kata sandboxes and libvirt domains together', () => {
    const domains: SandboxCatalog = {
      list: () => [
        { id: 'vm-a', kind: 'libvirt', state: 'running', discoveredAt: '2026-01-01T00:00:00.000Z' },
      ],
      get: (id) =>
        id === 'vm-a'
          ? { id, kind: 'libvirt', state: 'running', discoveredAt: '2026-01-01T00:00:00.000Z' }
          : undefined,
    };
    const both = combineCatalogs(catalog, domains);
    expect(both.list().map((s) => `${s.kind}:${s.id}`)).toEqual(['kata:sb1', 'kata:sb2', 'libvirt:vm-a']);
    expect(both.get('vm-a' as SandboxId)?.kind).toBe('libvirt');
    expect(both.get('sb2' as SandboxId)?.state).toBe('unreachable');
    expect(both.get('zz' as SandboxId)).toBeUndefined();
  });
});
