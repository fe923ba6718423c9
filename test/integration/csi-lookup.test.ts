// vmplug-csi's PVC annotation lookup against a real kube-apiserver (the test bed's, on loopback):
// the real adapter (kubeconfig loaded by client-node, TLS verified), the PV's claimRef, and the
// proxy deciding direct mode from the annotation alone; an API server outage is UNAVAILABLE.
import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { kubeGet, kubeLookup, type VolumeLookup } from '../../csi/lookup.js';
import { encode } from '../../csi/messages.js';
import { type KubeApiserver, startKubeApiserver } from '../env/kube.js';
import { POD_UID, startBed, targetPath } from '../unit/csi/harness.js';

function create(kube: KubeApiserver, path: string, body: unknown): Promise<number> {
  const payload = Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = request(
      `${kube.url}${path}`,
      {
        method: 'POST',
        ca: readFileSync(kube.caFile),
        headers: {
          authorization: `Bearer ${kube.token}`,
          'content-type': 'application/json',
          'content-length': payload.length,
        },
        signal: AbortSignal.timeout(10_000),
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

describe('vmplug-csi: PVC annotation through a real API server', () => {
  let kube: KubeApiserver;
  let lookup: VolumeLookup;
  beforeAll(async () => {
    kube = await startKubeApiserver();
    expect(await create(kube, '/api/v1/namespaces', { metadata: { name: 'shop' } })).toBe(201);
    const pvc = (name: string, annotations: Record<string, string>) => ({
      metadata: { name, namespace: 'shop', annotations },
      spec: {
        accessModes: ['ReadWriteOnce'],
        resources: { requests: { storage: '1Gi' } },
        storageClassName: '',
      },
    });
    expect(
      await create(
        kube,
        '/api/v1/namespaces/shop/persistentvolumeclaims',
        pvc('data', { 'volume.katacontainers.io/direct-mode': 'rbd' }),
      ),
    ).toBe(201);
    expect(await create(kube, '/api/v1/namespaces/shop/persistentvolumeclaims', pvc('plain', {}))).toBe(201);
    const pv = (name: string, handle: string, claim: string) => ({
      metadata: { name },
      spec: {
        capacity: { storage: '1Gi' },
        accessModes: ['ReadWriteOnce'],
        persistentVolumeReclaimPolicy: 'Retain',
        claimRef: { namespace: 'shop', name: claim },
        csi: { driver: 'rbd.csi.ceph.com', volumeHandle: handle, fsType: 'ext4' },
      },
    });
    expect(await create(kube, '/api/v1/persistentvolumes', pv('pv-data', 'vol-data', 'data'))).toBe(201);
    expect(await create(kube, '/api/v1/persistentvolumes', pv('pv-plain', 'vol-plain', 'plain'))).toBe(201);
    lookup = kubeLookup(await kubeGet({ kubeconfig: kube.kubeconfigPath }));
  });
  afterAll(async () => {
    await kube?.stop();
  });

  it('reads the annotation by PV name and by volume handle', async () => {
    const signal = AbortSignal.timeout(10_000);
    const driver = 'rbd.csi.ceph.com';
    expect(await lookup.directModeOf({ volumeId: 'vol-data', driver, pvName: 'pv-data' }, signal)).toBe(
      'rbd',
    );
    expect(await lookup.directModeOf({ volumeId: 'vol-data', driver }, signal)).toBe('rbd');
    expect(await lookup.directModeOf({ volumeId: 'vol-plain', driver }, signal)).toBeUndefined();
    expect(
      await lookup.directModeOf({ volumeId: 'vol-none', driver, pvName: 'pv-none' }, signal),
    ).toBeUndefined();
  });

  it('serves an annotated volume through vmplugd, forwards the other, UNAVAILABLE while the API server is away', async () => {
    const bed = await startBed({ lookup });
    try {
      const publish = (volumeId: string, pv: string, ctx: Record<string, string>) =>
        encode('csi.v1.NodePublishVolumeRequest', {
          volumeId,
          targetPath: targetPath(pv),
          stagingTargetPath: `/var/lib/kubelet/plugins/kubernetes.io/csi/pv/${pv}/globalmount`,
          volumeCapability: { mount: { fsType: 'ext4' }, accessMode: { mode: 1 } },
          volumeContext: ctx,
        });
      const stage = (volumeId: string, pv: string, ctx: Record<string, string>) =>
        encode('csi.v1.NodeStageVolumeRequest', {
          volumeId,
          stagingTargetPath: `/var/lib/kubelet/plugins/kubernetes.io/csi/pv/${pv}/globalmount`,
          volumeCapability: { mount: { fsType: 'ext4' }, accessMode: { mode: 1 } },
          secrets: { userID: 'vmplug', userKey: 'a2V5' },
          volumeContext: ctx,
        });
      const ctx = { clusterID: 'ceph1', pool: 'rbd', imageName: 'img' };
      await bed.call('NodeStageVolume', stage('vol-data', 'pv-data', ctx));
      await bed.call('NodePublishVolume', publish('vol-data', 'pv-data', ctx));
      await bed.call('NodeStageVolume', stage('vol-plain', 'pv-plain', ctx));
      await bed.call('NodePublishVolume', publish('vol-plain', 'pv-plain', ctx));
      expect(bed.vmplugd.calls.map((c) => `${c.method} ${c.url}`)).toEqual([
        `PUT /v1/pods/${POD_UID}/volumes/vol-data`,
      ]);
      expect(bed.plugin.paths()).toEqual(['NodeGetCapabilities', 'NodeStageVolume', 'NodePublishVolume']);

      await kube.stopApiserver();
      const err = await bed
        .call('NodeStageVolume', stage('vol-new', 'pv-new', ctx))
        .catch((e: grpc.ServiceError) => e);
      expect((err as grpc.ServiceError).code).toBe(grpc.status.UNAVAILABLE);
      await kube.startApiserver();
    } finally {
      await bed.close();
    }
  });
});
