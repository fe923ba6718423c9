import type { PodVolume } from '../../api/index.js';
import type { PodUid, VolumeId } from '../../core/ids.js';
import type { PodService } from '../http/routes/pods.js';
import { errorOf, safely } from './observed-service.js';

// The pod-volume engine (DESIGN §5b) as the daemon's observers see it (Pod events, the node
// status), the same way observed-service.ts wraps the attach engine: every publish and unpublish
// with its outcome and duration, told to a listener that must neither throw nor block.
// storage/pod/ knows nothing of it.

/** The Pod a publish named (its uid is the URL's). */
export interface PublishedPod {
  uid: string;
  name?: string;
  namespace?: string;
}

interface PodVolumeOperationBase {
  podUid: PodUid;
  volumeId: VolumeId;
  /** Wall time of the call. */
  ms: number;
  /** The publish request's pod, or the one recorded with the volume (as read before an unpublish). */
  pod?: PublishedPod;
}

export type PodVolumeOperation =
  | (PodVolumeOperationBase & { op: 'publish'; ok: true; created: boolean; volume: PodVolume })
  /** `known`: there was a volume to unpublish (a DELETE of an unknown one is an idempotent 204). */
  | (PodVolumeOperationBase & { op: 'unpublish'; ok: true; known: boolean })
  | (PodVolumeOperationBase & { op: 'publish' | 'unpublish'; ok: false; code: string; message: string });

export function observePodService(
  inner: PodService,
  onOperation: (op: PodVolumeOperation) => void,
): PodService {
  const tell = safely(onOperation);
  return {
    async publish(podUid, volumeId, spec, ctx) {
      const t = performance.now();
      try {
        const r = await inner.publish(podUid, volumeId, spec, ctx);
        const pod = r.volume.pod ?? spec.pod;
        tell({
          op: 'publish',
          ok: true,
          podUid,
          volumeId,
          ms: performance.now() - t,
          created: r.created,
          volume: r.volume,
          ...(pod !== undefined ? { pod: { ...pod, uid: podUid } } : {}),
        });
        return r;
      } catch (err) {
        tell({
          op: 'publish',
          ok: false,
          podUid,
          volumeId,
          ms: performance.now() - t,
          ...(spec.pod !== undefined ? { pod: { ...spec.pod, uid: podUid } } : {}),
          ...errorOf(err),
        });
        throw err;
      }
    },
    async unpublish(podUid, volumeId, ctx) {
      // The request names only ids: where its Event goes is read first (a failed read only
      // means no Event; it never fails the unpublish).
      const before = await inner.get(podUid, volumeId).catch(() => undefined);
      const pod = before?.pod !== undefined ? { pod: before.pod } : {};
      const t = performance.now();
      try {
        await inner.unpublish(podUid, volumeId, ctx);
        tell({
          op: 'unpublish',
          ok: true,
          podUid,
          volumeId,
          ms: performance.now() - t,
          known: before !== undefined,
          ...pod,
        });
      } catch (err) {
        tell({
          op: 'unpublish',
          ok: false,
          podUid,
          volumeId,
          ms: performance.now() - t,
          ...pod,
          ...errorOf(err),
        });
        throw err;
      }
    },
    get: (podUid, volumeId) => inner.get(podUid, volumeId),
    list: (podUid) => inner.list(podUid),
    // A resize is no publish news: Events and the watch learn the size at the next list.
    resize: (podUid, volumeId, sizeBytes, ctx) => inner.resize(podUid, volumeId, sizeBytes, ctx),
  };
}
