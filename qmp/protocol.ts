import type { Duplex } from 'node:stream';
import { armDeadline, type CallOptions } from './deadline.js';
import {
  QmpAbortedError,
  QmpClosedError,
  QmpCommandError,
  type QmpError,
  QmpProtocolError,
} from './errors.js';
import { callListener, EventHub, reportListenerError, type Unsubscribe } from './events.js';
import { MessageSplitter } from './framing.js';
import { LateAnswers, withLateAnswer } from './late-answers.js';
import { classify, type QmpGreeting, type QmpId } from './messages.js';

export interface QmpProtocolOptions {
  /** Timeout for execute() and waitFor() when the call gives none. */
  defaultTimeoutMs?: number;
  /** A single message above this is a protocol error (guards memory against a broken peer). */
  maxMessageBytes?: number;
  /** Told of a listener's throw (events, close); never re-thrown. Default: a process warning. */
  onListenerError?: (err: unknown) => void;
}

interface Pending {
  command: string;
  resolve(value: unknown): void;
  reject(err: unknown): void;
  disarm(): void;
}

/**
 * One QMP conversation over a connected stream: framing, the greeting, command ids and replies,
 * events. It knows nothing of sockets or reconnection; QmpClient owns those.
 */
export class QmpProtocol {
  readonly events: EventHub;
  private readonly pending = new Map<QmpId, Pending>();
  /** Sent commands whose caller stopped waiting (timeout, abort): their answer is still due. */
  private readonly late = new LateAnswers();
  private readonly closeListeners = new Set<(err: QmpError) => void>();
  private readonly splitter: MessageSplitter;
  private readonly defaultTimeoutMs: number;
  private nextId = 0;
  private greetingMsg: QmpGreeting | undefined;
  private greetingWaiters: Array<{ resolve(g: QmpGreeting): void; reject(e: unknown): void }> = [];
  private closeError: QmpError | undefined;
  private lastSocketError: unknown;
  private readonly onListenerError: (err: unknown) => void;

  constructor(
    private readonly stream: Duplex,
    opts: QmpProtocolOptions = {},
  ) {
    this.defaultTimeoutMs = opts.defaultTimeoutMs ?? 10_000;
    this.onListenerError = opts.onListenerError ?? reportListenerError;
    this.events = new EventHub(this.defaultTimeoutMs, this.onListenerError);
    this.splitter = new MessageSplitter((m) => this.dispatch(m), opts.maxMessageBytes);
    stream.on('data', (chunk: Buffer) => {
      try {
        this.splitter.push(chunk);
      } catch (err) {
        this.stream.destroy(err instanceof Error ? err : new QmpProtocolError(String(err)));
      }
    });
    stream.on('error', (err) => {
      this.lastSocketError = err;
    });
    stream.on('close', () => this.onStreamClose());
  }

  get closed(): boolean {
    return this.closeError !== undefined;
  }

  /** Resolves with QEMU's greeting, the first message on the socket. */
  greeting(): Promise<QmpGreeting> {
    if (this.greetingMsg !== undefined) return Promise.resolve(this.greetingMsg);
    if (this.closeError !== undefined) return Promise.reject(this.closeError);
    return new Promise((resolve, reject) => this.greetingWaiters.push({ resolve, reject }));
  }

