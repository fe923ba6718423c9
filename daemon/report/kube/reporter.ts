import type { LeveledLog } from '../../../core/log.js';
/**
 * Keeps the node's VmplugNode status true in the API server, sends Pod Events, and renews the
 * node's Lease. While the API server is unreachable the daemon goes on serving the node: the
 * status writer holds no backlog (it re-reads the latest snapshot when it can write), events go
 * through a bounded queue, and everything catches up once the server answers again.
 */
import type { Backoff } from './backoff.js';
import { Coalescer, type CoalescerStats } from './coalescer.js';
import { EventSender, type EventSenderStats, type EventType, type PodEventTarget } from './events.js';
import {
  type ClusterSource,
  createKubeHttp,
  KubeError,
  type KubeHttp,
  resolveClusterSource,
} from './kube-http.js';
import { LeaseHeartbeat, type LeaseStats } from './lease.js';
import { type NodeStatusSnapshot, statusHash, toStatus, type VmplugNodeStatus } from './status.js';

export const CRD_GROUP = 'vmplug.io';
export const CRD_VERSION = 'v1alpha1';
export const CRD_PLURAL = 'vmplugnodes';
export const FIELD_MANAGER = 'vmplugd';

/** Where the reporter reads the node's state from. */
export interface SnapshotProvider {
  /** The state now. Called at most about once a second; should be cheap (no I/O). */
  snapshot(): NodeStatusSnapshot;
  /** Calls `listener` whenever the snapshot may have changed; returns the unsubscribe. */
  subscribe(listener: () => void): () => void;
  /**
   * False while the node facts are still being gathered: no status is written before they are
   * complete (or `factsWaitMs` passed), so a restart never applies a half status. Absent = true.
   */
  complete?(): boolean;
}

/** The pino subset the reporter logs with. */
export type ReporterLogger = LeveledLog;

export interface NodeReporterOptions {
  /** Also the CR's name (--node-name, NODE_NAME). */
  nodeName: string;
  provider: SnapshotProvider;
  logger: ReporterLogger;
  /** --kubeconfig; without it KUBECONFIG, then in-cluster, then disabled. */
  kubeconfigPath?: string;
  env?: NodeJS.ProcessEnv;
  /** An API client to use instead of resolving one (tests wrap the real one to count calls). */
  http?: KubeHttp;
  /** Namespace of the heartbeat Lease (default vmplug-system). */
  leaseNamespace?: string;
  /** At most one status write per this many ms (default 1000). */
  minWriteIntervalMs?: number;
  /** Lease renew period (default 10000) and validity (default 40 s). */
  leaseRenewMs?: number;
  leaseDurationSeconds?: number;
  /** Per request (default 10000). */
  requestTimeoutMs?: number;
  /** Pod events kept while the server is away (default 256); the oldest are dropped. */
  maxQueuedEvents?: number;
  /** Retry backoff after failures (default 500 ms doubling to 30 s). */
  backoff?: Backoff;
  /** Rewrite an unchanged status this often, to repair outside edits (default 5 min; 0 = never). */
  resyncMs?: number;
  /** Longest wait for complete node facts before the first status write anyway (default 60 s). */
  factsWaitMs?: number;
}

export interface ReporterHealth {
  enabled: boolean;
  /** False while the last request to the API server failed for want of an answer. */
  reachable: boolean;
  lastError?: string;
  status?: CoalescerStats;
  events?: EventSenderStats;
  lease?: LeaseStats;
}

export interface Reporter {
  readonly enabled: boolean;
  start(): void;
  /** Queues a Kubernetes Event on the Pod (attach, detach, failures). Never throws, never blocks. */
  recordPodEvent(pod: PodEventTarget, reason: string, message: string, type?: EventType): void;
  health(): ReporterHealth;
  /** Resolves once the latest status is written and the event queue is empty (tests, shutdown). */
  flush(): Promise<void>;
  /** Stops, after trying to flush for up to `flushTimeoutMs` (default 2000). */
  stop(opts?: { flushTimeoutMs?: number }): Promise<void>;
}

