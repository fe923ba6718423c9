import { afterEach, describe, expect, it } from 'vitest';
import type { SandboxCatalog } from '../../../core/sandbox.js';
import { buildServer, type VmplugServer } from '../../../daemon/http/server.js';
import { FakeAttachService, memoryLogger } from './helpers.js';

// The `pod` of PUT /v1/sandboxes/{sandboxId}/volumes/{volumeId} over HTTP: answered in the
// Attachment, rejected naming the field, and no part of the spec a retry is compared on.

const UID = '5f0c3b1e-9d2a-4c7b-8e6f-1a2b3c4d5e6f';
const catalog: SandboxCatalog = { list: () => [], get: () => undefined };
const block = { mode: 'block', source: { type: 'hostDevice', path: '/dev/loop3' } };

describe('attach route: pod', () => {
  let app: VmplugServer | undefined;
  afterEach(async () => {
    await app?.close();
    app = undefined;
  });

  async function put(payload: Record<string, unknown>) {
    app ??= await buildServer({
      logger: memoryLogger().logger,
      attachService: new FakeAttachService(),
      readiness: () => ({ ready: true, checks: {} }),
      catalog,
      listVolumes: async () => [],
    });
    const res = await app.inject({ method: 'PUT', url: '/v1/sandboxes/sb1/volumes/vol1', payload });
    return { status: res.statusCode, body: res.json() as Record<string, unknown> };
  }

  it('shows the pod in the Attachment; a retry without it is the same attach (200, not 409)', async () => {
    const pod = { uid: UID, name: 'web-0', namespace: 'shop' };
    const first = await put({ ...block, pod });
    expect(first.status).toBe(201);
    expect(first.body.pod).toEqual(pod);
    const again = await put(block);
    expect(again.status).toBe(200);
    expect(again.body.pod).toEqual(pod);
  });

  it.each([
    [{ uid: 'not-a-uuid' }, 'pod.uid'],
    [{ name: 'web-0' }, 'pod.uid'],
    [{ uid: UID, name: 'Web_0' }, 'pod.name'],
    [{ uid: UID, name: 'a'.repeat(254) }, 'pod.name'],
    [{ uid: UID, namespace: 'a.b' }, 'pod.namespace'],
  ])('refuses pod %j naming %s', async (pod, field) => {
    const res = await put({ ...block, pod });
    expect(res.status).toBe(422);
    expect(JSON.stringify(res.body)).toContain(field);
  });
});
