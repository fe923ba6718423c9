import { armDeadline, type CallOptions } from './deadline.js';
import { QmpAbortedError, type QmpError } from './errors.js';
import type { QmpEvent } from './messages.js';

export type ShutdownCause =
  | 'none'
  | 'host-error'
  | 'host-qmp-quit'
  | 'host-qmp-system-reset'
  | 'host-signal'
  | 'host-ui'
  | 'guest-shutdown'
  | 'guest-reset'
  | 'guest-panic'
  | 'subsystem-reset'
  | 'snapshot-load';

/** Data of the events the product reacts to (QEMU 7.2 QAPI). */
export interface QmpEventMap {
  /** A virtio device emits one for `<path>/virtio-backend` (no `device`) before its own. */
  DEVICE_DELETED: { device?: string; path: string };
  DEVICE_UNPLUG_GUEST_ERROR: { device?: string; path: string };
  SHUTDOWN: { guest: boolean; reason: ShutdownCause };
  RESET: { guest: boolean; reason: ShutdownCause };
  STOP: Record<string, never>;
  RESUME: Record<string, never>;
  BLOCK_IO_ERROR: {
    device: string;
    'node-name'?: string;
    operation: 'read' | 'write';
    action: 'ignore' | 'report' | 'stop';
    nospace?: boolean;
    reason: string;
  };
}

export type EventData<N extends string> = N extends keyof QmpEventMap
  ? QmpEventMap[N]
  : Record<string, unknown>;

export type EventListener<D = Record<string, unknown>> = (event: QmpEvent<D>) => void;
export type Unsubscribe = () => void;

/** A pending wait: a promise plus `cancel()`, which rejects it with QMP_ABORTED and frees it. */
export type QmpEventWaiter<E> = Promise<E> & { cancel(): void };

export interface WaitForOptions extends CallOptions {}

/** The event side of a QMP connection, shared by the one-shot client and the session. */
export interface QmpEventSource {
  /** `name` '*' receives every event. */
  subscribe<N extends string>(name: N, listener: EventListener<EventData<N>>): Unsubscribe;
  /**
   * Resolves with the first `name` event (after this call) that `predicate` accepts. Arm it
   * before sending the command that causes the event: QEMU may emit the event before the reply.
   */
  waitFor<N extends string>(
    name: N,
    predicate?: (event: QmpEvent<EventData<N>>) => boolean,
    opts?: WaitForOptions,
  ): QmpEventWaiter<QmpEvent<EventData<N>>>;
}

/** Predicate for DEVICE_DELETED (and DEVICE_UNPLUG_GUEST_ERROR) of the device with qdev id `id`. */
export function deviceIs(id: string): (event: QmpEvent<{ device?: string }>) => boolean {
  return (event) => event.data?.device === id;
}

interface Waiter {
  fail(err: QmpError): void;
}

/**
 * Fan-out of events to subscribers and one-shot waiters. A throwing listener must not break
 * delivery to the others or the connection, so its error goes to `onListenerError`.
 */
export class EventHub implements QmpEventSource {
  private readonly byName = new Map<string, Set<EventListener>>();
  private readonly waiters = new Set<Waiter>();

  constructor(
    private readonly defaultTimeoutMs: number = 10_000,
    private readonly onListenerError: (err: unknown) => void = reportListenerError,
  ) {}

  subscribe<N extends string>(name: N, listener: EventListener<EventData<N>>): Unsubscribe {
    let set = this.byName.get(name);
    if (set === undefined) {
      set = new Set();
      this.byName.set(name, set);
    }
    const l = listener as EventListener;
    set.add(l);
    return () => {
      const s = this.byName.get(name);
      if (s === undefined) return;
      s.delete(l);
      if (s.size === 0) this.byName.delete(name);
    };
  }

  emit(event: QmpEvent): void {
    this.deliver(this.byName.get(event.event), event);
    this.deliver(this.byName.get('*'), event);
  }

  waitFor<N extends string>(
    name: N,
    predicate?: (event: QmpEvent<EventData<N>>) => boolean,
    opts: WaitForOptions = {},
  ): QmpEventWaiter<QmpEvent<EventData<N>>> {
    const operation = `waitFor ${name}`;
    let resolveP!: (e: QmpEvent<EventData<N>>) => void;
    let rejectP!: (err: unknown) => void;
    const promise = new Promise<QmpEvent<EventData<N>>>((res, rej) => {
      resolveP = res;
      rejectP = rej;
    });
    let settled = false;
    let disarm: () => void = noop;
    const finish = (): void => {
      settled = true;
      disarm();
      unsubscribe();
      this.waiters.delete(waiter);
    };
    const waiter: Waiter = {
      fail: (err) => {
        if (settled) return;
        finish();
        rejectP(err);
      },
    };
    const unsubscribe = this.subscribe(name, (event) => {
      if (settled) return;
      if (predicate !== undefined && !predicate(event)) return;
      finish();
      resolveP(event);
    });
    this.waiters.add(waiter);
    disarm = armDeadline(operation, opts.timeoutMs ?? this.defaultTimeoutMs, opts.signal, waiter.fail);
    // A waiter armed before a command that then fails is often dropped unawaited: keep its
    // eventual rejection from surfacing as an unhandled rejection.
    promise.catch(() => {});
    return Object.assign(promise, {
      cancel: () => waiter.fail(new QmpAbortedError(operation, 'cancelled')),
    });
  }

  /** Rejects every pending waiter (the one-shot client does this when its socket closes). */
  failWaiters(err: QmpError): void {
    for (const w of [...this.waiters]) w.fail(err);
  }

  get listenerCount(): number {
    let n = 0;
    for (const s of this.byName.values()) n += s.size;
    return n;
  }

  private deliver(set: Set<EventListener> | undefined, event: QmpEvent): void {
    if (set === undefined) return;
    // A snapshot: a listener that subscribes during delivery must not get this same event.
    for (const listener of [...set]) callListener(listener, [event], this.onListenerError);
  }
}

function noop(): void {}

/**
 * The QMP layer's one policy for a listener that throws (events, session state, close): the
 * error is reported, never re-thrown, and the other listeners still run. Re-throwing it later
 * (as it once was) made one buggy listener an uncaught exception that took vmplugd down. The
 * default report is a process warning; the daemon passes `onListenerError` to log it instead.
 */
export function reportListenerError(err: unknown): void {
  try {
    process.emitWarning(err instanceof Error ? err : new Error(String(err)), 'QmpListenerError');
  } catch {
    // nothing left to tell
  }
}

/** Runs one listener under that policy. */
export function callListener<A extends unknown[]>(
  listener: (...args: A) => void,
  args: A,
  onError: (err: unknown) => void,
): void {
  try {
    listener(...args);
  } catch (err) {
    try {
      onError(err);
    } catch {
      // a throwing reporter must not undo the policy
    }
  }
}
