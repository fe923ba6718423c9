/**
 * Kubernetes Events on Pods (attach, detach, failures), sent in order through a bounded queue:
 * while the API server is away the newest events are kept and the oldest dropped (and counted),
 * so an outage costs bounded memory and the events that arrive late are the most recent ones.
 */
import { randomBytes } from 'node:crypto';
import { backoffDelay, type RequestTiming } from './backoff.js';
import type { KubeHttp } from './kube-http.js';
import { KubeError } from './kube-http.js';

export interface PodEventTarget {
  podUid?: string;
  podName: string;
  namespace: string;
}

export type EventType = 'Normal' | 'Warning';

export interface PodEvent {
  target: PodEventTarget;
  reason: string;
  message: string;
  type: EventType;
  /** When it happened (ms since epoch), not when it was sent. */
  at: number;
  /** Chosen once, so a retried POST whose answer was lost finds its 409 instead of a duplicate. */
  name: string;
}

export interface EventSenderOptions extends RequestTiming {
  nodeName: string;
  maxQueued: number;
}

export interface EventSenderStats {
  sent: number;
  /** Dropped because the queue was full (oldest first). */
  dropped: number;
  /** Refused by the server for good (e.g. the namespace is gone, forbidden): not retried. */
  rejected: number;
  queued: number;
}

export interface EventLogger {
  warn(obj: Record<string, unknown>, msg: string): void;
  debug(obj: Record<string, unknown>, msg: string): void;
}

// Answers that no retry can change: the namespace or Pod is gone, the event is invalid.
const PERMANENT = new Set([400, 404, 410, 422]);
// Other refusals (401/403 while an apiserver starts and loads RBAC, token rotation) are retried
// this many times before the event is given up.
const MAX_REFUSALS = 8;

// The API server rejects longer messages (events are for humans, not logs).
const MAX_MESSAGE = 1024;
const MAX_REASON = 128;

/** A bounded FIFO that drops its oldest item to make room; counts the drops. */
export class DropOldestQueue<T> {
  readonly #items: T[] = [];
  #dropped = 0;
  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError('capacity must be >= 1');
  }
  push(item: T): void {
    if (this.#items.length >= this.capacity) {
      this.#items.shift();
      this.#dropped++;
    }
    this.#items.push(item);
  }
  peek(): T | undefined {
    return this.#items[0];
  }
  shift(): T | undefined {
    return this.#items.shift();
  }
  get length(): number {
    return this.#items.length;
  }
  get dropped(): number {
    return this.#dropped;
  }
}

export function microTime(ms: number): string {
  // MicroTime wants six fractional digits; JS has milliseconds.
  return new Date(ms).toISOString().replace(/Z$/, '000Z');
}

/** The core/v1 Event body for one pod event. */
export function podEventBody(e: PodEvent, nodeName: string): Record<string, unknown> {
  const ts = new Date(e.at).toISOString().replace(/\.\d{3}Z$/, 'Z');
  return {
    apiVersion: 'v1',
    kind: 'Event',
    metadata: {
      name: e.name,
      namespace: e.target.namespace,
    },
    involvedObject: {
      apiVersion: 'v1',
      kind: 'Pod',
      name: e.target.podName,
      namespace: e.target.namespace,
      ...(e.target.podUid ? { uid: e.target.podUid } : {}),
    },
    reason: e.reason.slice(0, MAX_REASON),
    message: e.message.slice(0, MAX_MESSAGE),
    type: e.type,
    count: 1,
    firstTimestamp: ts,
    lastTimestamp: ts,
    eventTime: null,
    source: { component: 'vmplugd', host: nodeName },
    reportingComponent: 'vmplug.io/vmplugd',
    reportingInstance: nodeName,
  };
}

export class EventSender {
  readonly #http: KubeHttp;
  readonly #o: EventSenderOptions;
  readonly #log: EventLogger;
  readonly #queue: DropOldestQueue<PodEvent>;
  readonly #abort = new AbortController();
  readonly #now: () => number;
  #timer: NodeJS.Timeout | undefined;
  #pumping: Promise<void> | undefined;
  #failures = 0;
  #refusals = 0;
  #sent = 0;
  #rejected = 0;
  #stopped = false;
  #idleWaiters: (() => void)[] = [];

  constructor(http: KubeHttp, options: EventSenderOptions, log: EventLogger) {
    this.#http = http;
    this.#o = options;
    this.#log = log;
    this.#queue = new DropOldestQueue(options.maxQueued);
    this.#now = options.now ?? Date.now;
  }

  record(target: PodEventTarget, reason: string, message: string, type: EventType): void {
    if (this.#stopped) return;
    // Named as kubelet names events: the object's name and a unique suffix.
    // (object names stop at 253 characters; the suffix takes 17).
    const name = `${target.podName.slice(0, 236)}.${randomBytes(8).toString('hex')}`;
    this.#queue.push({ target, reason, message, type, at: this.#now(), name });
    if (!this.#timer && !this.#pumping) this.#kick(0);
  }

  stats(): EventSenderStats {
    return {
      sent: this.#sent,
      dropped: this.#queue.dropped,
      rejected: this.#rejected,
      queued: this.#queue.length,
    };
  }

  idle(): Promise<void> {
    if (this.#queue.length === 0 && !this.#pumping) return Promise.resolve();
    return new Promise((r) => this.#idleWaiters.push(r));
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#abort.abort();
    await this.#pumping;
    for (const w of this.#idleWaiters.splice(0)) w();
  }

  #kick(delayMs: number): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#pumping = this.#pump().finally(() => {
        this.#pumping = undefined;
        // An event recorded between the loop's last look and here would otherwise wait.
        if (this.#queue.length > 0 && !this.#timer) this.#kick(0);
        else if (this.#queue.length === 0) for (const w of this.#idleWaiters.splice(0)) w();
      });
    }, delayMs);
  }

  async #pump(): Promise<void> {
    for (let e = this.#queue.peek(); e && !this.#stopped; e = this.#queue.peek()) {
      try {
        await this.#http.request({
          method: 'POST',
          path: `/api/v1/namespaces/${encodeURIComponent(e.target.namespace)}/events`,
          body: podEventBody(e, this.#o.nodeName),
          signal: this.#abort.signal,
          timeoutMs: this.#o.requestTimeoutMs,
        });
        this.#sent++;
        this.#failures = 0;
        this.#refusals = 0;
      } catch (err) {
        if (this.#stopped) return;
        const status = err instanceof KubeError ? err.status : undefined;
        const refused = err instanceof KubeError && !err.retriable;
        if (status === 409) {
          // Already there (a retry of a POST whose answer was lost).
          this.#sent++;
        } else if (refused && (PERMANENT.has(status ?? 0) || ++this.#refusals >= MAX_REFUSALS)) {
          this.#rejected++;
          this.#refusals = 0;
          this.#log.warn(
            {
              err: (err as Error).message,
              reason: e.reason,
              pod: `${e.target.namespace}/${e.target.podName}`,
            },
            'pod event refused by the API server; dropped',
          );
        } else {
          // Leave it at the head; a full queue may still drop it for a newer one meanwhile.
          this.#failures++;
          const delay = backoffDelay(this.#o.backoff, this.#failures);
          this.#log.debug({ err: (err as Error).message, retryInMs: delay }, 'pod event not sent yet');
          this.#kick(delay);
          return;
        }
      }
      // The head may have been dropped by a push while we were sending; only shift what we sent.
      if (this.#queue.peek() === e) this.#queue.shift();
    }
  }
}
