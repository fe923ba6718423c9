import { request } from 'node:http';
import type {
  Attachment,
  AttachRequest,
  AttachResponse,
  GuestResizeRequest,
  GuestResources,
  Nic,
  NicRequest,
  PodVolume,
  PublishRequest,
  PublishResponse,
  Sandbox,
} from '../api/index.js';
import { podVolumePath } from '../api/index.js';

// A typed client of vmplugd's REST API over its unix socket, for the `vmplug` CLI and for a CSI
// node plugin written in TypeScript. Only node:http: importing it pulls in no server code. Every
// call is bounded by a timeout and can be aborted; an error answer (application/problem+json)
// becomes a VmplugApiError with the server's stable `code`, and a transport failure a
// VmplugTransportError, both with `retryable` so a caller knows whether trying again can help.

export type {
  Attachment,
  AttachmentSource,
  AttachRequest,
  AttachResponse,
  AttachSourceRequest,
  GuestResizeRequest,
  GuestResources,
  Nic,
  NicRequest,
  PodRef,
  RbdSourceRequest,
  Sandbox,
  SandboxState,
} from '../api/index.js';

export const DEFAULT_SOCKET = '/run/vmplug/vmplug.sock';
export const DEFAULT_TIMEOUT_MS = 60_000;
/** Answers larger than this are refused (a sandbox list of a busy node is well under 1 MiB). */
const MAX_RESPONSE_BYTES = 16 * 1024 * 1024;

export interface VmplugClientOptions {
  /** Default /run/vmplug/vmplug.sock. */
  socketPath?: string;
  /** Default bound of every call, in ms (default 60 s: an attach waits for QEMU and Ceph). */
  timeoutMs?: number;
}

export interface CallOptions {
  signal?: AbortSignal;
  /** Overrides the client's timeout for this call. */
  timeoutMs?: number;
  /** Sent as x-request-id: the daemon logs it on every line of the operation. */
  requestId?: string;
}

/** The daemon answered with an error (problem+json). */
export class VmplugApiError extends Error {
  readonly status: number;
  /** Stable code, e.g. INVALID_FIELD, NOT_FOUND, SPEC_CONFLICT, DETACH_PENDING, NOT_READY. */
  readonly code: string;
  /** The offending request field, where there is one (`source.monitors[1]`). */
  readonly field: string | undefined;
  readonly requestId: string | undefined;
  /** True when the same call may succeed later unchanged (503, DETACH_PENDING, CEPH_UNREACHABLE...). */
  readonly retryable: boolean;

  constructor(p: {
    status: number;
    code: string;
    detail: string;
    field?: string;
    requestId?: string;
    retryable?: boolean;
  }) {
    super(p.detail);
    this.name = 'VmplugApiError';
    this.status = p.status;
    this.code = p.code;
    this.field = p.field;
    this.requestId = p.requestId;
    // The daemon says so in the problem; older daemons did not, so fall back to status and code.
    this.retryable = p.retryable ?? isRetryable(p.status, p.code);
  }
}

export type TransportCode =
  | 'DAEMON_UNREACHABLE'
  | 'PERMISSION_DENIED'
  | 'TIMEOUT'
  | 'ABORTED'
  | 'BAD_RESPONSE';

/** The call did not get an answer: no daemon on the socket, timeout, abort, or an unreadable answer. */
export class VmplugTransportError extends Error {
  readonly retryable: boolean;

  constructor(
    readonly code: TransportCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'VmplugTransportError';
    // A daemon restarting or a slow operation: worth retrying. A garbled answer or the caller's own
    // abort: not.
    this.retryable = code === 'DAEMON_UNREACHABLE' || code === 'TIMEOUT';
  }
}

const RETRYABLE_CODES = new Set(['DETACH_PENDING', 'CEPH_UNREACHABLE', 'NOT_READY', 'SHUTTING_DOWN']);

