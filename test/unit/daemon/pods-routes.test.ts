import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ValidationError } from '../../../core/errors.js';
import { buildServer, type VmplugServer } from '../../../daemon/http/server.js';
import { PodVolumeEngine } from '../../../storage/pod/engine.js';
import { PodJournal } from '../../../storage/pod/journal.js';
import { FakeAttachService, memoryLogger } from './helpers.js';

// The pod routes over HTTP with the real engine on temp directories: exact status codes, problem+json
// naming the field, and nothing left behind by a refused request.

const UID = '5f0c3b1e-9d2a-4c7b-8e6f-1a2b3c4d5e6f';
const OTHER = '0b7e9a3c-2f4d-4e1a-9c8b-7d6e5f4a3b2c';
const TARGET = `/var/lib/kubelet/pods/${UID}/volumes/kubernetes.io~csi/pvc-1/mount`;
const block = { mode: 'block', source: { type: 'hostDevice', path: '/dev/loop3' }, targetPath: TARGET };

describe('pod volume routes', () => {
  let dir: string;
  let app: VmplugServer;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmp-podr-'));
    const quiet = memoryLogger().logger;
    const engine = new PodVolumeEngine({
      journal: new PodJournal({ stateDir: dir, logger: quiet }),
      fingerprintKey: Buffer.alloc(32, 1),
      directVolumeRoot: join(dir, 'dv'),
      logger: quiet,
      checkBlockDevice: async (path, field) => {
        if (path !== '/dev/loop3') throw new ValidationError(field, `${path} is not a block device`);
      },
    });
    app = await buildServer({
      logger: quiet,
      attachService: new FakeAttachService(),
      readiness: () => ({ ready: true, checks: {} }),
      pods: { service: engine, kubeletRoot: '/var/lib/kubelet' },
    });
  });
  afterEach(async () => {
    await app.close();
    await rm(dir, { recursive: true, force: true });
  });

  const call = async (method: 'PUT' | 'GET' | 'DELETE' | 'POST', url: string, payload?: unknown) => {
    const res = await app.inject({
      method,
      url,
      ...(payload !== undefined ? { payload: payload as object } : {}),
    });
    return {
      status: res.statusCode,
      type: String(res.headers['content-type']),
      body: res.body === '' ? undefined : (res.json() as Record<string, unknown>),
    };
  };

  it('POST .../resize: 404 unknown, 409 for block mode, a bad size named as sizeBytes (400, as the sandbox route)', async () => {
    const url = `/v1/pods/${UID}/volumes/vol-1`;
    expect((await call('POST', `${url}/resize`, { sizeBytes: 1 << 30 })).status).toBe(404);
    expect((await call('PUT', url, block)).status).toBe(201);
    const refused = await call('POST', `${url}/resize`, { sizeBytes: 1 << 30 });
    expect([refused.status, refused.type.split(';')[0]]).toEqual([409, 'application/problem+json']);
    expect(String(refused.body?.detail)).toMatch(/block-mode/);
    const bad = await call('POST', `${url}/resize`, { sizeBytes: 0 });
    expect([bad.status, bad.body?.field]).toEqual([400, 'sizeBytes']);
    expect((await call('DELETE', url)).status).toBe(204);
  });

  it('PUT 201, PUT again 200, GET, list, DELETE 204, DELETE again 204, GET 404', async () => {
    const url = `/v1/pods/${UID.toUpperCase()}/volumes/vol-1`;
    const first = await call('PUT', url, block);
    expect(first.status).toBe(201);
    expect(first.body).toMatchObject({
      podUid: UID,
      state: 'Published',
      device: '/dev/loop3',
      fsType: 'ext4',
    });
    expect((await call('PUT', url, block)).status).toBe(200);
    expect((await call('PUT', url, { ...block, readOnly: true })).status).toBe(409);
    expect((await call('GET', url)).body).toMatchObject({ state: 'Published' });
    const list = await call('GET', `/v1/pods/${UID}/volumes`);
    expect(list.body?.items).toHaveLength(1);
    expect((await call('DELETE', url)).status).toBe(204);
    expect((await call('DELETE', url)).status).toBe(204);
    expect((await call('GET', url)).status).toBe(404);
  });

  it.each([
    ['a podUid that is not a UUID', 'not-a-uuid', block, 400, 'podUid'],
    ['a bad volume id', UID, block, 400, 'volumeId'],
    [
      'a targetPath of another pod',
      UID,
      { ...block, targetPath: TARGET.replace(UID, OTHER) },
      422,
      'targetPath',
    ],
    [
      'a targetPath outside the kubelet root',
      UID,
      { ...block, targetPath: `/tmp/pods/${UID}/volumes/kubernetes.io~csi/p/mount` },
      422,
      'targetPath',
    ],
    ['an fsType not allowed', UID, { ...block, fsType: 'vfat' }, 422, 'fsType'],
    ['a bad mount option', UID, { ...block, mountOptions: ['a,b'] }, 422, 'mountOptions[0]'],
    [
      'a device that is not there',
      UID,
      { ...block, source: { type: 'hostDevice', path: '/dev/loop9' } },
      422,
      'source.path',
    ],
    ['an unknown field', UID, { ...block, bus: 'scsi' }, 422, 'bus'],
  ])('refuses %s as problem+json naming the field, leaving nothing', async (_n, uid, body, status, field) => {
    const vol = field === 'volumeId' ? '..bad' : 'vol-1';
    const res = await call('PUT', `/v1/pods/${uid}/volumes/${vol}`, body);
    expect(res.status).toBe(status);
    expect(res.type).toContain('application/problem+json');
    expect(res.body?.field).toBe(field);
    expect(await readdir(dir)).toEqual([]);
  });
});
