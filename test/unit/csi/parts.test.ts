import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { monitorsFromFile, monitorsIn } from '../../../csi/ceph-clusters.js';
import { parseTargetPath, podOf, pvFromStagingPath } from '../../../csi/direct-mode.js';
import { kubeLookup } from '../../../csi/lookup.js';
import { encode } from '../../../csi/messages.js';
import { asBlockStage } from '../../../csi/node.js';
import { splitDev, stagedDeviceOf } from '../../../csi/staged-device.js';
import { CsiError } from '../../../csi/status.js';
import { encodeVarint, joinFields, splitFields, WireFormatError } from '../../../csi/wire.js';

const UID = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';

describe('target paths', () => {
  it.each([
    [`/var/lib/kubelet/pods/${UID}/volumes/kubernetes.io~csi/pv-1/mount`, { podUid: UID, pvName: 'pv-1' }],
    [`/var/lib/kubelet/pods/${UID}/volumes/kubernetes.io~csi/pv-1/mount/x`, undefined],
    [`/var/lib/kubelet/pods/${UID}/volumes/kubernetes.io~empty-dir/pv-1/mount`, undefined],
    [`/var/lib/kubelet/pods/not-a-uid/volumes/kubernetes.io~csi/pv-1/mount`, undefined],
    [`/var/lib/kubelet/pods/${UID}/volumes/kubernetes.io~csi/../mount`, undefined],
    [`/other/pods/${UID}/volumes/kubernetes.io~csi/pv-1/mount`, undefined],
  ])('%s', (path, want) => {
    expect(parseTargetPath(path, '/var/lib/kubelet/')).toEqual(want);
  });

  it('reads the PV name of a pre-1.24 staging path only', () => {
    const k = '/var/lib/kubelet';
    expect(pvFromStagingPath(`${k}/plugins/kubernetes.io/csi/pv/pv-1/globalmount`, k)).toBe('pv-1');
    expect(
      pvFromStagingPath(`${k}/plugins/kubernetes.io/csi/rbd.csi.ceph.com/ab12/globalmount`, k),
    ).toBeUndefined();
    expect(pvFromStagingPath(`${k}/plugins/kubernetes.io/csi/pv/../globalmount`, k)).toBeUndefined();
  });

  it('prefers the pod uid of volume_context (podInfoOnMount) and keeps the pod name', () => {
    const ctx = {
      'csi.storage.k8s.io/pod.uid': UID,
      'csi.storage.k8s.io/pod.name': 'web-0',
      'csi.storage.k8s.io/pod.namespace': 'shop',
    };
    expect(podOf('/anywhere', ctx, '/var/lib/kubelet')).toEqual({
      podUid: UID,
      pod: { name: 'web-0', namespace: 'shop' },
    });
    expect(() => podOf('/anywhere', { 'csi.storage.k8s.io/pod.uid': 'x' }, '/k')).toThrow(CsiError);
  });
});

describe('wire edits keep what they do not touch', () => {
  it('splits and joins back to the same bytes, all wire types', () => {
    const msg = Buffer.concat([
      Buffer.from([0x08, 0x96, 0x01]), // 1: varint 150
      Buffer.from([0x11, 1, 2, 3, 4, 5, 6, 7, 8]), // 2: fixed64
      Buffer.from([0x1a, 0x03, 0x61, 0x62, 0x63]), // 3: "abc"
      Buffer.from([0x25, 1, 2, 3, 4]), // 4: fixed32
    ]);
    const fields = splitFields(msg);
    expect(fields.map((f) => [f.number, f.wireType])).toEqual([
      [1, 0],
      [2, 1],
      [3, 2],
      [4, 5],
    ]);
    expect(fields[2]!.value.toString()).toBe('abc');
    expect(joinFields(fields).equals(msg)).toBe(true);
    expect(encodeVarint(300).equals(Buffer.from([0xac, 0x02]))).toBe(true);
  });

  it('refuses truncated input', () => {
    expect(() => splitFields(Buffer.from([0x1a, 0x05, 0x61]))).toThrow(WireFormatError);
    expect(() => splitFields(Buffer.from([0x08]))).toThrow(WireFormatError);
  });

  it('turns a mount stage into a block stage, unknown fields of the capability included', () => {
    const cap = Buffer.concat([
      encode('csi.v1.VolumeCapability', { mount: { fsType: 'ext4' }, accessMode: { mode: 1 } }),
      Buffer.from([0xfa, 0x06, 0x01, 0x78]),
    ]);
    const req = Buffer.concat([
      encode('csi.v1.NodeStageVolumeRequest', { volumeId: 'v' }),
      Buffer.from([0x22, cap.length]),
      cap,
    ]);
    const out = splitFields(asBlockStage(req));
    const newCap = splitFields(out.find((f) => f.number === 4)!.value);
    expect(newCap.map((f) => f.number)).toEqual([1, 3, 111]);
    expect(newCap[0]!.value.length).toBe(0);
  });
});

