// vmplugd's pod-volume API (DESIGN §5b) as vmplug-csi uses it: the one module that speaks HTTP to
// the daemon. It is a port (PodVolumes) so tests use a fake or a small HTTP server, and so the
// HTTP half can be replaced by the typed client's pod methods (cli/client.ts) once they exist:
// only UnixPodVolumes changes, the errors keep their `status`, `code` and `retryable`.
import { request } from 'node:http';
import type { AttachSourceRequest, PublishRequest, RbdSourceRequest } from '../api/index.js';

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

const RETRYABLE_CODES = new Set(['DETACH_PENDING', 'CEPH_UNREACHABLE', 'NOT_READY', 'SHUTTING_DOWN']);
const MAX_ANSWER_BYTES = 1024 * 1024;

export interface UnixPodVolumesOptions {
  socketPath: string;
  /** Bound of each call (a publish of an rbd volume starts a storage daemon and may wait on Ceph). */
  timeoutMs: number;
}

export class UnixPodVolumes implements PodVolumes {
  constructor(private readonly opts: UnixPodVolumesOptions) {}

  async publish(podUid: string, volumeId: string, body: PublishBody, signal?: AbortSignal) {
    const res = await this.#call('PUT', path(podUid, volumeId), body, signal);
    return { created: res.status === 201 };
  }

  async get(podUid: string, volumeId: string, signal?: AbortSignal) {
    try {
      return (await this.#call('GET', path(podUid, volumeId), undefined, signal)).body as PodVolumeView;
    } catch (err) {
      // Unknown volume, or no pod routes at all (ROUTE_NOT_FOUND: a vmplugd without the pod API
      // holds no pod volume either).
      if (err instanceof PodApiError && err.status === 404) return undefined;
      throw err;
    }
  }

  async unpublish(podUid: string, volumeId: string, signal?: AbortSignal) {
    await this.#call('DELETE', path(podUid, volumeId), undefined, signal);
  }

  async resize(podUid: string, volumeId: string, sizeBytes: number, signal?: AbortSignal) {
    const res = await this.#call('POST', `${path(podUid, volumeId)}/resize`, { sizeBytes }, signal);
    const size = (res.body as { sizeBytes?: unknown } | undefined)?.sizeBytes;
    return typeof size === 'number' ? { sizeBytes: size } : {};
  }

  #call(method: string, urlPath: string, body: unknown, callerSignal?: AbortSignal) {
    const what = `${method} ${urlPath}`;
    const timeout = AbortSignal.timeout(this.opts.timeoutMs);
    const signal = callerSignal ? AbortSignal.any([callerSignal, timeout]) : timeout;
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string | number> = { accept: 'application/json' };
    if (payload) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = payload.length;
    }
    return new Promise<{ status: number; body: unknown }>((resolve, reject) => {
      const fail = (err: NodeJS.ErrnoException) => {
        if (timeout.aborted)
          reject(new PodApiError(0, 'TIMEOUT', `${what}: no answer in ${this.opts.timeoutMs} ms`, true));
        else if (signal.aborted) reject(new PodApiError(0, 'ABORTED', `${what}: aborted`, false));
        else if (err.code === 'EACCES' || err.code === 'EPERM')
          reject(
            new PodApiError(
              0,
              'PERMISSION_DENIED',
              `${what}: no permission on ${this.opts.socketPath}`,
              false,
            ),
          );
        else if (err instanceof PodApiError) reject(err);
        else
          reject(
            new PodApiError(
              0,
              'DAEMON_UNREACHABLE',
              `${what}: vmplugd unreachable at ${this.opts.socketPath}: ${err.code ?? err.message}`,
              true,
            ),
          );
      };
      const req = request(
        { socketPath: this.opts.socketPath, method, path: urlPath, headers, signal },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (c: Buffer) => {
            size += c.length;
            if (size > MAX_ANSWER_BYTES)
              req.destroy(new PodApiError(0, 'BAD_RESPONSE', `${what}: answer too large`, false));
            else chunks.push(c);
          });
          res.on('error', fail);
          res.on('end', () => {
            const status = res.statusCode ?? 0;
            let parsed: unknown;
            try {
              const text = Buffer.concat(chunks).toString('utf8');
              parsed = text.length > 0 ? JSON.parse(text) : undefined;
            } catch {
              parsed = undefined;
            }
            if (status < 400) {
              resolve({ status, body: parsed });
              return;
            }
            const p = (parsed ?? {}) as { code?: unknown; detail?: unknown; retryable?: unknown };
            const code = typeof p.code === 'string' ? p.code : `HTTP_${status}`;
            const detail = typeof p.detail === 'string' ? p.detail : `HTTP ${status}`;
            const retryable =
              typeof p.retryable === 'boolean'
                ? p.retryable
                : status === 503 || status === 504 || status === 429 || RETRYABLE_CODES.has(code);
            reject(new PodApiError(status, code, detail, retryable));
          });
        },
      );
      req.on('error', fail);
      req.end(payload);
    });
  }
}

function path(podUid: string, volumeId: string): string {
  return `/v1/pods/${encodeURIComponent(podUid)}/volumes/${encodeURIComponent(volumeId)}`;
}
