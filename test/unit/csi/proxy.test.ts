import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import {
  decode,
  encode,
  type NodePublishVolumeRequest,
  type NodeStageVolumeRequest,
} from '../../../csi/messages.js';
import { splitFields } from '../../../csi/wire.js';
import { type Bed, capabilities, POD_UID, startBed, targetPath } from './harness.js';

// A field number no CSI version uses: it must cross vmplug-csi untouched.
const UNKNOWN_FIELD = Buffer.from([0xfa, 0x06, 0x05, ...Buffer.from('extra')]); // field 111, "extra"
type Loose<T> = { [K in keyof T]?: T[K] | undefined };
const GiB = 2 ** 30;
const KEY = 'QVFCdGVzdGtleXRlc3RrZXl0ZXN0a2V5dGVzdGtleQ==';

const mountCap = (fsType = 'ext4', mode = 1) => ({
  mount: { fsType, mountFlags: ['noatime'] },
  accessMode: { mode },
});

const stageReq = (over: Loose<NodeStageVolumeRequest> = {}) =>
  encode('csi.v1.NodeStageVolumeRequest', {
    volumeId: 'vol-1',
    stagingTargetPath: '/var/lib/kubelet/plugins/kubernetes.io/csi/rbd.csi.ceph.com/abc/globalmount',
    volumeCapability: mountCap(),
    secrets: { userID: 'vmplug', userKey: KEY },
    volumeContext: { 'vmplug.io/direct-mode': 'rbd', clusterID: 'ceph1', pool: 'rbd', imageName: 'img-1' },
    ...over,
  } as NodeStageVolumeRequest);

const publishReq = (over: Loose<NodePublishVolumeRequest> = {}) =>
  encode('csi.v1.NodePublishVolumeRequest', {
    volumeId: 'vol-1',
    stagingTargetPath: '/var/lib/kubelet/plugins/kubernetes.io/csi/rbd.csi.ceph.com/abc/globalmount',
    targetPath: targetPath('pv-1'),
    volumeCapability: mountCap(),
    volumeContext: { 'vmplug.io/direct-mode': 'rbd', clusterID: 'ceph1', pool: 'rbd', imageName: 'img-1' },
    ...over,
  } as NodePublishVolumeRequest);

const unpublishReq = (volumeId = 'vol-1', path = targetPath('pv-1')) =>
  encode('csi.v1.NodeUnpublishVolumeRequest', { volumeId, targetPath: path });

async function code(p: Promise<unknown>): Promise<{ code: number; details: string }> {
  try {
    await p;
  } catch (err) {
    const e = err as grpc.ServiceError;
    return { code: e.code, details: e.details };
  }
  throw new Error('the call succeeded');
}

let bed: Bed;
afterEach(async () => {
  await bed?.close();
});