export function isRetryable(status: number, code: string): boolean {
  return status === 503 || status === 504 || status === 429 || RETRYABLE_CODES.has(code);
}

interface RawResponse {
  status: number;
  contentType: string;
  body: unknown;
}

export class VmplugClient {
  readonly socketPath: string;
  readonly timeoutMs: number;

  constructor(opts: VmplugClientOptions = {}) {
    this.socketPath = opts.socketPath ?? DEFAULT_SOCKET;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  /** PUT: idempotent attach. */
  async attach(
    sandboxId: string,
    volumeId: string,
    body: AttachRequest,
    opts: CallOptions = {},
  ): Promise<AttachResponse> {
    const { created, body: attachment } = await this.#put<Attachment>(
      volumePath(sandboxId, volumeId),
      body,
      opts,
    );
    return { created, attachment };
  }

  /** DELETE: idempotent detach (also fine when the volume is unknown). */
  async detach(sandboxId: string, volumeId: string, opts: CallOptions = {}): Promise<void> {
    await this.#call('DELETE', volumePath(sandboxId, volumeId), undefined, opts);
  }

  async get(sandboxId: string, volumeId: string, opts: CallOptions = {}): Promise<Attachment> {
    return this.#get<Attachment>(volumePath(sandboxId, volumeId), opts);
  }

  async resize(
    sandboxId: string,
    volumeId: string,
    sizeBytes: number,
    opts: CallOptions = {},
  ): Promise<Attachment> {
    const res = await this.#call('POST', `${volumePath(sandboxId, volumeId)}/resize`, { sizeBytes }, opts);
    return res.body as Attachment;
  }

  /** Publishes a volume for a Kata pod (PUT /v1/pods/{podUid}/volumes/{volumeId}). */
  async publish(
    podUid: string,
    volumeId: string,
    body: PublishRequest,
    opts: CallOptions = {},
  ): Promise<PublishResponse> {
    const { created, body: volume } = await this.#put<PodVolume>(podVolumePath(podUid, volumeId), body, opts);
    return { created, volume };
  }

  /** Unpublishes (idempotent: also fine when unknown). */
  async unpublish(podUid: string, volumeId: string, opts: CallOptions = {}): Promise<void> {
    await this.#call('DELETE', podVolumePath(podUid, volumeId), undefined, opts);
  }

  async getPodVolume(podUid: string, volumeId: string, opts: CallOptions = {}): Promise<PodVolume> {
    return this.#get<PodVolume>(podVolumePath(podUid, volumeId), opts);
  }

  /** Online expand of a published pod volume (POST /v1/pods/{podUid}/volumes/{volumeId}/resize). */
  async resizePodVolume(
    podUid: string,
    volumeId: string,
    sizeBytes: number,
    opts: CallOptions = {},
  ): Promise<PodVolume> {
    const res = await this.#call('POST', `${podVolumePath(podUid, volumeId)}/resize`, { sizeBytes }, opts);
    return res.body as PodVolume;
  }

