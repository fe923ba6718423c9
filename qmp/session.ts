import { type BackoffOptions, backoffDelay } from './backoff.js';
import { DEFAULT_CONNECT_TIMEOUT_MS, QmpClient } from './client.js';
import { armDeadline, type CallOptions, delay } from './deadline.js';
import { QmpClosedError, QmpError, QmpTimeoutError } from './errors.js';
import {
  callListener,
  type EventData,
  EventHub,
  type EventListener,
  type QmpEventWaiter,
  reportListenerError,
  type Unsubscribe,
  type WaitForOptions,
} from './events.js';
import type { QmpExecutor } from './executor.js';
import type { QmpEvent, QmpGreeting } from './messages.js';
import type { QmpProtocolOptions } from './protocol.js';

export type QmpSessionState = 'connecting' | 'ready' | 'closed';

export interface QmpSessionStateChange {
  state: QmpSessionState;
  /** Counts connections made ready so far; a new value means QEMU may have restarted. */
  generation: number;
  /** Why the session is (re)connecting or closed, when there is a reason. */
  error?: QmpError;
}

export interface QmpSessionOptions extends QmpProtocolOptions {
  /** Per connect attempt (socket, greeting, negotiation). */
  connectTimeoutMs?: number;
  greetingTimeoutMs?: number;
  backoff?: BackoffOptions;
  /** Consecutive failed attempts after which the session closes; default: never give up. */
  maxAttempts?: number;
  /** A connection that lived this long resets the backoff (default 5000 ms). */
  stableAfterMs?: number;
  /** Source of jitter, for deterministic tests. */
  random?: () => number;
}

/**
 * A long-lived QMP connection to one monitor socket: it reconnects with bounded, jittered
 * backoff whenever the connection drops (QEMU restarted, socket busy or gone), and keeps its
 * event subscribers and waiters across connections. Commands in flight when a connection drops
 * fail with QMP_CLOSED and are not replayed: QMP commands are not idempotent.
 */
export class QmpSession implements QmpExecutor {
  private readonly hub: EventHub;
  private readonly stateListeners = new Set<(change: QmpSessionStateChange) => void>();
  private readonly stopper = new AbortController();
  private readonly defaultTimeoutMs: number;
  private client: QmpClient | undefined;
  private currentState: QmpSessionState = 'connecting';
  private gen = 0;
  private lastErr: QmpError | undefined;
  private loop: Promise<void> = Promise.resolve();

  private constructor(
    readonly path: string,
    private readonly opts: QmpSessionOptions,
  ) {
    this.defaultTimeoutMs = opts.defaultTimeoutMs ?? 10_000;
    this.hub = new EventHub(this.defaultTimeoutMs, opts.onListenerError ?? reportListenerError);
  }

  /** Creates the session and starts connecting in the background. */
  static start(path: string, opts: QmpSessionOptions = {}): QmpSession {
    const s = new QmpSession(path, opts);
    s.loop = s.run();
    return s;
  }

  get state(): QmpSessionState {
    return this.currentState;
  }

  get generation(): number {
    return this.gen;
  }

  get lastError(): QmpError | undefined {
    return this.lastErr;
  }

  /** The greeting of the current connection. */
  get greeting(): QmpGreeting | undefined {
    return this.client?.greeting;
  }

  /** Told of every transition, and of every failed attempt while connecting (with its error). */
  onStateChange(listener: (change: QmpSessionStateChange) => void): Unsubscribe {
    this.stateListeners.add(listener);
    return () => this.stateListeners.delete(listener);
  }

  /** Resolves when a negotiated connection is up; the deadline bounds the wait. */
  async ready(opts: CallOptions = {}): Promise<void> {
    await this.readyClient('ready', opts.timeoutMs ?? this.defaultTimeoutMs, opts.signal);
  }

  /** Waits for readiness and runs the command, both within one `timeoutMs`. */
  async execute<T = unknown>(command: string, args?: object, opts: CallOptions = {}): Promise<T> {
    const timeoutMs = opts.timeoutMs ?? this.defaultTimeoutMs;
    const started = performance.now();
    const client = this.usableClient() ?? (await this.readyClient(command, timeoutMs, opts.signal));
    const remaining = Math.max(0, timeoutMs - (performance.now() - started));
    return client.execute<T>(
      command,
      args,
      opts.signal ? { timeoutMs: remaining, signal: opts.signal } : { timeoutMs: remaining },
    );
  }

  subscribe<N extends string>(name: N, listener: EventListener<EventData<N>>): Unsubscribe {
    return this.hub.subscribe(name, listener);
  }

