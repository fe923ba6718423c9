/**
 * The VmplugNode status vmplugd reports, as plain data. The shape mirrors
 * deploy/crd-vmplugnode.yaml; keep the two in step (the integration test applies one with the
 * other, so a field the CRD lacks is caught there: the apiserver prunes it).
 */
import { createHash } from 'node:crypto';

export interface NodeFacts {
  hostname?: string;
  os?: string;
  kernel?: string;
  arch?: string;
  vmplugVersion?: string;
  cpu?: { model?: string; cores?: number; threads?: number };
  memoryBytes?: number;
  virtualization?: { kvm?: boolean; nestedKvm?: boolean; qemuVersion?: string; libvirtVersion?: string };
  blockDevices?: { name: string; type?: string; sizeBytes?: number; model?: string }[];
  nics?: { name: string; mac?: string; speedMbps?: number; up?: boolean }[];
}

export interface PodRef {
  uid?: string;
  name?: string;
  namespace?: string;
}

export interface VolumeStatus {
  volumeId: string;
  /** block (host device) or rbd (QEMU's librbd). */
  mode: string;
  /** virtio-blk or scsi. */
  bus: string;
  state: string;
  device?: string;
  readOnly?: boolean;
  /** RFC 3339: when the volume entered `state` (the attach timeline's last step). */
  since?: string;
  attachMs?: number;
  error?: string;
}

/**
 * A volume published for a Kata pod (DESIGN §5b), keyed by pod UID and volume id. Never a
 * secret: no source at all (the rbd source's key stays in vmplugd's memory), only where the
 * volume is handed to Kata and what became of it.
 */
export interface PodVolumeStatus {
  podUid: string;
  volumeId: string;
  /** block (host device) or rbd (a qemu-storage-daemon's vhost-user-blk export). */
  mode: string;
  /** Publishing, Published, Consumed, Unpublishing or Failed. */
  state: string;
  /** Set when Consumed: the Kata sandbox that plugged it. */
  sandboxId?: string;
  targetPath: string;
  /** The device Kata's record names. */
  device?: string;
  fsType?: string;
  readOnly?: boolean;
  /** The Pod's name and namespace, when the publish named them. */
  pod?: PodRef;
  /** RFC 3339: the last step of the volume's journal. */
  since?: string;
  error?: string;
}

export interface NicStatus {
  id: string;
  mac?: string;
  tap?: string;
  model?: string;
  state: string;
}

export interface SandboxStatus {
  id: string;
  kind: 'kata' | 'libvirt';
  state: string;
  reason?: string;
  pod?: PodRef;
  volumes: VolumeStatus[];
  nics: NicStatus[];
}

export interface Condition {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  reason?: string;
  message?: string;
  /** RFC 3339. Set it when `status` changes, not on every snapshot, or every snapshot is a change. */
  lastTransitionTime?: string;
}

/** What the daemon knows about its node at one instant. */
export interface NodeStatusSnapshot {
  node: NodeFacts;
  sandboxes: SandboxStatus[];
  /** Volumes published per pod (none when the node has no pod-volume engine). */
  podVolumes?: PodVolumeStatus[];
  conditions: Condition[];
}

/** The status object as written to the API server (the snapshot plus counts for kubectl). */
export interface VmplugNodeStatus extends NodeStatusSnapshot {
  podVolumes: PodVolumeStatus[];
  summary: { sandboxes: number; volumes: number; nics: number; podVolumes: number };
}

/**
 * The status in a canonical order: lists sorted by their key (the CRD declares them as map
 * lists, so order carries no meaning), undefined fields dropped. Two snapshots that mean the same
 * give the same JSON, so reordering alone never causes a write.
 */
export function toStatus(s: NodeStatusSnapshot): VmplugNodeStatus {
  const by =
    <T>(key: (t: T) => string) =>
    (a: T, b: T): number =>
      key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0;
  const node: NodeFacts = {
    ...s.node,
    ...(s.node.blockDevices ? { blockDevices: [...s.node.blockDevices].sort(by((d) => d.name)) } : {}),
    ...(s.node.nics ? { nics: [...s.node.nics].sort(by((n) => n.name)) } : {}),
  };
  const sandboxes = s.sandboxes
    .map((sb) => ({
      ...sb,
      volumes: [...sb.volumes].sort(by((v) => v.volumeId)),
      nics: [...sb.nics].sort(by((n) => n.id)),
    }))
    .sort(by((sb) => sb.id));
  const podVolumes = [...(s.podVolumes ?? [])].sort(by((v) => `${v.podUid}/${v.volumeId}`));
  return {
    node,
    sandboxes,
    podVolumes,
    conditions: [...s.conditions].sort(by((c) => c.type)),
    summary: {
      sandboxes: sandboxes.length,
      volumes: sandboxes.reduce((n, sb) => n + sb.volumes.length, 0),
      nics: sandboxes.reduce((n, sb) => n + sb.nics.length, 0),
      podVolumes: podVolumes.length,
    },
  };
}

/** JSON with object keys sorted at every level and undefined values left out. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v ?? null)).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
}

export function statusHash(status: VmplugNodeStatus): string {
  return createHash('sha256').update(canonicalJson(status)).digest('hex');
}