describe('vmplug-csi forwards what is not in direct mode', () => {
  it('passes requests and answers byte for byte, unknown fields included', async () => {
    bed = await startBed();
    const req = Buffer.concat([
      publishReq({
        volumeContext: { clusterID: 'ceph1', pool: 'rbd', imageName: 'img-2' },
        volumeId: 'vol-2',
      }),
      UNKNOWN_FIELD,
    ]);
    const answer = Buffer.concat([UNKNOWN_FIELD]);
    bed.plugin.answer = () => answer;
    const md = new grpc.Metadata();
    md.set('x-trace', 'abc');
    const got = await bed.call('NodePublishVolume', req, md);
    expect(got.equals(answer)).toBe(true);
    expect(bed.plugin.paths()).toEqual(['NodePublishVolume']);
    expect(bed.plugin.calls[0]!.request.equals(req)).toBe(true);
    expect(bed.plugin.calls[0]!.metadata.get('x-trace')).toEqual(['abc']);
    expect(bed.vmplugd.calls).toEqual([]);
  });

  it('stages, unstages and unpublishes a forwarded volume through the real plugin only', async () => {
    bed = await startBed();
    const stage = stageReq({ volumeId: 'vol-3', volumeContext: { clusterID: 'ceph1', pool: 'rbd' } });
    await bed.call('NodeStageVolume', stage);
    const unstage = encode('csi.v1.NodeUnstageVolumeRequest', { volumeId: 'vol-3', stagingTargetPath: '/s' });
    await bed.call('NodeUnstageVolume', unstage);
    // Not published by vmplug-csi and not under a pod path: straight to the real plugin.
    await bed.call('NodeUnpublishVolume', unpublishReq('vol-9', '/elsewhere'));
    expect(bed.plugin.paths()).toEqual([
      'NodeGetCapabilities',
      'NodeStageVolume',
      'NodeUnstageVolume',
      'NodeUnpublishVolume',
    ]);
    expect(bed.plugin.calls[1]!.request.equals(stage)).toBe(true);
    expect(bed.proxy.credentialsHeld).toBe(0);
  });

  it("returns the real plugin's error status unchanged", async () => {
    bed = await startBed();
    bed.plugin.answer = () => ({
      code: grpc.status.NOT_FOUND,
      details: 'no such image',
      metadata: new grpc.Metadata(),
    });
    const err = await code(
      bed.call('NodePublishVolume', publishReq({ volumeContext: {}, volumeId: 'vol-4' })),
    );
    expect(err).toEqual({ code: grpc.status.NOT_FOUND, details: 'no such image' });
  });

  it('answers UNAVAILABLE when the real plugin is not there', async () => {
    bed = await startBed();
    await bed.plugin.close();
    const err = await code(bed.call('NodeGetInfo', Buffer.alloc(0)));
    expect(err.code).toBe(grpc.status.UNAVAILABLE);
  });
});

describe('identity and capabilities', () => {
  it('adds STAGE_UNSTAGE_VOLUME when the real plugin lacks it, keeps everything else', async () => {
    bed = await startBed();
    bed.plugin.answer = () => Buffer.concat([capabilities([2]), UNKNOWN_FIELD]);
    const got = await bed.call('NodeGetCapabilities', Buffer.alloc(0));
    const types = splitFields(got)
      .filter((f) => f.number === 1)
      .map((f) => decode('csi.v1.NodeServiceCapability', f.value).rpc.type);
    expect(types).toEqual([2, 1]);
    expect(got.includes(UNKNOWN_FIELD)).toBe(true);
  });

  it('keeps the capabilities unchanged when the real plugin stages', async () => {
    bed = await startBed();
    const caps = capabilities([1, 2, 3]);
    bed.plugin.answer = () => caps;
    expect((await bed.call('NodeGetCapabilities', Buffer.alloc(0))).equals(caps)).toBe(true);
  });

  it('answers NodeStage itself for a real plugin that does not stage', async () => {
    bed = await startBed();
    bed.plugin.answer = (p) => (p.endsWith('NodeGetCapabilities') ? capabilities([2]) : Buffer.alloc(0));
    await bed.call('NodeStageVolume', stageReq({ volumeContext: {}, volumeId: 'vol-5' }));
    expect(bed.plugin.paths()).toEqual(['NodeGetCapabilities']);
  });

  it("adds vmplug-csi to GetPluginInfo's manifest", async () => {
    bed = await startBed({ version: '0.1.0' });
    const info = Buffer.from([0x0a, 0x10, ...Buffer.from('rbd.csi.ceph.com')]);
    bed.plugin.answer = () => info;
    const got = await bed.call('GetPluginInfo', Buffer.alloc(0));
    expect(got.subarray(0, info.length).equals(info)).toBe(true);
    const manifest = splitFields(got).filter((f) => f.number === 3);
    expect(decode('csi.v1.StringEntry', manifest[0]!.value)).toEqual({
      key: 'vmplug.io/csi-proxy',
      value: '0.1.0',
    });
  });
});