  async listPodVolumes(podUid: string, opts: CallOptions = {}): Promise<PodVolume[]> {
    return (await this.#get<{ items: PodVolume[] }>(podVolumePath(podUid), opts)).items;
  }

  /** PUT: idempotent NIC hot-plug. */
  async attachNic(
    sandboxId: string,
    nicId: string,
    body: NicRequest,
    opts: CallOptions = {},
  ): Promise<{ created: boolean; nic: Nic }> {
    const { created, body: nic } = await this.#put<Nic>(nicPath(sandboxId, nicId), body, opts);
    return { created, nic };
  }

  /** DELETE: idempotent NIC unplug (also fine when the NIC is unknown). */
  async detachNic(sandboxId: string, nicId: string, opts: CallOptions = {}): Promise<void> {
    await this.#call('DELETE', nicPath(sandboxId, nicId), undefined, opts);
  }

  async getNic(sandboxId: string, nicId: string, opts: CallOptions = {}): Promise<Nic> {
    return this.#get<Nic>(nicPath(sandboxId, nicId), opts);
  }

  /** A guest's vCPUs and memory (GET .../resources). */
  async guestResources(sandboxId: string, opts: CallOptions = {}): Promise<GuestResources> {
    const path = `/v1/sandboxes/${encodeURIComponent(sandboxId)}/resources`;
    return this.#get<GuestResources>(path, opts);
  }

  /** Hot-resize of a guest in place (PATCH .../resources); absent fields stay as they are. */
  async resizeGuest(
    sandboxId: string,
    target: GuestResizeRequest,
    opts: CallOptions = {},
  ): Promise<GuestResources> {
    const path = `/v1/sandboxes/${encodeURIComponent(sandboxId)}/resources`;
    return (await this.#call('PATCH', path, target, opts)).body as GuestResources;
  }

  async listSandboxes(filter: { podUid?: string } = {}, opts: CallOptions = {}): Promise<Sandbox[]> {
    const q = filter.podUid === undefined ? '' : `?podUid=${encodeURIComponent(filter.podUid)}`;
    return (await this.#get<{ items: Sandbox[] }>(`/v1/sandboxes${q}`, opts)).items;
  }

  async getSandbox(sandboxId: string, opts: CallOptions = {}): Promise<Sandbox> {
    return (await this.#call('GET', `/v1/sandboxes/${encodeURIComponent(sandboxId)}`, undefined, opts))
      .body as Sandbox;
  }

  /** Node facts (GET /v1/node). */
  async node(opts: CallOptions = {}): Promise<Record<string, unknown>> {
    return (await this.#call('GET', '/v1/node', undefined, opts)).body as Record<string, unknown>;
  }

  /** Liveness (GET /healthz): resolves when the daemon answers. */
  async live(opts: CallOptions = {}): Promise<void> {
    await this.#call('GET', '/healthz', undefined, opts);
  }

  /** Readiness: resolves with the named checks, or throws VmplugApiError NOT_READY. */
  async ready(opts: CallOptions = {}): Promise<Record<string, { ok: boolean; detail?: string }>> {
    return (
      (await this.#call('GET', '/readyz', undefined, opts)).body as {
        checks: Record<string, { ok: boolean }>;
      }
    ).checks;
  }

  /** An idempotent PUT: 201 when it created the resource, 200 when it was already there. */
  async #put<T>(path: string, body: unknown, opts: CallOptions): Promise<{ created: boolean; body: T }> {
    const res = await this.#call('PUT', path, body, opts);
    return { created: res.status === 201, body: res.body as T };
  }

  async #get<T>(path: string, opts: CallOptions): Promise<T> {
    return (await this.#call('GET', path, undefined, opts)).body as T;
  }

  async #call(method: string, path: string, body: unknown, opts: CallOptions): Promise<RawResponse> {
    const res = await this.#send(method, path, body, opts);
    if (res.status >= 400) throw apiError(res);
    return res;
  }

  #send(method: string, path: string, body: unknown, opts: CallOptions): Promise<RawResponse> {
    const timeoutMs = opts.timeoutMs ?? this.timeoutMs;
    const timeout = AbortSignal.timeout(timeoutMs);
    const signal = opts.signal === undefined ? timeout : AbortSignal.any([opts.signal, timeout]);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const what = `${method} ${path}`;
    return new Promise<RawResponse>((resolve, reject) => {
      if (signal.aborted) {
        reject(abortError(what, opts.signal, timeoutMs));
        return;
      }
      const headers: Record<string, string | number> = { accept: 'application/json' };
      if (payload !== undefined) {
        headers['content-type'] = 'application/json';
        headers['content-length'] = payload.length;
      }
      if (opts.requestId !== undefined) headers['x-request-id'] = opts.requestId;
      const req = request({ socketPath: this.socketPath, method, path, headers, signal }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_RESPONSE_BYTES) {
            req.destroy(
              new VmplugTransportError(
                'BAD_RESPONSE',
                `${what}: answer larger than ${MAX_RESPONSE_BYTES} bytes`,
              ),
            );
            return;
          }
          chunks.push(c);
        });
        res.on('error', (err) =>
          reject(transportError(err, what, signal, opts.signal, timeoutMs, this.socketPath)),
        );
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          const contentType = String(res.headers['content-type'] ?? '');
          let parsed: unknown;
          if (text.length > 0) {
            try {
              parsed = JSON.parse(text);
            } catch {
              if ((res.statusCode ?? 0) < 400) {
                reject(new VmplugTransportError('BAD_RESPONSE', `${what}: the answer is not JSON`));
                return;
              }
              parsed = undefined;
            }
          }
          resolve({ status: res.statusCode ?? 0, contentType, body: parsed });
        });
      });
      req.on('error', (err) =>
        reject(transportError(err, what, signal, opts.signal, timeoutMs, this.socketPath)),
      );
      req.end(payload);
    });
  }
}

