// The PVC annotation `volume.katacontainers.io/direct-mode` of a volume, read through its PV's
// claimRef: ceph-csi never sees PVC annotations, so vmplug-csi asks the API server (optional:
// without a cluster config only the StorageClass parameter marks direct volumes). A port, so the
// decision is tested with a fake; the real one is bounded by a timeout on every call.
import http from 'node:http';
import https from 'node:https';
import { DIRECT_MODE_ANNOTATION } from './direct-mode.js';

const MAX_ANSWER_BYTES = 64 * 1024 * 1024;

export interface VolumeRef {
  volumeId: string;
  /** The CSI driver name (a PV is found by driver + volumeHandle when its name is unknown). */
  driver: string;
  /** The PV name when the call carries it (NodePublish's target path). */
  pvName?: string;
}

export interface VolumeLookup {
  /** The annotation's value, or undefined when the PV, its claim or the annotation is absent. */
  directModeOf(ref: VolumeRef, signal: AbortSignal): Promise<string | undefined>;
}

/** GET of one API path: the parsed body, or undefined on 404. Throws on any other failure. */
export type KubeGet = (path: string, signal: AbortSignal) => Promise<unknown>;

interface PersistentVolume {
  metadata?: { name?: string };
  spec?: {
    csi?: { driver?: string; volumeHandle?: string };
    claimRef?: { namespace?: string; name?: string };
  };
}

export function kubeLookup(get: KubeGet): VolumeLookup {
  return {
    async directModeOf(ref, signal) {
      let pv: PersistentVolume | undefined;
      if (ref.pvName !== undefined) {
        pv = (await get(`/api/v1/persistentvolumes/${encodeURIComponent(ref.pvName)}`, signal)) as
          | PersistentVolume
          | undefined;
      } else {
        // NodeStage carries no PV name on kubelets >= 1.24 (the staging path is a hash): find the
        // PV by its CSI handle.
        const list = (await get('/api/v1/persistentvolumes', signal)) as
          | { items?: PersistentVolume[] }
          | undefined;
        pv = list?.items?.find(
          (p) => p.spec?.csi?.driver === ref.driver && p.spec?.csi?.volumeHandle === ref.volumeId,
        );
      }
      const claim = pv?.spec?.claimRef;
      if (!claim?.namespace || !claim.name) return undefined;
      const pvc = (await get(
        `/api/v1/namespaces/${encodeURIComponent(claim.namespace)}/persistentvolumeclaims/${encodeURIComponent(claim.name)}`,
        signal,
      )) as { metadata?: { annotations?: Record<string, string> } } | undefined;
      return pvc?.metadata?.annotations?.[DIRECT_MODE_ANNOTATION];
    },
  };
}

/**
 * A KubeGet over the node's kubeconfig or the pod's service account. @kubernetes/client-node
 * loads the config and applies its credentials (certs, token refresh) to each request; it is
 * imported only when a cluster is configured.
 */
export async function kubeGet(source: { kubeconfig: string } | 'in-cluster'): Promise<KubeGet> {
  const { KubeConfig } = await import('@kubernetes/client-node');
  const kc = new KubeConfig();
  if (source === 'in-cluster') kc.loadFromCluster();
  else kc.loadFromFile(source.kubeconfig);
  const server = kc.getCurrentCluster()?.server.replace(/\/+$/, '');
  if (!server) throw new Error('the cluster config names no server');
  return async (path, signal) => {
    const opts: https.RequestOptions = { method: 'GET', headers: { accept: 'application/json' } };
    await kc.applyToHTTPSOptions(opts);
    const url = new URL(server + path);
    const mod = url.protocol === 'http:' ? http : https;
    return new Promise((resolve, reject) => {
      const req = mod.request(url, { ...opts, signal }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          // A PV list of a large cluster is a few MiB; past this the answer is not one.
          if (size > MAX_ANSWER_BYTES)
            res.destroy(new Error(`GET ${path}: answer larger than ${MAX_ANSWER_BYTES} bytes`));
          else chunks.push(c);
        });
        res.on('error', reject);
        res.on('end', () => {
          if (res.statusCode === 404) return resolve(undefined);
          if ((res.statusCode ?? 0) >= 300) return reject(new Error(`GET ${path}: HTTP ${res.statusCode}`));
          try {
            resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
          } catch {
            reject(new Error(`GET ${path}: the answer is not JSON`));
          }
        });
      });
      req.on('error', reject);
      req.end();
    });
  };
}