describe('direct mode: rbd', () => {
  it('keeps the credentials at NodeStage and publishes through vmplugd with the §5b body', async () => {
    bed = await startBed();
    await bed.call('NodeStageVolume', stageReq());
    expect(bed.plugin.calls).toEqual([]);
    expect(bed.proxy.credentialsHeld).toBe(1);
    await bed.call(
      'NodePublishVolume',
      publishReq({
        volumeCapability: mountCap('xfs', 2),
        volumeContext: {
          'vmplug.io/direct-mode': 'rbd',
          'csi.storage.k8s.io/pod.name': 'web-0',
          'csi.storage.k8s.io/pod.namespace': 'shop',
        },
      }),
    );
    expect(bed.vmplugd.calls).toEqual([
      {
        method: 'PUT',
        url: `/v1/pods/${POD_UID}/volumes/vol-1`,
        body: {
          mode: 'rbd',
          source: {
            type: 'rbd',
            pool: 'rbd',
            image: 'img-1',
            monitors: ['127.0.0.1:6789'],
            user: 'vmplug',
            key: KEY,
          },
          targetPath: targetPath('pv-1'),
          fsType: 'xfs',
          readOnly: true,
          mountOptions: ['noatime'],
          pod: { name: 'web-0', namespace: 'shop' },
        },
      },
    ]);
    await bed.call('NodeUnpublishVolume', unpublishReq());
    await bed.call(
      'NodeUnstageVolume',
      encode('csi.v1.NodeUnstageVolumeRequest', { volumeId: 'vol-1', stagingTargetPath: '/s' }),
    );
    expect(bed.vmplugd.calls.map((c) => `${c.method} ${c.url}`).slice(1)).toEqual([
      `DELETE /v1/pods/${POD_UID}/volumes/vol-1`,
    ]);
    expect(bed.plugin.calls).toEqual([]);
    expect(bed.proxy.credentialsHeld).toBe(0);
    expect(bed.madeDirs).toEqual([targetPath('pv-1')]);
  });

  it('takes monitors from volume_context and the rados namespace, static volumes by id', async () => {
    bed = await startBed();
    await bed.call(
      'NodeStageVolume',
      stageReq({
        volumeId: 'img-static',
        volumeContext: {
          'vmplug.io/direct-mode': 'rbd',
          monitors: '10.0.0.1:6789, 10.0.0.2:6789',
          pool: 'p',
          radosNamespace: 'ns',
          staticVolume: 'true',
        },
      }),
    );
    await bed.call(
      'NodePublishVolume',
      publishReq({ volumeId: 'img-static', volumeCapability: mountCap('') }),
    );
    const body = bed.vmplugd.calls[0]!.body as { source: unknown; fsType: string; readOnly: boolean };
    expect(body.source).toEqual({
      type: 'rbd',
      pool: 'p',
      namespace: 'ns',
      image: 'img-static',
      monitors: ['10.0.0.1:6789', '10.0.0.2:6789'],
      user: 'vmplug',
      key: KEY,
    });
    expect(body.fsType).toBe('ext4');
    expect(body.readOnly).toBe(false);
  });

  it('after a restart: a published volume is answered from vmplugd, an unpublished one is FAILED_PRECONDITION', async () => {
    bed = await startBed();
    await bed.call('NodeStageVolume', stageReq());
    await bed.restart();
    expect(bed.proxy.credentialsHeld).toBe(0);
    const err = await code(bed.call('NodePublishVolume', publishReq()));
    expect(err.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(err.details).toContain('in memory only');
    expect(err.details).not.toContain(KEY);

    bed.vmplugd.respond = (c) =>
      c.method === 'GET'
        ? { status: 200, body: { state: 'Consumed', targetPath: targetPath('pv-1') } }
        : { status: 204 };
    await bed.call('NodePublishVolume', publishReq());
    // Unpublish after the restart: vmplugd knows the volume, so it is vmplug's to remove.
    await bed.restart();
    await bed.call('NodeUnpublishVolume', unpublishReq());
    expect(bed.vmplugd.calls.map((c) => c.method)).toEqual(['GET', 'GET', 'GET', 'DELETE']);
    expect(bed.plugin.paths()).toEqual([]);
  });

  it('an unknown volume under a pod path that vmplugd does not know goes to the real plugin', async () => {
    bed = await startBed();
    await bed.call('NodeUnpublishVolume', unpublishReq('vol-x'));
    expect(bed.vmplugd.calls.map((c) => c.method)).toEqual(['GET']);
    expect(bed.plugin.paths()).toEqual(['NodeUnpublishVolume']);
  });

  it('reads the PVC annotation through the lookup port when the StorageClass says nothing', async () => {
    const asked: unknown[] = [];
    bed = await startBed({
      lookup: {
        directModeOf: async (ref) => {
          asked.push(ref);
          return ref.volumeId === 'vol-a' ? 'rbd' : undefined;
        },
      },
    });
    const ctx = { clusterID: 'ceph1', pool: 'rbd', imageName: 'img-a' };
    await bed.call('NodeStageVolume', stageReq({ volumeId: 'vol-a', volumeContext: ctx }));
    await bed.call('NodePublishVolume', publishReq({ volumeId: 'vol-a', volumeContext: ctx }));
    await bed.call(
      'NodePublishVolume',
      publishReq({ volumeId: 'vol-b', volumeContext: ctx, targetPath: targetPath('pv-b') }),
    );
    expect(asked).toEqual([
      { volumeId: 'vol-a', driver: 'rbd.csi.ceph.com' },
      { volumeId: 'vol-b', driver: 'rbd.csi.ceph.com', pvName: 'pv-b' },
    ]);
    expect(bed.vmplugd.calls.map((c) => c.method)).toEqual(['PUT']);
    expect(bed.plugin.paths()).toEqual(['NodePublishVolume']);
  });

  it('answers UNAVAILABLE when the annotation cannot be read (never forwards a maybe-direct volume)', async () => {
    bed = await startBed({
      lookup: {
        directModeOf: async () => {
          throw new Error('apiserver down');
        },
      },
    });
    const err = await code(bed.call('NodeStageVolume', stageReq({ volumeContext: { pool: 'rbd' } })));
    expect(err.code).toBe(grpc.status.UNAVAILABLE);
    expect(bed.plugin.calls).toEqual([]);
  });
});

describe('direct mode: block', () => {
  it('stages through the real plugin as a block volume and publishes the host device', async () => {
    const asked: string[] = [];
    bed = await startBed({
      stagedDeviceOf: async (staging, id) => {
        asked.push(`${staging}|${id}`);
        return '/dev/rbd3';
      },
    });
    const ctx = { 'vmplug.io/direct-mode': 'block', clusterID: 'ceph1', pool: 'rbd' };
    const stage = Buffer.concat([stageReq({ volumeContext: ctx }), UNKNOWN_FIELD]);
    await bed.call('NodeStageVolume', stage);
    const forwarded = bed.plugin.calls.find((c) => c.path.endsWith('NodeStageVolume'))!.request;
    const r = decode('csi.v1.NodeStageVolumeRequest', forwarded);
    expect(r.volumeCapability).toEqual({ block: {}, accessMode: { mode: 1 } });
    expect(r.secrets).toEqual({ userID: 'vmplug', userKey: KEY });
    expect(forwarded.includes(UNKNOWN_FIELD)).toBe(true);
    expect(bed.proxy.credentialsHeld).toBe(0);

    await bed.call('NodePublishVolume', publishReq({ volumeContext: ctx }));
    expect(asked).toEqual([
      '/var/lib/kubelet/plugins/kubernetes.io/csi/rbd.csi.ceph.com/abc/globalmount|vol-1',
    ]);
    expect(bed.vmplugd.calls[0]!.body).toMatchObject({
      mode: 'block',
      source: { type: 'hostDevice', path: '/dev/rbd3' },
      fsType: 'ext4',
    });
    await bed.call('NodeUnpublishVolume', unpublishReq());
    await bed.call(
      'NodeUnstageVolume',
      encode('csi.v1.NodeUnstageVolumeRequest', { volumeId: 'vol-1', stagingTargetPath: '/s' }),
    );
    expect(bed.plugin.paths()).toEqual(['NodeStageVolume', 'NodeUnstageVolume']);
    expect(bed.vmplugd.calls.map((c) => c.method)).toEqual(['PUT', 'DELETE']);
  });
});

describe('stats and expand of direct volumes', () => {
  it('answers NodeGetVolumeStats from vmplugd and NodeExpandVolume through its resize', async () => {
    bed = await startBed();
    await bed.call('NodeStageVolume', stageReq());
    await bed.call('NodePublishVolume', publishReq());
    bed.vmplugd.respond = (c) =>
      c.method === 'GET'
        ? { status: 200, body: { state: 'Consumed', sizeBytes: GiB } }
        : { status: 200, body: { sizeBytes: 2 * GiB } };
    const stats = decode(
      'csi.v1.NodeGetVolumeStatsResponse',
      await bed.call(
        'NodeGetVolumeStats',
        encode('csi.v1.NodeGetVolumeStatsRequest', { volumeId: 'vol-1', volumePath: targetPath('pv-1') }),
      ),
    );
    expect(stats).toEqual({
      usage: [{ total: GiB, unit: 1 }],
      // abnormal=false is proto3's default: not on the wire.
      volumeCondition: { message: 'vmplugd: Consumed' },
    });
    const expanded = decode(
      'csi.v1.NodeExpandVolumeResponse',
      await bed.call(
        'NodeExpandVolume',
        encode('csi.v1.NodeExpandVolumeRequest', {
          volumeId: 'vol-1',
          volumePath: targetPath('pv-1'),
          capacityRange: { requiredBytes: 2 * GiB },
        }),
      ),
    );
    expect(expanded).toEqual({ capacityBytes: 2 * GiB });
    expect(bed.vmplugd.calls.slice(1).map((c) => [c.method, c.url, c.body])).toEqual([
      ['GET', `/v1/pods/${POD_UID}/volumes/vol-1`, undefined],
      ['POST', `/v1/pods/${POD_UID}/volumes/vol-1/resize`, { sizeBytes: 2 * GiB }],
    ]);
    expect(bed.plugin.calls).toEqual([]);
  });

  it('after a restart with vmplugd away: unpublish waits (UNAVAILABLE), stats go to the real plugin', async () => {
    bed = await startBed();
    await new Promise((r) => bed.vmplugd.server.close(r));
    const err = await code(bed.call('NodeUnpublishVolume', unpublishReq('vol-z')));
    expect(err.code).toBe(grpc.status.UNAVAILABLE);
    await bed.call(
      'NodeGetVolumeStats',
      encode('csi.v1.NodeGetVolumeStatsRequest', { volumeId: 'vol-z', volumePath: targetPath('pv-1') }),
    );
    expect(bed.plugin.paths()).toEqual(['NodeGetVolumeStats']);
    bed.vmplugd.server.listen(`${bed.dir}/vmplug.sock`);
  });

  it('says FAILED_PRECONDITION when vmplugd has no pod resize route', async () => {
    bed = await startBed();
    await bed.call('NodeStageVolume', stageReq());
    await bed.call('NodePublishVolume', publishReq());
    bed.vmplugd.respond = (c) =>
      c.method === 'GET'
        ? { status: 200, body: { state: 'Consumed' } }
        : { status: 404, body: { code: 'ROUTE_NOT_FOUND', detail: 'Route POST:/v1/pods/x not found' } };
    const err = await code(
      bed.call(
        'NodeExpandVolume',
        encode('csi.v1.NodeExpandVolumeRequest', {
          volumeId: 'vol-1',
          volumePath: targetPath('pv-1'),
          capacityRange: { requiredBytes: GiB },
        }),
      ),
    );
    expect(err.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(err.details).toContain('does not serve the call');
  });
});

describe('bad input gets the CSI status code the spec names', () => {
  const { INVALID_ARGUMENT, FAILED_PRECONDITION, ALREADY_EXISTS, UNAVAILABLE, NOT_FOUND, DEADLINE_EXCEEDED } =
    grpc.status;
  const cases: {
    name: string;
    method: string;
    req: () => Buffer;
    code: number;
    field?: string;
    setup?: (b: Bed) => Promise<void>;
  }[] = [
    {
      name: 'a request that is not the message',
      method: 'NodePublishVolume',
      req: () => Buffer.from([0x22, 0x7f, 0x01]),
      code: INVALID_ARGUMENT,
      field: 'not a valid csi.v1.NodePublishVolumeRequest',
    },
    {
      name: 'stage without volume_id',
      method: 'NodeStageVolume',
      req: () => stageReq({ volumeId: '' }),
      code: INVALID_ARGUMENT,
      field: 'volume_id',
    },
    {
      name: 'stage without staging path',
      method: 'NodeStageVolume',
      req: () => stageReq({ stagingTargetPath: '' }),
      code: INVALID_ARGUMENT,
      field: 'staging_target_path',
    },
    {
      name: 'stage without capability',
      method: 'NodeStageVolume',
      req: () => stageReq({ volumeCapability: undefined }),
      code: INVALID_ARGUMENT,
      field: 'volume_capability',
    },
    {
      name: 'stage of a raw block volume',
      method: 'NodeStageVolume',
      req: () => stageReq({ volumeCapability: { block: {}, accessMode: { mode: 1 } } }),
      code: INVALID_ARGUMENT,
      field: 'volume_capability',
    },
    {
      name: 'rbd without secret',
      method: 'NodeStageVolume',
      req: () => stageReq({ secrets: {} }),
      code: INVALID_ARGUMENT,
      field: 'secrets',
    },
    {
      name: 'rbd without key',
      method: 'NodeStageVolume',
      req: () => stageReq({ secrets: { userID: 'u' } }),
      code: INVALID_ARGUMENT,
      field: 'secrets',
    },
    {
      name: 'rbd without pool',
      method: 'NodeStageVolume',
      req: () =>
        stageReq({ volumeContext: { 'vmplug.io/direct-mode': 'rbd', clusterID: 'ceph1', imageName: 'i' } }),
      code: INVALID_ARGUMENT,
      field: 'pool',
    },
    {
      name: 'rbd without image',
      method: 'NodeStageVolume',
      req: () =>
        stageReq({ volumeContext: { 'vmplug.io/direct-mode': 'rbd', clusterID: 'ceph1', pool: 'p' } }),
      code: INVALID_ARGUMENT,
      field: 'imageName',
    },
    {
      name: 'rbd with unknown clusterID',
      method: 'NodeStageVolume',
      req: () =>
        stageReq({
          volumeContext: { 'vmplug.io/direct-mode': 'rbd', clusterID: 'other', pool: 'p', imageName: 'i' },
        }),
      code: FAILED_PRECONDITION,
      field: 'other',
    },
    {
      name: 'bad direct-mode value',
      method: 'NodeStageVolume',
      req: () => stageReq({ volumeContext: { 'vmplug.io/direct-mode': 'nbd' } }),
      code: INVALID_ARGUMENT,
      field: 'vmplug.io/direct-mode',
    },
    {
      name: 'volume id vmplug cannot take',
      method: 'NodeStageVolume',
      req: () => stageReq({ volumeId: 'pool/image' }),
      code: INVALID_ARGUMENT,
      field: 'volume_id',
    },
    {
      name: 'publish without target_path',
      method: 'NodePublishVolume',
      req: () => publishReq({ targetPath: '' }),
      code: INVALID_ARGUMENT,
      field: 'target_path',
    },
    {
      name: 'publish without volume_id',
      method: 'NodePublishVolume',
      req: () => publishReq({ volumeId: '' }),
      code: INVALID_ARGUMENT,
      field: 'volume_id',
    },
    {
      name: 'publish without capability',
      method: 'NodePublishVolume',
      req: () => publishReq({ volumeCapability: undefined }),
      code: INVALID_ARGUMENT,
      field: 'volume_capability',
    },
    {
      name: 'publish of an unknown staged volume',
      method: 'NodePublishVolume',
      req: () => publishReq(),
      code: FAILED_PRECONDITION,
      field: 'NodeStage',
    },
    {
      name: 'publish outside a pod path',
      method: 'NodePublishVolume',
      req: () => publishReq({ targetPath: '/mnt/x' }),
      code: INVALID_ARGUMENT,
      field: 'target_path',
      setup: (b) => b.call('NodeStageVolume', stageReq()).then(() => {}),
    },
    {
      name: 'publish of a block volume without staging path',
      method: 'NodePublishVolume',
      req: () => publishReq({ stagingTargetPath: '', volumeContext: { 'vmplug.io/direct-mode': 'block' } }),
      code: FAILED_PRECONDITION,
      field: 'staging_target_path',
    },
    {
      name: 'unpublish without target_path',
      method: 'NodeUnpublishVolume',
      req: () => unpublishReq('vol-1', ''),
      code: INVALID_ARGUMENT,
      field: 'target_path',
    },
    {
      name: 'unpublish without volume_id',
      method: 'NodeUnpublishVolume',
      req: () => unpublishReq(''),
      code: INVALID_ARGUMENT,
      field: 'volume_id',
    },
    {
      name: 'unstage without volume_id',
      method: 'NodeUnstageVolume',
      req: () => encode('csi.v1.NodeUnstageVolumeRequest', { stagingTargetPath: '/s' }),
      code: INVALID_ARGUMENT,
      field: 'volume_id',
    },
    {
      name: 'stats without volume_path',
      method: 'NodeGetVolumeStats',
      req: () => encode('csi.v1.NodeGetVolumeStatsRequest', { volumeId: 'v' }),
      code: INVALID_ARGUMENT,
      field: 'volume_path',
    },
    {
      name: 'expand without volume_id',
      method: 'NodeExpandVolume',
      req: () => encode('csi.v1.NodeExpandVolumeRequest', { volumePath: '/p' }),
      code: INVALID_ARGUMENT,
      field: 'volume_id',
    },
    {
      name: 'stats of a direct volume vmplugd lost',
      method: 'NodeGetVolumeStats',
      req: () =>
        encode('csi.v1.NodeGetVolumeStatsRequest', { volumeId: 'vol-1', volumePath: targetPath('pv-1') }),
      code: NOT_FOUND,
      field: 'not published',
      setup: async (b) => {
        await b.call('NodeStageVolume', stageReq());
        await b.call('NodePublishVolume', publishReq());
      },
    },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      bed = await startBed();
      await c.setup?.(bed);
      const err = await code(bed.call(c.method, c.req()));
      expect(err.code).toBe(c.code);
      if (c.field) expect(err.details).toContain(c.field);
      expect(err.details).not.toContain(KEY);
      expect(bed.plugin.paths().filter((p) => p !== 'NodeGetCapabilities')).toEqual([]);
    });
  }

  const apiErrors: { name: string; status: number; body?: unknown; code: number }[] = [
    {
      name: '409 SPEC_CONFLICT is ALREADY_EXISTS',
      status: 409,
      body: { code: 'SPEC_CONFLICT', detail: 'another spec' },
      code: ALREADY_EXISTS,
    },
    {
      name: '422 INVALID_FIELD is INVALID_ARGUMENT',
      status: 422,
      body: { code: 'INVALID_FIELD', detail: 'targetPath: no', field: 'targetPath' },
      code: INVALID_ARGUMENT,
    },
    {
      name: '503 CEPH_UNREACHABLE is UNAVAILABLE',
      status: 503,
      body: { code: 'CEPH_UNREACHABLE', detail: 'no monitor' },
      code: UNAVAILABLE,
    },
    {
      name: 'retryable BACKEND_FAILED is UNAVAILABLE',
      status: 502,
      body: { code: 'BACKEND_FAILED', detail: 'x', retryable: true },
      code: UNAVAILABLE,
    },
    {
      name: 'final BACKEND_FAILED is INTERNAL',
      status: 502,
      body: { code: 'BACKEND_FAILED', detail: 'x' },
      code: grpc.status.INTERNAL,
    },
    {
      name: '404 NOT_FOUND is NOT_FOUND',
      status: 404,
      body: { code: 'NOT_FOUND', detail: 'x' },
      code: NOT_FOUND,
    },
  ];
  for (const c of apiErrors) {
    it(`vmplugd ${c.name}`, async () => {
      bed = await startBed();
      await bed.call('NodeStageVolume', stageReq());
      bed.vmplugd.respond = () => ({ status: c.status, body: c.body });
      const err = await code(bed.call('NodePublishVolume', publishReq()));
      expect(err.code).toBe(c.code);
      expect(err.details).toContain('vmplugd');
    });
  }

  it('vmplugd not running is UNAVAILABLE', async () => {
    bed = await startBed();
    await bed.call('NodeStageVolume', stageReq());
    await new Promise((r) => bed.vmplugd.server.close(r));
    const err = await code(bed.call('NodePublishVolume', publishReq()));
    expect(err.code).toBe(UNAVAILABLE);
    bed.vmplugd.server.listen(`${bed.dir}/vmplug.sock`);
    void DEADLINE_EXCEEDED;
  });
});