  execute<T = unknown>(command: string, args?: object, opts: CallOptions = {}): Promise<T> {
    if (this.closeError !== undefined) return Promise.reject(new QmpClosedError(command, this.closeError));
    if (opts.signal?.aborted) return Promise.reject(new QmpAbortedError(command, opts.signal.reason));
    const id = ++this.nextId;
    let payload: string;
    try {
      payload = JSON.stringify(
        args === undefined ? { execute: command, id } : { execute: command, arguments: args, id },
      );
    } catch (err) {
      // e.g. a BigInt argument; nothing was registered or sent.
      return Promise.reject(err);
    }
    return new Promise<T>((resolve, reject) => {
      const entry: Pending = { command, resolve: resolve as (v: unknown) => void, reject, disarm: noop };
      this.pending.set(id, entry);
      const sentAt = performance.now();
      let written = false;
      entry.disarm = armDeadline(command, opts.timeoutMs ?? this.defaultTimeoutMs, opts.signal, (err) => {
        this.pending.delete(id);
        // Sent, so QEMU may still run it: the error carries the answer still due (ids are never
        // reused, so a reply for this id can only be that answer). Before the write (an abort
        // already fired) nothing is in doubt.
        if (written) withLateAnswer(err, this.late.track(id, command, sentAt));
        reject(err);
      });
      if (this.pending.has(id)) {
        this.stream.write(payload);
        written = true;
      }
    });
  }

  /** Called once with the error every pending command got (QMP_CLOSED or QMP_PROTOCOL). */
  onClose(listener: (err: QmpError) => void): Unsubscribe {
    if (this.closeError !== undefined) {
      const err = this.closeError;
      queueMicrotask(() => listener(err));
      return noop;
    }
    this.closeListeners.add(listener);
    return () => this.closeListeners.delete(listener);
  }

  /** Half-closes and resolves once the peer has hung up too (or at once if already closed). */
  close(): Promise<void> {
    if (this.closeError !== undefined) return Promise.resolve();
    return new Promise((resolve) => {
      // QEMU answers our FIN by closing; do not wait on a peer that does not.
      const t = setTimeout(() => this.stream.destroy(), 1_000);
      this.closeListeners.add(() => {
        clearTimeout(t);
        resolve();
      });
      this.stream.end();
    });
  }

  destroy(): void {
    this.stream.destroy();
  }

  private dispatch(raw: unknown): void {
    const m = classify(raw);
    switch (m.kind) {
      case 'return': {
        if (m.message.id === undefined) return;
        const p = this.pending.get(m.message.id);
        if (p === undefined) {
          this.late.returned(m.message.id, m.message.return);
          return;
        }
        this.pending.delete(m.message.id);
        p.disarm();
        p.resolve(m.message.return);
        return;
      }
      case 'error': {
        // An error without id answers input QEMU could not parse; we send none such, so there
        // is no command to charge it to.
        if (m.message.id === undefined) return;
        const e = m.message.error;
        const p = this.pending.get(m.message.id);
        if (p === undefined) {
          this.late.refused(m.message.id, String(e.class), String(e.desc));
          return;
        }
        this.pending.delete(m.message.id);
        p.disarm();
        p.reject(new QmpCommandError(p.command, String(e.class), String(e.desc)));
        return;
      }
      case 'event':
        this.events.emit(m.message);
        return;
      case 'greeting': {
        if (this.greetingMsg !== undefined) return;
        this.greetingMsg = m.message;
        const waiters = this.greetingWaiters;
        this.greetingWaiters = [];
        for (const w of waiters) w.resolve(m.message);
        return;
      }
      case 'unknown':
        // Unknown shapes are ignored for forward compatibility, except as the first message.
        if (this.greetingMsg === undefined) {
          this.stream.destroy(new QmpProtocolError('QMP peer did not start with a greeting'));
        }
        return;
    }
  }

  private onStreamClose(): void {
    if (this.closeError !== undefined) return;
    const cause = this.lastSocketError ?? (this.stream.errored as unknown) ?? undefined;
    const err = cause instanceof QmpProtocolError ? cause : new QmpClosedError('connection', cause);
    this.closeError = err;
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      p.disarm();
      p.reject(err instanceof QmpProtocolError ? err : new QmpClosedError(p.command, cause));
    }
    this.late.closed(err);
    for (const w of this.greetingWaiters) w.reject(err);
    this.greetingWaiters = [];
    this.events.failWaiters(err);
    for (const l of [...this.closeListeners]) callListener(l, [err], this.onListenerError);
    this.closeListeners.clear();
  }
}

function noop(): void {}
