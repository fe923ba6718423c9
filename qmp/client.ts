import net from 'node:net';
import { armDeadline, type CallOptions } from './deadline.js';
import {
  QmpAbortedError,
  QmpBusyError,
  QmpClosedError,
  QmpConnectError,
  type QmpError,
  QmpProtocolError,
  QmpTimeoutError,
} from './errors.js';
import type { EventData, EventListener, QmpEventWaiter, Unsubscribe, WaitForOptions } from './events.js';
import type { QmpExecutor } from './executor.js';
import type { QmpEvent, QmpGreeting } from './messages.js';
import { QmpProtocol, type QmpProtocolOptions } from './protocol.js';

export interface QmpConnectOptions extends CallOptions, QmpProtocolOptions {
  /**
   * How long to wait for the greeting once the socket is connected before calling the monitor
   * busy (QMP_BUSY). QEMU greets within a millisecond; a parked client gets nothing.
   */
  greetingTimeoutMs?: number;
}

export const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
export const DEFAULT_GREETING_TIMEOUT_MS = 2_000;

/**
 * One QMP connection: connected, greeted and negotiated by `connect()`, unusable once closed
 * (every later call fails with QMP_CLOSED). For a connection that survives QEMU restarts use
 * QmpSession.
 */
export class QmpClient implements QmpExecutor {
  private constructor(
    readonly path: string,
    readonly greeting: QmpGreeting,
    private readonly protocol: QmpProtocol,
  ) {}

  static async connect(path: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const protocol = await open(path, opts);
    const greeting = await protocol.greeting();
    return new QmpClient(path, greeting, protocol);
  }

  get closed(): boolean {
    return this.protocol.closed;
  }

  execute<T = unknown>(command: string, args?: object, opts?: CallOptions): Promise<T> {
    return this.protocol.execute<T>(command, args, opts);
  }

  subscribe<N extends string>(name: N, listener: EventListener<EventData<N>>): Unsubscribe {
    return this.protocol.events.subscribe(name, listener);
  }

  waitFor<N extends string>(
    name: N,
    predicate?: (event: QmpEvent<EventData<N>>) => boolean,
    opts?: WaitForOptions,
  ): QmpEventWaiter<QmpEvent<EventData<N>>> {
    return this.protocol.events.waitFor(name, predicate, opts);
  }

  /** Runs once when the connection ends, with the error pending commands got. */
  onClose(listener: (err: QmpError) => void): Unsubscribe {
    return this.protocol.onClose(listener);
  }

  /** Polite close: lets QEMU finish and hang up (bounded). */
  close(): Promise<void> {
    return this.protocol.close();
  }

  destroy(): void {
    this.protocol.destroy();
  }
}

type Phase = 'connect' | 'greeting' | 'negotiate' | 'done';

/** Connects, waits for the greeting, negotiates capabilities; one deadline covers it all. */
function open(path: string, opts: QmpConnectOptions): Promise<QmpProtocol> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  const greetingTimeoutMs = opts.greetingTimeoutMs ?? DEFAULT_GREETING_TIMEOUT_MS;
  const started = performance.now();
  if (opts.signal?.aborted) return Promise.reject(new QmpAbortedError(`connect ${path}`, opts.signal.reason));
  return new Promise<QmpProtocol>((resolve, reject) => {
    let phase: Phase = 'connect';
    let disarmGreeting = noop;
    const socket = net.createConnection({ path });
    const fail = (err: unknown): void => {
      if (phase === 'done') return;
      phase = 'done';
      disarm();
      disarmGreeting();
      socket.destroy();
      reject(err);
    };
    const disarm = armDeadline(`connect ${path}`, timeoutMs, opts.signal, (err) => {
      // Past the socket connect, silence means the monitor is held by someone else.
      fail(
        phase === 'greeting' && err instanceof QmpTimeoutError
          ? new QmpBusyError(path, Math.round(performance.now() - started))
          : err,
      );
    });
    // Kept for the socket's whole life: a connect can still report an error after we gave up.
    socket.on('error', (err) => {
      if (phase === 'connect') fail(new QmpConnectError(path, err));
    });
    socket.once('connect', () => {
      if (phase !== 'connect') return;
      phase = 'greeting';
      const protocol = new QmpProtocol(socket, opts);
      const remaining = timeoutMs - (performance.now() - started);
      disarmGreeting = armDeadline('greeting', Math.min(greetingTimeoutMs, remaining), undefined, () =>
        fail(new QmpBusyError(path, Math.round(performance.now() - started))),
      );
      protocol.greeting().then(
        (greeting) => {
          if (phase !== 'greeting') return;
          disarmGreeting();
          if (!isGreeting(greeting)) {
            fail(new QmpProtocolError(`QMP socket ${path} sent a malformed greeting`));
            return;
          }
          phase = 'negotiate';
          protocol
            .execute('qmp_capabilities', undefined, {
              timeoutMs: Math.max(0, timeoutMs - (performance.now() - started)),
              ...(opts.signal ? { signal: opts.signal } : {}),
            })
            .then(
              () => {
                if (phase !== 'negotiate') return;
                phase = 'done';
                disarm();
                resolve(protocol);
              },
              (err: unknown) => fail(err),
            );
        },
        (err: unknown) =>
          fail(err instanceof QmpClosedError ? new QmpClosedError(`connect ${path}`, err) : err),
      );
    });
  });
}

function isGreeting(g: QmpGreeting): boolean {
  const q = (g as { QMP?: unknown }).QMP;
  return typeof q === 'object' && q !== null && 'version' in q;
}

function noop(): void {}