/**
 * The reporter for this configuration: a live one when a cluster is configured, otherwise one
 * that does nothing and says so once. Throws KubeError KUBE_CONFIG when a kubeconfig is named but
 * cannot be loaded: an operator's explicit setting that does not work should stop the start.
 */
export async function createReporter(o: NodeReporterOptions): Promise<Reporter> {
  if (o.http) return new NodeReporter(o, o.http);
  const source: ClusterSource = resolveClusterSource(o.kubeconfigPath, o.env);
  if (source.kind === 'none') return new DisabledReporter(o.logger, source.why);
  const http = await createKubeHttp(source, o.requestTimeoutMs ?? 10_000);
  o.logger.info({ server: http.server, source: source.kind, node: o.nodeName }, 'reporting to Kubernetes');
  return new NodeReporter(o, http);
}

export class DisabledReporter implements Reporter {
  readonly enabled = false;
  #said = false;
  constructor(
    private readonly log: ReporterLogger,
    private readonly why: string,
  ) {}
  start(): void {
    if (this.#said) return;
    this.#said = true;
    this.log.info({ why: this.why }, 'no Kubernetes cluster configured; not reporting');
  }
  recordPodEvent(): void {}
  health(): ReporterHealth {
    return { enabled: false, reachable: false };
  }
  async flush(): Promise<void> {}
  async stop(): Promise<void> {}
}

export class NodeReporter implements Reporter {
  readonly enabled = true;
  readonly #o: NodeReporterOptions;
  readonly #http: KubeHttp;
  readonly #log: ReporterLogger;
  readonly #status: Coalescer<VmplugNodeStatus>;
  readonly #events: EventSender;
  readonly #lease: LeaseHeartbeat;
  #unsubscribe: (() => void) | undefined;
  #factsDeadline: NodeJS.Timeout | undefined;
  #factsWaitOver = false;
  #reachable = true;
  #lastError: string | undefined;

