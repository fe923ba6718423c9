import type { PodVolume } from '../../api/index.js';
import type { SandboxId } from '../../core/ids.js';
import type { SandboxCatalog, SandboxPod } from '../../core/sandbox.js';
import type { PodRef } from '../../storage/volume-spec.js';
import type { PodEventTarget } from './kube/events.js';
import type { Reporter } from './kube/reporter.js';
import type { NicOperation } from './observed-nics.js';
import type { PodVolumeOperation } from './observed-pods.js';
import type { VolumeOperation } from './observed-service.js';

// Pod Events for volume and NIC operations and for pod volumes (published, consumed by Kata,
// unpublished): what a `kubectl describe pod` shows of vmplug. Only outcomes that are news become
// an Event, and only for a sandbox or publish that names a pod (name and namespace). Observes;
// nothing here can fail an attach or a publish.

export class PodEvents {
  constructor(
    private readonly reporter: Pick<Reporter, 'recordPodEvent'>,
    private readonly catalog: Pick<SandboxCatalog, 'get'>,
  ) {}

  volume(op: VolumeOperation): void {
    // An idempotent repeat of a done attach, or a detach of a volume never seen, is not news.
    if (op.ok && op.op === 'attach' && !op.created) return;
    if (op.ok && op.op === 'detach' && op.mode === 'unknown') return;
    const target = podEventTarget(this.catalog.get(op.sandboxId)?.pod, op.pod);
    if (target === undefined) return;
    const attached =
      op.ok && op.op === 'attach'
        ? `(${op.attachment.mode}, ${op.attachment.bus}${op.attachment.readOnly ? ', read-only' : ''}) as ${op.attachment.guestHint}`
        : '';
    this.#record(target, 'Volume', `volume ${op.volumeId}`, op, attached);
  }

  nic(op: NicOperation): void {
    // An idempotent repeat, or a detach of a NIC never seen, is not news.
    if (op.ok && ((op.op === 'attach' && !op.created) || (op.op === 'detach' && !op.detached))) return;
    // Ids net/ accepted pass storage's rule too (the same rule, restated there).
    const target = podEventTarget(this.catalog.get(op.sandboxId as string as SandboxId)?.pod, undefined);
    if (target === undefined) return;
    const attached = op.ok && op.op === 'attach' ? `(mac ${op.nic.mac}, tap ${op.nic.tap})` : '';
    this.#record(target, 'Nic', `NIC ${op.nicId}`, op, attached);
  }

  /** A publish or unpublish for a pod (DESIGN §5b): Events to the Pod the publish named. */
  podVolume(op: PodVolumeOperation): void {
    const news = podVolumeNews(op);
    const target = podEventTarget(undefined, op.pod);
    if (news !== undefined && target !== undefined) {
      this.reporter.recordPodEvent(target, news.reason, news.message, news.type);
    }
  }

  /** Kata plugged a published volume into the pod's sandbox (pod-volumes.ts tells when). */
  podVolumeConsumed(v: PodVolume): void {
    const target = podEventTarget(undefined, v.pod);
    if (target === undefined || v.sandboxId === undefined) return;
    this.reporter.recordPodEvent(
      target,
      'VolumeConsumed',
      `volume ${v.volumeId} plugged by Kata into sandbox ${v.sandboxId} (${v.mode}, device ${v.device ?? '-'})`,
    );
  }

  /** One Event per outcome: `<Noun>Attached`, `<Noun>Detached`, or a Warning `<Noun>AttachFailed`. */
  #record(
    target: PodEventTarget,
    noun: 'Volume' | 'Nic',
    name: string,
    op: Outcome,
    attachedDetail: string,
  ): void {
    const ms = Math.round(op.ms);
    if (!op.ok) {
      const reason = `${noun}${op.op === 'attach' ? 'Attach' : 'Detach'}Failed`;
      const message = `${op.op} of ${name} failed after ${ms} ms: ${op.code}: ${op.message}`;
      this.reporter.recordPodEvent(target, reason, message, 'Warning');
    } else if (op.op === 'attach') {
      this.reporter.recordPodEvent(
        target,
        `${noun}Attached`,
        `${name} attached ${attachedDetail} in ${ms} ms`,
      );
    } else {
      this.reporter.recordPodEvent(target, `${noun}Detached`, `${name} detached in ${ms} ms`);
    }
  }
}

export interface PodEventNews {
  reason: string;
  message: string;
  type: 'Normal' | 'Warning';
}

/**
 * Which outcome of a pod-volume operation is news, and how it reads: `VolumePublished`,
 * `VolumeUnpublished`, or a Warning `VolumePublishFailed` / `VolumeUnpublishFailed`. A publish
 * that found the same volume published (200) or an unpublish of a volume not known (204) is an
 * idempotent repeat: no Event.
 */
export function podVolumeNews(op: PodVolumeOperation): PodEventNews | undefined {
  const ms = Math.round(op.ms);
  const name = `volume ${op.volumeId}`;
  if (!op.ok) {
    return {
      reason: op.op === 'publish' ? 'VolumePublishFailed' : 'VolumeUnpublishFailed',
      message: `${op.op} of ${name} failed after ${ms} ms: ${op.code}: ${op.message}`,
      type: 'Warning',
    };
  }
  if (op.op === 'unpublish') {
    if (!op.known) return undefined;
    return { reason: 'VolumeUnpublished', message: `${name} unpublished in ${ms} ms`, type: 'Normal' };
  }
  if (!op.created) return undefined;
  const v = op.volume;
  const how = [v.mode, v.fsType, ...(v.readOnly ? ['read-only'] : []), `device ${v.device ?? '-'}`];
  return {
    reason: 'VolumePublished',
    message: `${name} published for Kata (${how.join(', ')}) in ${ms} ms`,
    type: 'Normal',
  };
}

type Outcome =
  | { op: 'attach' | 'detach'; ok: true; ms: number }
  | { op: 'attach' | 'detach'; ok: false; ms: number; code: string; message: string };

/**
 * Where a volume's Pod event goes. The runtime's record of the sandbox (Kata's persist.json) is
 * read from the sandbox itself, so it wins whenever it names the pod; the pod the attach request
 * named (the CSI plugin's pod info) is the fallback for sandboxes whose runtime records none. The
 * request only adds the uid to a runtime identity without one, and only when both name the same
 * pod. An Event needs a name and a namespace: a pod known by its uid alone gets none.
 */
export function podEventTarget(
  runtime: SandboxPod | undefined,
  requested: PodRef | undefined,
): PodEventTarget | undefined {
  if (runtime?.name !== undefined && runtime.namespace !== undefined) {
    const sameAsRequested =
      requested !== undefined && requested.name === runtime.name && requested.namespace === runtime.namespace;
    const uid = runtime.uid ?? (sameAsRequested ? requested.uid : undefined);
    return {
      podName: runtime.name,
      namespace: runtime.namespace,
      ...(uid !== undefined ? { podUid: uid } : {}),
    };
  }
  if (requested?.name !== undefined && requested.namespace !== undefined) {
    return { podName: requested.name, namespace: requested.namespace, podUid: requested.uid };
  }
  return undefined;
}