describe('Ceph monitors from ceph-csi config.json', () => {
  const text = JSON.stringify([
    { clusterID: 'a', monitors: ['10.0.0.1:6789', '10.0.0.2:6789'] },
    { clusterID: 'b', monitors: 'bad' },
  ]);
  it('finds the cluster, or nothing', () => {
    expect(monitorsIn(text, 'a')).toEqual(['10.0.0.1:6789', '10.0.0.2:6789']);
    expect(monitorsIn(text, 'z')).toBeUndefined();
  });
  it.each([
    ['b', text],
    ['a', '{not json'],
    ['a', '{"clusterID":"a"}'],
  ])('refuses a broken entry (%s)', (id, t) => {
    expect(() => monitorsIn(t, id)).toThrow(
      expect.objectContaining({ grpcCode: status.FAILED_PRECONDITION }),
    );
  });
  it('reads the file at each call and says when it is missing', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vmplug-csi-cfg-'));
    try {
      const f = join(dir, 'config.json');
      await writeFile(f, text);
      expect(await monitorsFromFile(f)('a')).toHaveLength(2);
      await expect(monitorsFromFile(join(dir, 'none'))('a')).rejects.toThrow(/ENOENT/);
      expect(await monitorsFromFile(undefined)('a')).toBeUndefined();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('staged block devices', () => {
  it('splits a dev_t like glibc', () => {
    expect(splitDev((8n << 8n) | 16n)).toEqual({ major: 8, minor: 16 });
    // major 252, minor 300: the minor's high bits sit above bit 20.
    const dev = (252n << 8n) | (300n & 0xffn) | ((300n & ~0xffn) << 12n);
    expect(splitDev(dev)).toEqual({ major: 252, minor: 300 });
  });

  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmplug-csi-dev-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  it('refuses a staging path without a block device', async () => {
    await mkdir(join(dir, 'staging'), { recursive: true });
    await writeFile(join(dir, 'staging', 'vol-1'), '');
    const of = stagedDeviceOf(join(dir, 'sys'), '/dev');
    await expect(of(join(dir, 'staging'), 'vol-1')).rejects.toThrow(/no block device staged/);
    await expect(of(join(dir, 'staging'), 'vol-2')).rejects.toThrow(/no block device staged/);
  });
  it('names a real block device node through sysfs', async () => {
    // /dev/loop0 exists on this machine kind; the test uses the node itself as the "staged" one.
    const of = stagedDeviceOf();
    const got = await of('/dev', 'loop0').catch(() => undefined);
    if (got !== undefined) expect(got).toBe('/dev/loop0');
  });
});

describe('PVC annotation lookup', () => {
  const pv = (name: string, handle: string, claim?: { namespace: string; name: string }) => ({
    metadata: { name },
    spec: {
      csi: { driver: 'rbd.csi.ceph.com', volumeHandle: handle },
      ...(claim ? { claimRef: claim } : {}),
    },
  });
  const objects: Record<string, unknown> = {
    '/api/v1/persistentvolumes/pv-1': pv('pv-1', 'vol-1', { namespace: 'shop', name: 'data' }),
    '/api/v1/persistentvolumes': {
      items: [pv('pv-0', 'vol-0'), pv('pv-1', 'vol-1', { namespace: 'shop', name: 'data' })],
    },
    '/api/v1/namespaces/shop/persistentvolumeclaims/data': {
      metadata: { annotations: { 'volume.katacontainers.io/direct-mode': 'block' } },
    },
  };
  const asked: string[] = [];
  const lookup = kubeLookup(async (path) => {
    asked.push(path);
    return objects[path];
  });
  const signal = new AbortController().signal;

  it('reads the annotation through the PV named in the target path', async () => {
    asked.length = 0;
    expect(
      await lookup.directModeOf({ volumeId: 'vol-1', driver: 'rbd.csi.ceph.com', pvName: 'pv-1' }, signal),
    ).toBe('block');
    expect(asked).toEqual([
      '/api/v1/persistentvolumes/pv-1',
      '/api/v1/namespaces/shop/persistentvolumeclaims/data',
    ]);
  });
  it('finds the PV by driver and volume handle when the name is unknown (NodeStage)', async () => {
    expect(await lookup.directModeOf({ volumeId: 'vol-1', driver: 'rbd.csi.ceph.com' }, signal)).toBe(
      'block',
    );
    expect(await lookup.directModeOf({ volumeId: 'vol-1', driver: 'other.csi' }, signal)).toBeUndefined();
  });
  it('answers undefined for a PV without claim or an unknown PV', async () => {
    expect(
      await lookup.directModeOf({ volumeId: 'vol-0', driver: 'rbd.csi.ceph.com' }, signal),
    ).toBeUndefined();
    expect(await lookup.directModeOf({ volumeId: 'x', driver: 'd', pvName: 'nope' }, signal)).toBeUndefined();
  });
});