  constructor(o: NodeReporterOptions, http: KubeHttp) {
    this.#o = o;
    this.#http = http;
    this.#log = o.logger;
    const backoff = o.backoff ?? { initialMs: 500, maxMs: 30_000 };
    const requestTimeoutMs = o.requestTimeoutMs ?? 10_000;
    this.#status = new Coalescer<VmplugNodeStatus>(
      {
        read: () => toStatus(o.provider.snapshot()),
        ready: () => this.#factsWaitOver || (o.provider.complete?.() ?? true),
        hash: statusHash,
        write: (status, signal) => this.#writeStatus(status, signal, requestTimeoutMs),
        onFailure: (err, n) => this.#failed('status', err, n),
        onRecovered: (n) => this.#log.info({ afterFailures: n }, 'node status caught up'),
      },
      { minIntervalMs: o.minWriteIntervalMs ?? 1_000, backoff, resyncMs: o.resyncMs ?? 300_000 },
    );
    this.#events = new EventSender(
      http,
      { nodeName: o.nodeName, maxQueued: o.maxQueuedEvents ?? 256, backoff, requestTimeoutMs },
      this.#log,
    );
    this.#lease = new LeaseHeartbeat(
      http,
      {
        nodeName: o.nodeName,
        namespace: o.leaseNamespace ?? 'vmplug-system',
        renewMs: o.leaseRenewMs ?? 10_000,
        durationSeconds: o.leaseDurationSeconds ?? 40,
        backoff,
        requestTimeoutMs,
      },
      (err) => (err === undefined ? this.#succeeded() : this.#failed('lease', err, 1)),
    );
  }

  start(): void {
    if (this.#unsubscribe) return;
    this.#unsubscribe = this.#o.provider.subscribe(() => this.#status.notify());
    // Facts that never complete (a part systeminformation cannot read here) must not keep the
    // node unreported: after the wait, the status goes out with what there is.
    this.#factsDeadline = setTimeout(() => {
      this.#factsWaitOver = true;
      if (!(this.#o.provider.complete?.() ?? true))
        this.#log.warn({}, 'node facts still incomplete; writing the node status without them');
      this.#status.notify();
    }, this.#o.factsWaitMs ?? 60_000);
    this.#factsDeadline.unref();
    this.#status.start();
    this.#lease.start();
  }

  recordPodEvent(pod: PodEventTarget, reason: string, message: string, type: EventType = 'Normal'): void {
    this.#events.record(pod, reason, message, type);
  }

  health(): ReporterHealth {
    return {
      enabled: true,
      reachable: this.#reachable,
      ...(this.#lastError ? { lastError: this.#lastError } : {}),
      status: this.#status.stats(),
      events: this.#events.stats(),
      lease: this.#lease.stats(),
    };
  }

  async flush(): Promise<void> {
    await Promise.all([this.#status.idle(), this.#events.idle()]);
  }

  async stop(opts: { flushTimeoutMs?: number } = {}): Promise<void> {
    this.#unsubscribe?.();
    clearTimeout(this.#factsDeadline);
    const budget = opts.flushTimeoutMs ?? 2_000;
    if (budget > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        this.flush(),
        new Promise((r) => {
          timer = setTimeout(r, budget);
        }),
      ]);
      clearTimeout(timer);
    }
    await Promise.all([this.#status.stop(), this.#events.stop(), this.#lease.stop()]);
  }

  get #crPath(): string {
    return `/apis/${CRD_GROUP}/${CRD_VERSION}/${CRD_PLURAL}/${encodeURIComponent(this.#o.nodeName)}`;
  }

  async #writeStatus(status: VmplugNodeStatus, signal: AbortSignal, timeoutMs: number): Promise<void> {
    const apply = () =>
      this.#http.request({
        method: 'PATCH',
        path: `${this.#crPath}/status`,
        query: { fieldManager: FIELD_MANAGER, force: 'true' },
        contentType: 'application/apply-patch+yaml',
        body: {
          apiVersion: `${CRD_GROUP}/${CRD_VERSION}`,
          kind: 'VmplugNode',
          metadata: { name: this.#o.nodeName },
          status,
        },
        signal,
        timeoutMs,
      });
    try {
      await apply();
    } catch (err) {
      // Applying /status cannot create the object: create it, then apply again.
      if (!(err instanceof KubeError && err.status === 404)) throw err;
      await this.#createNode(signal, timeoutMs);
      await apply();
    }
    this.#succeeded();
  }

  async #createNode(signal: AbortSignal, timeoutMs: number): Promise<void> {
    try {
      await this.#http.request({
        method: 'POST',
        path: `/apis/${CRD_GROUP}/${CRD_VERSION}/${CRD_PLURAL}`,
        query: { fieldManager: FIELD_MANAGER },
        body: {
          apiVersion: `${CRD_GROUP}/${CRD_VERSION}`,
          kind: 'VmplugNode',
          metadata: { name: this.#o.nodeName, labels: { 'app.kubernetes.io/managed-by': 'vmplugd' } },
          spec: {},
        },
        signal,
        timeoutMs,
      });
      this.#log.info({ node: this.#o.nodeName }, 'created the VmplugNode');
    } catch (err) {
      if (err instanceof KubeError && err.status === 409) return; // Created meanwhile.
      if (err instanceof KubeError && err.status === 404) {
        throw new KubeError('KUBE_HTTP', `${err.message} (is deploy/crd-vmplugnode.yaml installed?)`, 404);
      }
      throw err;
    }
  }

  #succeeded(): void {
    if (!this.#reachable) this.#log.info({}, 'Kubernetes API server reachable again');
    this.#reachable = true;
    this.#lastError = undefined;
  }

  /** Logs transitions, not every retry: an outage gives one line, not one per backoff step. */
  #failed(what: 'status' | 'lease', err: unknown, consecutive: number): void {
    const message = err instanceof Error ? err.message : String(err);
    this.#lastError = message;
    const retriable = err instanceof KubeError && err.retriable;
    if (retriable) {
      if (this.#reachable) {
        this.#log.warn(
          { err: message, what },
          'Kubernetes API server unreachable; serving on, will catch up',
        );
      }
      this.#reachable = false;
    } else {
      this.#log.warn({ err: message, what, consecutive }, 'Kubernetes API server refused a write; retrying');
    }
  }
}
