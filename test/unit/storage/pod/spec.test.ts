import { describe, expect, it } from 'vitest';
import { parsePodUid } from '../../../../core/ids.js';
import { parsePublishRequest, publishFingerprint, recordOptions } from '../../../../storage/pod/spec.js';

const UID = parsePodUid('5F0C3B1E-9D2A-4C7B-8E6F-1A2B3C4D5E6F');
const OTHER = '0b7e9a3c-2f4d-4e1a-9c8b-7d6e5f4a3b2c';
const TARGET = `/var/lib/kubelet/pods/${UID}/volumes/kubernetes.io~csi/pvc-1/mount`;
const block = { mode: 'block', source: { type: 'hostDevice', path: '/dev/loop3' }, targetPath: TARGET };
const key = Buffer.alloc(32, 1);

function refusal(body: Record<string, unknown>): { field: string; status: number } | undefined {
  try {
    parsePublishRequest(body, UID, '/var/lib/kubelet');
    return undefined;
  } catch (err) {
    const e = err as { field: string; status: number };
    return { field: e.field, status: e.status };
  }
}

describe('publish request', () => {
  it('lower-cases the pod uid and refuses what is not a UUID with 400', () => {
    expect(UID).toBe('5f0c3b1e-9d2a-4c7b-8e6f-1a2b3c4d5e6f');
    for (const bad of ['', 'pod-1', '5f0c3b1e9d2a4c7b8e6f1a2b3c4d5e6f', `${UID}/..`, 42]) {
      expect(() => parsePodUid(bad)).toThrow(expect.objectContaining({ status: 400, field: 'podUid' }));
    }
  });

  it('accepts the design example and defaults fsType to ext4, options rw first', () => {
    const spec = parsePublishRequest(
      { ...block, mountOptions: ['noatime'], pod: { name: 'web-0', namespace: 'shop' } },
      UID,
      '/var/lib/kubelet',
    );
    expect(spec.fsType).toBe('ext4');
    expect(spec.pod).toEqual({ uid: UID, name: 'web-0', namespace: 'shop' });
    expect(recordOptions(spec)).toEqual(['rw', 'noatime']);
    expect(recordOptions({ ...spec, volume: { ...spec.volume, readOnly: true } })).toEqual(['ro', 'noatime']);
  });

  it.each([
    [
      'outside the kubelet root',
      { targetPath: `/var/lib/other/pods/${UID}/volumes/kubernetes.io~csi/pvc-1/mount` },
      'targetPath',
    ],
    [
      'of another pod',
      { targetPath: `/var/lib/kubelet/pods/${OTHER}/volumes/kubernetes.io~csi/pvc-1/mount` },
      'targetPath',
    ],
    [
      'with ..',
      { targetPath: `/var/lib/kubelet/pods/${UID}/volumes/kubernetes.io~csi/../x/mount` },
      'targetPath',
    ],
    [
      'not normalized',
      { targetPath: `/var/lib/kubelet/pods/${UID}//volumes/kubernetes.io~csi/pvc-1/mount` },
      'targetPath',
    ],
    [
      'not a CSI mount path',
      { targetPath: `/var/lib/kubelet/pods/${UID}/volumes/kubernetes.io~csi/pvc-1` },
      'targetPath',
    ],
    [
      'a staging path',
      { targetPath: '/var/lib/kubelet/plugins/kubernetes.io/csi/x/globalmount' },
      'targetPath',
    ],
    ['relative', { targetPath: 'pods/x/mount' }, 'targetPath'],
    ['missing', { targetPath: undefined }, 'targetPath'],
    ['fsType not allowed', { fsType: 'btrfs' }, 'fsType'],
    ['fsType not a string', { fsType: 4 }, 'fsType'],
    ['mountOptions not an array', { mountOptions: 'noatime' }, 'mountOptions'],
    ['a mount option with a comma', { mountOptions: ['noatime,nodev'] }, 'mountOptions[0]'],
    ['rw as a mount option', { mountOptions: ['rw'] }, 'mountOptions[0]'],
    ['a duplicate mount option', { mountOptions: ['noatime', 'noatime'] }, 'mountOptions[1]'],
    ['an unknown field', { bus: 'scsi' }, 'bus'],
    ['a pod of another uid', { pod: { uid: OTHER } }, 'pod.uid'],
    ['a bad source path', { source: { type: 'hostDevice', path: '/tmp/x' } }, 'source.path'],
    ['mode without its source', { mode: 'rbd' }, 'mode'],
  ])('refuses %s with 422 naming the field', (_name, patch, field) => {
    expect(refusal({ ...block, ...patch })).toEqual({ field, status: 422 });
  });

  it('fingerprints what is published, not the pod', () => {
    const a = parsePublishRequest(block, UID, '/var/lib/kubelet');
    const b = parsePublishRequest({ ...block, pod: { name: 'x' } }, UID, '/var/lib/kubelet');
    const c = parsePublishRequest({ ...block, fsType: 'xfs' }, UID, '/var/lib/kubelet');
    expect(publishFingerprint(a, key)).toBe(publishFingerprint(b, key));
    expect(publishFingerprint(a, key)).not.toBe(publishFingerprint(c, key));
  });
});
