// Pure decisions of vmplug-csi: is a volume in direct mode, which pod a target path belongs to,
// and the rbd source of a volume from what ceph-csi's NodeStage carries. No I/O here.

import { status } from '@grpc/grpc-js';
import { idProblem } from '../core/ids.js';
import { READ_ONLY_ACCESS_MODES, type VolumeCapability } from './messages.js';
import type { PublishBody, RbdSource } from './pod-api.js';
import { CsiError, failedPrecondition, invalidArgument } from './status.js';

/** StorageClass parameter (reaches volume_context): `block` or `rbd`. */
export const DIRECT_MODE_PARAM = 'vmplug.io/direct-mode';
/** PVC annotation Kata's tooling uses; read through the PV's claimRef (lookup.ts). */
export const DIRECT_MODE_ANNOTATION = 'volume.katacontainers.io/direct-mode';

export type DirectMode = 'rbd' | 'block';

export function parseDirectMode(value: string, field: string): DirectMode {
  if (value === 'rbd' || value === 'block') return value;
  throw invalidArgument(field, `must be "rbd" or "block", not ${JSON.stringify(value.slice(0, 40))}`);
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export interface PodVolumePath {
  podUid: string;
  /** The PV name kubelet put in the path. */
  pvName: string;
}

/** `<kubeletRoot>/pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`, or undefined for any other path. */
export function parseTargetPath(targetPath: string, kubeletRoot: string): PodVolumePath | undefined {
  const root = kubeletRoot.replace(/\/+$/, '');
  if (!targetPath.startsWith(`${root}/pods/`)) return undefined;
  const parts = targetPath.slice(root.length + '/pods/'.length).split('/');
  if (parts.length !== 5) return undefined;
  const [podUid, volumes, plugin, pvName, mount] = parts as [string, string, string, string, string];
  if (volumes !== 'volumes' || plugin !== 'kubernetes.io~csi' || mount !== 'mount') return undefined;
  if (!UUID.test(podUid) || pvName.length === 0 || pvName === '.' || pvName === '..') return undefined;
  return { podUid, pvName };
}

/**
 * The PV name in a staging path of kubelets before 1.24
 * (`<kubeletRoot>/plugins/kubernetes.io/csi/pv/<pv>/globalmount`); newer ones hash the volume
 * handle into the path, and the PV is then found by its handle (lookup.ts).
 */
export function pvFromStagingPath(stagingPath: string, kubeletRoot: string): string | undefined {
  const prefix = `${kubeletRoot.replace(/\/+$/, '')}/plugins/kubernetes.io/csi/pv/`;
  if (!stagingPath.startsWith(prefix)) return undefined;
  const [pv, last, ...rest] = stagingPath.slice(prefix.length).split('/');
  if (!pv || pv === '.' || pv === '..' || last !== 'globalmount' || rest.length > 0) return undefined;
  return pv;
}

/** The pod a direct volume is published for: volume_context (podInfoOnMount) first, then the path. */
export function podOf(
  targetPath: string,
  volumeContext: Record<string, string>,
  kubeletRoot: string,
): { podUid: string; pod?: { name: string; namespace: string } } {
  const parsed = parseTargetPath(targetPath, kubeletRoot);
  const fromContext = volumeContext['csi.storage.k8s.io/pod.uid'];
  const podUid = fromContext ?? parsed?.podUid;
  if (podUid === undefined) {
    throw invalidArgument(
      'target_path',
      `is not a CSI mount path under ${kubeletRoot}/pods/<pod uid>/volumes/kubernetes.io~csi/<pv>/mount`,
    );
  }
  if (!UUID.test(podUid))
    throw invalidArgument('volume_context["csi.storage.k8s.io/pod.uid"]', 'is not a UUID');
  const name = volumeContext['csi.storage.k8s.io/pod.name'];
  const namespace = volumeContext['csi.storage.k8s.io/pod.namespace'];
  return name && namespace ? { podUid, pod: { name, namespace } } : { podUid };
}

/** A volume id vmplugd accepts in its URL (core/ids.ts); forwarded volumes are never checked. */
export function checkVolumeId(volumeId: string): void {
  const problem = idProblem(volumeId);
  if (problem !== undefined)
    throw invalidArgument('volume_id', `${problem} (vmplug's id rule, for direct-mode volumes)`);
}

/** ceph-csi's keys of the node-stage secret. */
export const SECRET_USER = 'userID';
export const SECRET_KEY = 'userKey';

/** Monitors of a Ceph cluster by clusterID (ceph-csi's config.json, monitors.ts). */
export type MonitorsOf = (clusterId: string) => Promise<string[] | undefined>;

/**
 * The rbd source of a direct volume from NodeStage: credentials from the node-stage secret,
 * pool/image/namespace from volume_context (ceph-csi's keys: `pool`, `imageName`,
 * `radosNamespace`; a static PV with `staticVolume: "true"` names the image by its volume id),
 * monitors from volume_context `monitors` (comma separated) or the clusterID's entry in the
 * config file.
 */
export async function rbdSource(
  volumeId: string,
  volumeContext: Record<string, string>,
  secrets: Record<string, string>,
  monitorsOf: MonitorsOf,
): Promise<RbdSource> {
  const user = secrets[SECRET_USER];
  const key = secrets[SECRET_KEY];
  if (!user || !key) {
    // Name the keys, never any value.
    throw invalidArgument(
      'secrets',
      `an rbd direct-mode volume needs the node-stage secret's ${SECRET_USER} and ${SECRET_KEY} (StorageClass csi.storage.k8s.io/node-stage-secret-name)`,
    );
  }
  const pool = volumeContext.pool;
  if (!pool) throw invalidArgument('volume_context["pool"]', 'required for an rbd direct-mode volume');
  const image = volumeContext.imageName || (volumeContext.staticVolume === 'true' ? volumeId : undefined);
  if (!image) {
    throw invalidArgument(
      'volume_context["imageName"]',
      'required (or staticVolume "true" with the image as volume id)',
    );
  }
  let monitors = (volumeContext.monitors ?? '')
    .split(',')
    .map((m) => m.trim())
    .filter((m) => m.length > 0);
  if (monitors.length === 0) {
    const clusterId = volumeContext.clusterID;
    if (!clusterId) {
      throw invalidArgument('volume_context["clusterID"]', 'required when volume_context has no "monitors"');
    }
    monitors = (await monitorsOf(clusterId)) ?? [];
    if (monitors.length === 0)
      throw failedPrecondition(`no monitors configured for Ceph clusterID ${JSON.stringify(clusterId)}`);
  }
  const source: RbdSource = { type: 'rbd', pool, image, monitors, user, key };
  if (volumeContext.radosNamespace) source.namespace = volumeContext.radosNamespace;
  return source;
}

/** Kata direct-assigned volumes mount a filesystem in the guest: only mount capabilities qualify. */
export function mountCapability(
  cap: VolumeCapability | undefined,
  field: string,
): NonNullable<VolumeCapability['mount']> {
  if (cap === undefined) throw invalidArgument(field, 'required');
  if (cap.mount === undefined) {
    throw invalidArgument(
      field,
      'a direct-mode volume must be a mount volume (volumeMode: Filesystem): Kata mounts it in the guest',
    );
  }
  return cap.mount;
}

export const DEFAULT_FS_TYPE = 'ext4';

/** The §5b publish body of a direct volume. */
export function publishBody(args: {
  mode: DirectMode;
  source: PublishBody['source'];
  targetPath: string;
  capability: VolumeCapability;
  readonly: boolean;
  pod?: { name: string; namespace: string };
}): PublishBody {
  const mount = mountCapability(args.capability, 'volume_capability');
  const accessMode = args.capability.accessMode?.mode ?? 0;
  const body: PublishBody = {
    mode: args.mode,
    source: args.source,
    targetPath: args.targetPath,
    fsType: mount.fsType || DEFAULT_FS_TYPE,
    readOnly: args.readonly || READ_ONLY_ACCESS_MODES.has(accessMode),
    mountOptions: mount.mountFlags ?? [],
  };
  if (args.pod) body.pod = args.pod;
  return body;
}

/** A required string field of a request. */
export function required(value: string | undefined, field: string): string {
  if (!value) throw invalidArgument(field, 'required');
  return value;
}

export const notStaged = (volumeId: string): CsiError =>
  new CsiError(
    status.FAILED_PRECONDITION,
    `volume ${volumeId} is in direct mode but this vmplug-csi holds no NodeStage for it ` +
      '(its credentials are kept in memory only: was vmplug-csi restarted since NodeStage?). ' +
      'Delete the pod: kubelet unstages the volume and stages it again for the next one',
  );