function volumePath(sandboxId: string, volumeId: string): string {
  return `/v1/sandboxes/${encodeURIComponent(sandboxId)}/volumes/${encodeURIComponent(volumeId)}`;
}

function nicPath(sandboxId: string, nicId: string): string {
  return `/v1/sandboxes/${encodeURIComponent(sandboxId)}/nics/${encodeURIComponent(nicId)}`;
}

function apiError(res: RawResponse): VmplugApiError {
  const b = res.body as Record<string, unknown> | undefined;
  const isProblem = typeof b === 'object' && b !== null && typeof b.code === 'string';
  const p: ConstructorParameters<typeof VmplugApiError>[0] = {
    status: res.status,
    code: isProblem ? (b.code as string) : `HTTP_${res.status}`,
    detail: isProblem && typeof b.detail === 'string' ? b.detail : `vmplugd answered HTTP ${res.status}`,
  };
  if (isProblem && typeof b.field === 'string') p.field = b.field;
  if (isProblem && typeof b.requestId === 'string') p.requestId = b.requestId;
  if (isProblem && typeof b.retryable === 'boolean') p.retryable = b.retryable;
  return new VmplugApiError(p);
}

function abortError(
  what: string,
  callerSignal: AbortSignal | undefined,
  timeoutMs: number,
): VmplugTransportError {
  if (callerSignal?.aborted)
    return new VmplugTransportError('ABORTED', `${what}: aborted`, { cause: callerSignal.reason });
  return new VmplugTransportError('TIMEOUT', `${what}: no answer within ${timeoutMs} ms`);
}

function transportError(
  err: unknown,
  what: string,
  signal: AbortSignal,
  callerSignal: AbortSignal | undefined,
  timeoutMs: number,
  socketPath: string,
): VmplugTransportError {
  if (err instanceof VmplugTransportError) return err;
  if (signal.aborted) return abortError(what, callerSignal, timeoutMs);
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'EACCES' || code === 'EPERM') {
    return new VmplugTransportError(
      'PERMISSION_DENIED',
      `${what}: no permission to use ${socketPath} (run as root or as a member of the socket's group)`,
      { cause: err },
    );
  }
  if (code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'ECONNRESET' || code === 'EPIPE') {
    const hint = code === 'ENOENT' || code === 'ECONNREFUSED' ? ' (is vmplugd running?)' : '';
    return new VmplugTransportError(
      'DAEMON_UNREACHABLE',
      `${what}: cannot reach vmplugd at ${socketPath}: ${code}${hint}`,
      {
        cause: err,
      },
    );
  }
  return new VmplugTransportError('BAD_RESPONSE', `${what}: ${(err as Error).message}`, { cause: err });
}

export type { PodVolume, PodVolumeState, PublishRequest, PublishResponse } from '../api/index.js';
