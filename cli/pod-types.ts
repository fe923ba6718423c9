import type { AttachSourceRequest } from '../api/index.js';

// The pod-volume API's shapes as a client sees them (DESIGN §5b; the daemon's schemas in
// daemon/http/routes/pods.ts are the contract). Kept apart from client.ts's attach shapes.

export interface PublishRequest {
  mode?: 'block' | 'rbd';
  source: AttachSourceRequest;
  /** kubelet's NodePublishVolume target_path of this pod. */
  targetPath: string;
  fsType?: 'ext4' | 'xfs';
  readOnly?: boolean;
  mountOptions?: string[];
  annotations?: Record<string, string>;
  pod?: { name?: string; namespace?: string };
}

export type PodVolumeState = 'Publishing' | 'Published' | 'Consumed' | 'Unpublishing' | 'Failed';

export interface PodVolume {
  podUid: string;
  volumeId: string;
  mode: 'block' | 'rbd';
  state: PodVolumeState;
  step: string;
  /** Set when Consumed: the Kata sandbox that plugged the volume. */
  sandboxId?: string;
  targetPath: string;
  recordPath: string;
  device?: string;
  fsType: string;
  readOnly: boolean;
  mountOptions: string[];
  source: Record<string, unknown>;
  pod?: { uid: string; name?: string; namespace?: string };
  /** Set when Failed. */
  problem?: { code: string; detail: string; at?: string };
  timeline: { step: string; at: string; ms: number }[];
}

export interface PublishResponse {
  /** False when the same volume was already published with the same spec (HTTP 200). */
  created: boolean;
  volume: PodVolume;
}

export function podVolumePath(podUid: string, volumeId?: string): string {
  const base = `/v1/pods/${encodeURIComponent(podUid)}/volumes`;
  return volumeId === undefined ? base : `${base}/${encodeURIComponent(volumeId)}`;
}