  /** Survives reconnects; events emitted while disconnected are lost, so bound the wait. */
  waitFor<N extends string>(
    name: N,
    predicate?: (event: QmpEvent<EventData<N>>) => boolean,
    opts?: WaitForOptions,
  ): QmpEventWaiter<QmpEvent<EventData<N>>> {
    return this.hub.waitFor(name, predicate, opts);
  }

  /** Stops reconnecting, closes the connection, fails waiters; resolves when all is let go. */
  async close(): Promise<void> {
    if (!this.stopper.signal.aborted) this.stopper.abort();
    const client = this.client;
    if (client !== undefined) await client.close();
    await this.loop;
  }

  private readyClient(
    operation: string,
    timeoutMs: number,
    signal: AbortSignal | undefined,
  ): Promise<QmpClient> {
    const current = this.usableClient();
    if (current !== undefined) return Promise.resolve(current);
    if (this.currentState === 'closed') return Promise.reject(new QmpClosedError(operation, this.lastErr));
    const started = performance.now();
    return new Promise<QmpClient>((resolve, reject) => {
      const unsubscribe = this.onStateChange((change) => {
        if (change.state === 'ready' && this.client !== undefined) {
          done();
          resolve(this.client);
        } else if (change.state === 'closed') {
          done();
          reject(new QmpClosedError(operation, change.error));
        }
      });
      const disarm = armDeadline(operation, timeoutMs, signal, (err) => {
        unsubscribe();
        // Say why it never got ready (busy monitor, socket gone), not just that time ran out.
        reject(
          err instanceof QmpTimeoutError && this.lastErr !== undefined
            ? new QmpTimeoutError(operation, Math.round(performance.now() - started), this.lastErr)
            : err,
        );
      });
      function done(): void {
        unsubscribe();
        disarm();
      }
    });
  }

  // Between the socket closing and the loop noticing, the old client is still set: skip it.
  private usableClient(): QmpClient | undefined {
    const c = this.client;
    return c !== undefined && !c.closed ? c : undefined;
  }

  private async run(): Promise<void> {
    const signal = this.stopper.signal;
    const stableAfterMs = this.opts.stableAfterMs ?? 5_000;
    let failures = 0;
    while (!signal.aborted) {
      let client: QmpClient;
      try {
        client = await QmpClient.connect(this.path, {
          timeoutMs: this.opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
          signal,
          defaultTimeoutMs: this.defaultTimeoutMs,
          ...(this.opts.greetingTimeoutMs !== undefined
            ? { greetingTimeoutMs: this.opts.greetingTimeoutMs }
            : {}),
          ...(this.opts.maxMessageBytes !== undefined ? { maxMessageBytes: this.opts.maxMessageBytes } : {}),
          ...(this.opts.onListenerError !== undefined ? { onListenerError: this.opts.onListenerError } : {}),
        });
      } catch (err) {
        if (signal.aborted) break;
        failures++;
        this.lastErr = asQmpError(err);
        if (failures >= (this.opts.maxAttempts ?? Number.POSITIVE_INFINITY)) break;
        this.setState('connecting', this.lastErr);
        await this.pause(failures - 1);
        continue;
      }
      if (signal.aborted) {
        client.destroy();
        break;
      }
      const readyAt = performance.now();
      const closed = new Promise<QmpError>((resolve) => client.onClose(resolve));
      const unsubscribe = client.subscribe('*', (event) => this.hub.emit(event));
      this.client = client;
      this.gen++;
      this.setState('ready');
      const err = await closed;
      unsubscribe();
      this.client = undefined;
      if (signal.aborted) break;
      this.lastErr = err;
      // A connection that drops right after negotiating must not make the loop spin.
      failures = performance.now() - readyAt >= stableAfterMs ? 0 : failures + 1;
      this.setState('connecting', err);
      await this.pause(failures);
    }
    const closedErr = new QmpClosedError('session', this.lastErr);
    this.setState('closed', this.stopper.signal.aborted ? undefined : this.lastErr);
    this.hub.failWaiters(closedErr);
  }

  private pause(attempt: number): Promise<void> {
    return delay(
      backoffDelay(attempt, this.opts.backoff, this.opts.random),
      this.stopper.signal,
      'reconnect backoff',
    ).catch(() => {});
  }

  private setState(state: QmpSessionState, error?: QmpError): void {
    this.currentState = state;
    const change: QmpSessionStateChange = error
      ? { state, generation: this.gen, error }
      : { state, generation: this.gen };
    const onError = this.opts.onListenerError ?? reportListenerError;
    for (const l of [...this.stateListeners]) callListener(l, [change], onError);
  }
}

function asQmpError(err: unknown): QmpError {
  if (err instanceof QmpError) return err;
  return new QmpClosedError('connect', err);
}
