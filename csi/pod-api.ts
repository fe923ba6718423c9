// vmplugd's pod-volume API (DESIGN §5b) as vmplug-csi uses it: the one module that talks to the
// daemon, through the typed client's pod methods (cli/client.ts: node:http on the unix socket, a
// timeout and an AbortSignal per call). It is a port (PodVolumes) so tests use a fake or a small
// HTTP server; the errors keep the daemon's `status`, `code` and `retryable`.
import type { AttachSourceRequest, PublishRequest, RbdSourceRequest } from '../api/index.js';
import { type CallOptions, VmplugApiError, VmplugClient, VmplugTransportError } from '../cli/client.js';

/** The rbd source of a publish: api/'s one spelling of it (the cephx key travels in the body only). */
export type RbdSource = RbdSourceRequest;

export type PublishSource = AttachSourceRequest;

/**
 * `PUT /v1/pods/{podUid}/volumes/{volumeId}` body (api/pods.ts's PublishRequest) as vmplug-csi
 * always fills it; `fsType` is passed on as kubelet gave it, for vmplugd to judge.
 */
export type PublishBody = Required<
  Pick<PublishRequest, 'mode' | 'source' | 'targetPath' | 'readOnly' | 'mountOptions'>
> & {
  fsType: string;
  pod?: { name: string; namespace: string };
};

/** What `GET` answers, as far as vmplug-csi reads it. */
export interface PodVolumeView {
  state: string;
  targetPath?: string;
  sandboxId?: string;
  /** Size of the volume when vmplugd knows it (not in §5b yet: read when present). */
  sizeBytes?: number;
  problem?: { detail?: string };
}

export interface PodVolumes {
  /** Idempotent publish; `created` false when the same spec was already published (200). */
  publish(
    podUid: string,
    volumeId: string,
    body: PublishBody,
    signal?: AbortSignal,
  ): Promise<{ created: boolean }>;
  /** The published volume, or undefined when vmplugd does not know it (404). */
  get(podUid: string, volumeId: string, signal?: AbortSignal): Promise<PodVolumeView | undefined>;
  /** Idempotent unpublish. */
  unpublish(podUid: string, volumeId: string, signal?: AbortSignal): Promise<void>;
  /**
   * Online expand of a published volume: `POST .../resize {sizeBytes}` (the pod-keyed twin of the
   * sandbox route of §5; a daemon without it answers 404/405 and the caller reports so).
   */
  resize(
    podUid: string,
    volumeId: string,
    sizeBytes: number,
    signal?: AbortSignal,
  ): Promise<{ sizeBytes?: number }>;
}

export type PodApiErrorCode = string;

/** vmplugd answered with an error (problem+json), or did not answer (status 0). */
export class PodApiError extends Error {
  override readonly name = 'PodApiError';
  constructor(
    /** HTTP status; 0 when there was no answer. */
    readonly status: number,
    /** The problem's stable code, or TIMEOUT / DAEMON_UNREACHABLE / PERMISSION_DENIED / BAD_RESPONSE. */
    readonly code: PodApiErrorCode,
    message: string,
    readonly retryable: boolean,
  ) {
    super(message);
  }
}

export interface UnixPodVolumesOptions {
  socketPath: string;
  /** Bound of each call (a publish of an rbd volume starts a storage daemon and may wait on Ceph). */
  timeoutMs: number;
}

/** The port over the typed client (cli/client.ts); its errors become PodApiErrors, codes kept. */
export class UnixPodVolumes implements PodVolumes {
  readonly #client: VmplugClient;

  constructor(opts: UnixPodVolumesOptions) {
    this.#client = new VmplugClient({ socketPath: opts.socketPath, timeoutMs: opts.timeoutMs });
  }

  async publish(podUid: string, volumeId: string, body: PublishBody, signal?: AbortSignal) {
    // fsType goes as kubelet gave it: vmplugd judges it (422 naming the field), not this cast.
    const request = body as PublishRequest;
    const { created } = await wrap(() => this.#client.publish(podUid, volumeId, request, call(signal)));
    return { created };
  }

  async get(podUid: string, volumeId: string, signal?: AbortSignal): Promise<PodVolumeView | undefined> {
    try {
      return await wrap(() => this.#client.getPodVolume(podUid, volumeId, call(signal)));
    } catch (err) {
      // Unknown volume, or no pod routes at all (ROUTE_NOT_FOUND: a vmplugd without the pod API
      // holds no pod volume either).
      if (err instanceof PodApiError && err.status === 404) return undefined;
      throw err;
    }
  }

  async unpublish(podUid: string, volumeId: string, signal?: AbortSignal) {
    await wrap(() => this.#client.unpublish(podUid, volumeId, call(signal)));
  }

  async resize(podUid: string, volumeId: string, sizeBytes: number, signal?: AbortSignal) {
    const done = await wrap(() => this.#client.resizePodVolume(podUid, volumeId, sizeBytes, call(signal)));
    const size = (done as { sizeBytes?: unknown } | undefined)?.sizeBytes;
    return typeof size === 'number' ? { sizeBytes: size } : {};
  }
}

const call = (signal: AbortSignal | undefined): CallOptions => (signal ? { signal } : {});

async function wrap<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof VmplugApiError)
      throw new PodApiError(err.status, err.code, err.message, err.retryable);
    if (err instanceof VmplugTransportError) throw new PodApiError(0, err.code, err.message, err.retryable);
    throw err;
  }
}
