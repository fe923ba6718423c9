import { VmplugError } from '../core/errors.js';
import type { SandboxId, VolumeId } from '../core/ids.js';
import { type LateAnswer, lateAnswerOf } from '../qmp/index.js';

// Volumes whose teardown waits on a QMP command in doubt: it timed out (or its caller aborted)
// after it was sent, so QEMU may still run it (a blockdev-add stuck on an OSD, a stopped QEMU).
// Acting before its answer would race it: a blockdev-del sent now is queued behind the stuck
// command anyway, and times out too. So the engine records the volume here (its journal record
// already says where the teardown stands) and settles it the moment the late answer arrives; until
// then a request for the volume is told at once to retry (503), without sending QEMU anything.

interface Held {
  command: string;
  since: number;
  token: symbol;
}

export class InDoubtVolumes {
  readonly #held = new Map<string, Held>();

  get size(): number {
    return this.#held.size;
  }

  /**
   * When `err` left a command in doubt: marks the volume and calls `onAnswer` once QEMU answers
   * (or the connection ends), after unmarking it; answers true. False: nothing is in doubt.
   */
  hold(
    sandboxId: SandboxId,
    volumeId: VolumeId,
    err: unknown,
    onAnswer: (answer: LateAnswer) => void,
  ): boolean {
    const inDoubt = lateAnswerOf(err);
    if (inDoubt === undefined) return false;
    const key = keyOf(sandboxId, volumeId);
    const token = Symbol(key);
    this.#held.set(key, { command: inDoubt.command, since: performance.now(), token });
    void inDoubt.answer.then((answer) => {
      // A later hold of the same volume replaced this one: its own answer settles it.
      if (this.#held.get(key)?.token !== token) return;
      this.#held.delete(key);
      onAnswer(answer);
    });
    return true;
  }

  /** DETACH_PENDING (503, retryable) while the volume waits on a late answer; else undefined. */
  refusal(sandboxId: SandboxId, volumeId: VolumeId): VmplugError | undefined {
    const held = this.#held.get(keyOf(sandboxId, volumeId));
    if (held === undefined) return undefined;
    const ms = Math.round(performance.now() - held.since);
    return new VmplugError(
      'DETACH_PENDING',
      `volume ${volumeId} is being rolled back or detached: QEMU has not answered ${held.command} yet ` +
        `(${ms} ms in doubt); it is settled as soon as QEMU answers: retry shortly`,
    );
  }
}

function keyOf(sandboxId: SandboxId, volumeId: VolumeId): string {
  return `${sandboxId}/${volumeId}`;
}
