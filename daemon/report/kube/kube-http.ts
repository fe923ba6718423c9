/**
 * The few API server calls the reporter makes, over node:https with a timeout and an AbortSignal
 * on every request. @kubernetes/client-node supplies what is hard to get right (kubeconfig and
 * in-cluster loading, CA, client certs, tokens and their refresh, exec/auth plugins) through
 * applyToHTTPSOptions; its generated API classes are not used because they take no AbortSignal.
 */
import { existsSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { KubeConfig } from '@kubernetes/client-node';

export type KubeErrorCode =
  /** No answer: connection refused/reset, DNS, TLS handshake. Retry later. */
  | 'KUBE_UNREACHABLE'
  | 'KUBE_TIMEOUT'
  | 'KUBE_ABORTED'
  /** The server answered with an error status (see `status`). */
  | 'KUBE_HTTP'
  | 'KUBE_CONFIG';

export class KubeError extends Error {
  override readonly name = 'KubeError';
  constructor(
    readonly code: KubeErrorCode,
    message: string,
    readonly status?: number,
  ) {
    super(message);
  }

  /** Worth retrying later: the server was away, overloaded, or failed inside. */
  get retriable(): boolean {
    if (this.code === 'KUBE_HTTP') {
      return this.status === 429 || this.status === undefined || this.status >= 500 || this.status === 408;
    }
    return this.code === 'KUBE_UNREACHABLE' || this.code === 'KUBE_TIMEOUT';
  }
}

export interface KubeResponse {
  status: number;
  body: unknown;
}

export interface KubeRequest {
  method: 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE';
  path: string;
  query?: Record<string, string>;
  body?: unknown;
  contentType?: string;
  signal?: AbortSignal;
  timeoutMs?: number;
}

/** Where the cluster comes from; `none` runs the daemon without reporting. */
export type ClusterSource =
  | { kind: 'kubeconfig'; path: string }
  | { kind: 'in-cluster' }
  | { kind: 'none'; why: string };

const SA_TOKEN = '/var/run/secrets/kubernetes.io/serviceaccount/token';

/**
 * An explicit kubeconfig (flag), then KUBECONFIG, then in-cluster when the pod environment and
 * its service account token are there; otherwise none. No ~/.kube/config fallback: a node agent
 * running as root must not pick up an admin's personal config by accident.
 */
export function resolveClusterSource(
  kubeconfigPath: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
  tokenPath: string = SA_TOKEN,
): ClusterSource {
  if (kubeconfigPath) return { kind: 'kubeconfig', path: kubeconfigPath };
  const fromEnv = env.KUBECONFIG?.split(':').find((p) => p.length > 0);
  if (fromEnv) return { kind: 'kubeconfig', path: fromEnv };
  if (env.KUBERNETES_SERVICE_HOST && env.KUBERNETES_SERVICE_PORT && existsSync(tokenPath)) {
    return { kind: 'in-cluster' };
  }
  return { kind: 'none', why: 'no --kubeconfig, no KUBECONFIG, and not running in a pod' };
}

export interface KubeHttp {
  readonly server: string;
  request(req: KubeRequest): Promise<KubeResponse>;
}

const MAX_BODY_BYTES = 8 * 1024 * 1024;

export async function createKubeHttp(
  source: Exclude<ClusterSource, { kind: 'none' }>,
  defaultTimeoutMs = 10_000,
): Promise<KubeHttp> {
  // Loaded only once a cluster is configured: the library alone takes a Node process from about
  // 40 to 120 MiB, which a node with no cluster to report to should not pay.
  const { KubeConfig } = await import('@kubernetes/client-node');
  const kc = new KubeConfig();
  try {
    if (source.kind === 'kubeconfig') kc.loadFromFile(source.path);
    else kc.loadFromCluster();
  } catch (err) {
    throw new KubeError('KUBE_CONFIG', `cannot load the cluster config: ${(err as Error).message}`);
  }
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new KubeError('KUBE_CONFIG', 'the kubeconfig names no current cluster');
  const server = cluster.server.replace(/\/+$/, '');
  return {
    server,
    request: (req) => send(kc, server, req, defaultTimeoutMs),
  };
}

async function send(kc: KubeConfig, server: string, req: KubeRequest, defaultTimeoutMs: number) {
  const timeoutMs = req.timeoutMs ?? defaultTimeoutMs;
  const timeout = AbortSignal.timeout(timeoutMs);
  const signal = req.signal ? AbortSignal.any([req.signal, timeout]) : timeout;
  const url = new URL(server + req.path);
  for (const [k, v] of Object.entries(req.query ?? {})) url.searchParams.set(k, v);
  const payload = req.body === undefined ? undefined : Buffer.from(JSON.stringify(req.body));
  const opts: https.RequestOptions = {
    method: req.method,
    headers: {
      accept: 'application/json',
      ...(payload ? { 'content-type': req.contentType ?? 'application/json' } : {}),
      ...(payload ? { 'content-length': String(payload.length) } : {}),
    },
  };
  try {
    await kc.applyToHTTPSOptions(opts);
  } catch (err) {
    throw new KubeError('KUBE_CONFIG', `cannot authenticate: ${(err as Error).message}`);
  }
  // client-node hands a fresh agent per call; no keep-alive is wanted at one write a second.
  const mod = url.protocol === 'http:' ? http : https;
  return new Promise<KubeResponse>((resolve, reject) => {
    const fail = (err: Error): void => {
      if (timeout.aborted)
        reject(new KubeError('KUBE_TIMEOUT', `${req.method} ${req.path}: no answer in ${timeoutMs} ms`));
      else if (signal.aborted) reject(new KubeError('KUBE_ABORTED', `${req.method} ${req.path}: aborted`));
      else reject(new KubeError('KUBE_UNREACHABLE', `${req.method} ${req.path}: ${err.message}`));
    };
    const r = mod.request(url, { ...opts, signal }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > MAX_BODY_BYTES) {
          res.destroy(new Error('response body too large'));
          return;
        }
        chunks.push(c);
      });
      res.on('error', fail);
      res.on('end', () => {
        const status = res.statusCode ?? 0;
        const text = Buffer.concat(chunks).toString('utf8');
        let body: unknown = text;
        try {
          body = text ? JSON.parse(text) : undefined;
        } catch {
          // Not JSON (a proxy's error page): keep the text.
        }
        if (status >= 200 && status < 300) {
          resolve({ status, body });
          return;
        }
        const message =
          typeof body === 'object' && body !== null && 'message' in body
            ? String((body as { message: unknown }).message)
            : text.slice(0, 300);
        reject(new KubeError('KUBE_HTTP', `${req.method} ${req.path}: ${status} ${message}`, status));
      });
    });
    r.on('error', fail);
    r.end(payload);
  });
}
