import { QmpCommandError, type QmpError } from './errors.js';
import type { QmpId } from './messages.js';

// A command that timed out (or whose caller aborted) after it was sent has not failed: QEMU runs
// monitor commands one at a time in its main loop, and a command stuck there (librbd waiting on an
// OSD, a SIGSTOPped QEMU) still completes and answers when the loop runs again. Its outcome is in
// doubt until then. The protocol keeps the ids of such commands and settles a promise per command
// when the answer arrives after all, so a caller can converge at that moment instead of polling.

/** What became of a command after its caller stopped waiting. */
export type LateAnswer =
  /** QEMU ran it: its effect is there. */
  | { kind: 'return'; command: string; afterMs: number; value: unknown }
  /** QEMU refused it: nothing happened (as far as QMP says). */
  | { kind: 'error'; command: string; afterMs: number; error: QmpCommandError }
  /**
   * The answer can no longer come on this connection (it closed, or too many commands were in
   * doubt at once): the outcome stays unknown; look at QEMU again.
   */
  | { kind: 'lost'; command: string; afterMs: number; error?: QmpError };

/** The most commands tracked per connection; beyond, the oldest is settled `lost`. */
export const MAX_LATE_ANSWERS = 256;

interface Waiting {
  command: string;
  sentAt: number;
  settle(answer: LateAnswer): void;
}

/** The in-doubt commands of one connection, by QMP id. */
export class LateAnswers {
  readonly #waiting = new Map<QmpId, Waiting>();

  get size(): number {
    return this.#waiting.size;
  }

  /** Starts tracking `id`; the promise never rejects. */
  track(id: QmpId, command: string, sentAt: number): Promise<LateAnswer> {
    if (this.#waiting.size >= MAX_LATE_ANSWERS) {
      const [oldest] = this.#waiting.keys();
      if (oldest !== undefined) this.#finish(oldest, (w) => lost(w));
    }
    return new Promise((resolve) => this.#waiting.set(id, { command, sentAt, settle: resolve }));
  }

  /** A reply arrived for `id`: true when it was a late one (and is now settled). */
  returned(id: QmpId, value: unknown): boolean {
    return this.#finish(id, (w) => ({ kind: 'return', command: w.command, afterMs: since(w), value }));
  }

  /** An error reply arrived for `id`: true when it was a late one. */
  refused(id: QmpId, errorClass: string, desc: string): boolean {
    return this.#finish(id, (w) => ({
      kind: 'error',
      command: w.command,
      afterMs: since(w),
      error: new QmpCommandError(w.command, errorClass, desc),
    }));
  }

  /** The connection ended: every answer still awaited is lost. */
  closed(error: QmpError): void {
    for (const id of [...this.#waiting.keys()]) this.#finish(id, (w) => lost(w, error));
  }

  #finish(id: QmpId, answer: (w: Waiting) => LateAnswer): boolean {
    const w = this.#waiting.get(id);
    if (w === undefined) return false;
    this.#waiting.delete(id);
    w.settle(answer(w));
    return true;
  }
}

function since(w: Waiting): number {
  return Math.round(performance.now() - w.sentAt);
}

function lost(w: Waiting, error?: QmpError): LateAnswer {
  return error === undefined
    ? { kind: 'lost', command: w.command, afterMs: since(w) }
    : { kind: 'lost', command: w.command, afterMs: since(w), error };
}

/** A command in doubt: its name and its answer still due. */
export interface InDoubt {
  command: string;
  answer: Promise<LateAnswer>;
}

/**
 * The command behind `err` when it is in doubt (a QMP_TIMEOUT or QMP_ABORTED of a command that
 * was sent, found through the `cause` chain of wrapping errors), or undefined when nothing is
 * (the command failed outright, or was never sent).
 */
export function lateAnswerOf(err: unknown): InDoubt | undefined {
  let e: unknown = err;
  for (let depth = 0; depth < 8 && typeof e === 'object' && e !== null; depth++) {
    const answer = (e as { lateAnswer?: unknown }).lateAnswer;
    if (answer instanceof Promise) {
      const op = (e as { operation?: unknown }).operation;
      return { command: typeof op === 'string' ? op : 'a command', answer: answer as Promise<LateAnswer> };
    }
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

/** Hangs the answer still due on a timeout or abort error, unseen by JSON and logs. */
export function withLateAnswer(err: QmpError, answer: Promise<LateAnswer>): void {
  Object.defineProperty(err, 'lateAnswer', { value: answer, enumerable: false });
}
