/**
 * A coordination.k8s.io/v1 Lease renewed every few seconds: the cluster's way to tell that
 * vmplugd on a node is alive (the CR status only changes when something happens). Written by
 * server-side apply, so create and renew are one idempotent request.
 */
import { backoffDelay, type RequestTiming } from './backoff.js';
import { microTime } from './events.js';
import type { KubeHttp } from './kube-http.js';

export interface LeaseOptions extends RequestTiming {
  nodeName: string;
  namespace: string;
  /** Lease name; default vmplug-<node>. */
  name?: string;
  renewMs: number;
  /** How long the lease is valid without renewal; a few renew periods. */
  durationSeconds: number;
}

export interface LeaseStats {
  renewals: number;
  failures: number;
  lastRenewAt?: number;
}

export function leaseBody(o: LeaseOptions, name: string, acquiredAt: number, now: number) {
  return {
    apiVersion: 'coordination.k8s.io/v1',
    kind: 'Lease',
    metadata: { name, namespace: o.namespace, labels: { 'app.kubernetes.io/name': 'vmplugd' } },
    spec: {
      holderIdentity: o.nodeName,
      leaseDurationSeconds: o.durationSeconds,
      acquireTime: microTime(acquiredAt),
      renewTime: microTime(now),
    },
  };
}

export class LeaseHeartbeat {
  readonly #http: KubeHttp;
  readonly #o: LeaseOptions;
  readonly #name: string;
  readonly #now: () => number;
  readonly #abort = new AbortController();
  readonly #acquiredAt: number;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #failures = 0;
  #stopped = false;
  readonly #stats: LeaseStats = { renewals: 0, failures: 0 };
  readonly #onResult: (err: unknown | undefined) => void;

  constructor(http: KubeHttp, options: LeaseOptions, onResult: (err: unknown | undefined) => void) {
    this.#http = http;
    this.#o = options;
    this.#name = options.name ?? `vmplug-${options.nodeName}`;
    this.#now = options.now ?? Date.now;
    this.#acquiredAt = this.#now();
    this.#onResult = onResult;
  }

  get name(): string {
    return this.#name;
  }

  start(): void {
    if (!this.#timer && !this.#running) this.#schedule(0);
  }

  stats(): LeaseStats {
    return { ...this.#stats };
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#abort.abort();
    await this.#running;
  }

  #schedule(delayMs: number): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#running = this.#renew().finally(() => {
        this.#running = undefined;
      });
    }, delayMs);
  }

  async #renew(): Promise<void> {
    const path = `/apis/coordination.k8s.io/v1/namespaces/${encodeURIComponent(this.#o.namespace)}/leases/${encodeURIComponent(this.#name)}`;
    try {
      await this.#http.request({
        method: 'PATCH',
        path,
        query: { fieldManager: 'vmplugd', force: 'true' },
        contentType: 'application/apply-patch+yaml',
        body: leaseBody(this.#o, this.#name, this.#acquiredAt, this.#now()),
        signal: this.#abort.signal,
        timeoutMs: this.#o.requestTimeoutMs,
      });
      this.#stats.renewals++;
      this.#stats.lastRenewAt = this.#now();
      this.#failures = 0;
      this.#onResult(undefined);
      this.#schedule(this.#o.renewMs);
    } catch (err) {
      if (this.#stopped) return;
      this.#stats.failures++;
      this.#failures++;
      this.#onResult(err);
      // Retry sooner than the renew period, but never faster than the backoff allows.
      const backoff = backoffDelay(this.#o.backoff, this.#failures);
      this.#schedule(Math.min(backoff, this.#o.renewMs));
    }
  }
}
