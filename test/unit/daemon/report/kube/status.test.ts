import { describe, expect, it } from 'vitest';
import { resolveClusterSource } from '../../../../../daemon/report/kube/kube-http.js';
import {
  canonicalJson,
  type NodeStatusSnapshot,
  statusHash,
  toStatus,
} from '../../../../../daemon/report/kube/status.js';

const snap = (order: 'a' | 'b'): NodeStatusSnapshot => {
  const vols = [
    { volumeId: 'v2', mode: 'rbd', bus: 'scsi', state: 'attached' },
    { volumeId: 'v1', bus: 'virtio-blk', mode: 'block', state: 'attached' },
  ];
  const sbs = [
    { id: 's2', kind: 'libvirt' as const, state: 'running', volumes: [], nics: [] },
    {
      id: 's1',
      kind: 'kata' as const,
      state: 'paused',
      volumes: order === 'a' ? vols : [...vols].reverse(),
      nics: [],
    },
  ];
  return {
    node: { hostname: 'n', nics: [{ name: 'eth1' }, { name: 'eth0' }] },
    sandboxes: order === 'a' ? sbs : [...sbs].reverse(),
    conditions: [{ type: 'Ready', status: 'True' }],
  };
};

describe('status canonical form', () => {
  it('sorts map lists by key and counts for the printer columns', () => {
    const s = toStatus(snap('a'));
    expect(s.sandboxes.map((x) => x.id)).toEqual(['s1', 's2']);
    expect(s.sandboxes[0]?.volumes.map((v) => v.volumeId)).toEqual(['v1', 'v2']);
    expect(s.node.nics?.map((n) => n.name)).toEqual(['eth0', 'eth1']);
    expect(s.summary).toEqual({ sandboxes: 2, volumes: 2, nics: 0, podVolumes: 0 });
  });

  it('hashes equal meaning equally, whatever the order of lists and keys', () => {
    expect(statusHash(toStatus(snap('a')))).toBe(statusHash(toStatus(snap('b'))));
    const changed = snap('a');
    changed.sandboxes[1]!.state = 'running';
    expect(statusHash(toStatus(changed))).not.toBe(statusHash(toStatus(snap('a'))));
    expect(canonicalJson({ b: 1, a: [{ d: undefined, c: 2 }] })).toBe('{"a":[{"c":2}],"b":1}');
  });
});

describe('cluster source', () => {
  it('prefers the flag, then KUBECONFIG, then in-cluster, else none', () => {
    expect(resolveClusterSource('/etc/k.conf', { KUBECONFIG: '/x' })).toEqual({
      kind: 'kubeconfig',
      path: '/etc/k.conf',
    });
    expect(resolveClusterSource(undefined, { KUBECONFIG: ':/a:/b' })).toEqual({
      kind: 'kubeconfig',
      path: '/a',
    });
    const pod = { KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' };
    expect(resolveClusterSource(undefined, pod, '/proc/self/status')).toEqual({ kind: 'in-cluster' });
    expect(resolveClusterSource(undefined, pod, '/nonexistent/token').kind).toBe('none');
    expect(resolveClusterSource(undefined, {}).kind).toBe('none');
  });
});
