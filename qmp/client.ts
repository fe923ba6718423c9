import net from 'node:net';
import { armDeadline, type CallOptions, untilAborted } from './deadline.js';
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

/**
 * Establishes a session the way qemu.qmp's `_establish_session` does: connect, greeting,
 * capabilities, as straight awaits under one AbortSignal that carries the caller's abort or the
 * overall deadline as its reason. Each phase turns a failure into its own error: the socket
 * connect into QMP_CONNECT_FAILED, silence after it into QMP_BUSY (another client holds the
 * monitor), a bad first message into QMP_PROTOCOL, and the capabilities command fails as a
 * command. The socket is destroyed on any failure.
 */
async function open(path: string, opts: QmpConnectOptions): Promise<QmpProtocol> {
  const operation = `connect ${path}`;
  if (opts.signal?.aborted) throw new QmpAbortedError(operation, opts.signal.reason);
  const timeoutMs = opts.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  const started = performance.now();
  const elapsed = (): number => performance.now() - started;
  const session = new AbortController();
  const disarm = armDeadline(operation, timeoutMs, opts.signal, (err) => session.abort(err));
  const socket = net.createConnection({ path });
  // Kept for the socket's whole life: a connect can still report an error after we gave up.
  socket.on('error', noop);
  try {
    await connected(socket, path, session.signal);
    const protocol = new QmpProtocol(socket, opts);
    await greeted(
      protocol,
      path,
      opts.greetingTimeoutMs ?? DEFAULT_GREETING_TIMEOUT_MS,
      session.signal,
      elapsed,
    );
    await untilAborted(
      protocol.execute('qmp_capabilities', undefined, { timeoutMs: Number.POSITIVE_INFINITY }),
      session.signal,
    );
    return protocol;
  } catch (err) {
    socket.destroy();
    throw err;
  } finally {
    disarm();
  }
}

/** Phase 1: the socket connect. */
function connected(socket: net.Socket, path: string, signal: AbortSignal): Promise<void> {
  return untilAborted(
    new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', (err) => reject(new QmpConnectError(path, err)));
    }),
    signal,
  );
}

/** Phase 2: QEMU's greeting; past the connect, silence means another client holds the monitor. */
async function greeted(
  protocol: QmpProtocol,
  path: string,
  greetingTimeoutMs: number,
  signal: AbortSignal,
  elapsed: () => number,
): Promise<void> {
  const busy = (): QmpBusyError => new QmpBusyError(path, Math.round(elapsed()));
  const quiet = new AbortController();
  const timer = setTimeout(() => quiet.abort(busy()), greetingTimeoutMs);
  const onAbort = (): void =>
    // The overall deadline running out while we wait for the greeting is the same silence.
    quiet.abort(signal.reason instanceof QmpTimeoutError ? busy() : signal.reason);
  signal.addEventListener('abort', onAbort, { once: true });
  if (signal.aborted) onAbort();
  try {
    const greeting = await untilAborted(protocol.greeting(), quiet.signal).catch((err: unknown) => {
      throw err instanceof QmpClosedError ? new QmpClosedError(`connect ${path}`, err) : err;
    });
    if (!isGreeting(greeting)) throw new QmpProtocolError(`QMP socket ${path} sent a malformed greeting`);
  } finally {
    clearTimeout(timer);
    signal.removeEventListener('abort', onAbort);
  }
}

function isGreeting(g: QmpGreeting): boolean {
  const q = (g as { QMP?: unknown }).QMP;
  return typeof q === 'object' && q !== null && 'version' in q;
}

function noop(): void {}
