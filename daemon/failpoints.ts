import { POD_STATES, type PodState } from '../api/index.js';
import { VOLUME_STATES, type VolumeState } from '../storage/journal.js';
import type { Logger } from './logger.js';

// Crash failpoints for vmplug's own crash tests: `VMPLUG_FAILPOINT=kill-after:<State>` makes
// vmplugd SIGKILL itself the moment a journal record in <State> is durable (between that write
// and the next side effect); `kill-before:<State>` just before that record's write starts
// (between the previous side effect and the write that would record it); a state the steps pass
// without writing it (storage/steps.ts pass) counts as written there. Those are exactly where
// a real crash hurts most, and a timer-based kill cannot land there reliably. `stop-after:<State>`
// makes vmplugd SIGSTOP itself there instead, so a test can act at that exact point (stop the
// guest's QEMU before the next QMP command) and then SIGCONT it. Unset in production; the daemon
// warns at start when one is armed. An environment variable rather than a flag, so it never shows
// in --help.

export const FAILPOINT_ENV = 'VMPLUG_FAILPOINT';

export interface Failpoint {
  kind: 'kill-before' | 'kill-after' | 'stop-after';
  state: VolumeState | PodState;
}

/** Runs around every journal write, of attachments and of pod volumes alike. */
export type StateWriteHook = (record: { readonly state: string }, phase: 'before' | 'after') => void;

const STATES: readonly string[] = [...VOLUME_STATES, ...POD_STATES];

/** Parses the variable; undefined when unset, an Error naming the variable when malformed. */
export function parseFailpoint(value: string | undefined): Failpoint | undefined | Error {
  if (value === undefined || value === '') return undefined;
  const m = /^(kill-before|kill-after|stop-after):([A-Za-z]+)$/.exec(value);
  const kind = m?.[1] as Failpoint['kind'] | undefined;
  const state = m?.[2] as VolumeState | PodState | undefined;
  if (kind === undefined || state === undefined || !STATES.includes(state)) {
    return new Error(
      `${FAILPOINT_ENV} must be kill-before:<State>, kill-after:<State> or stop-after:<State>, State one of ${STATES.join(', ')}`,
    );
  }
  return { kind, state };
}

/** The journal's write hook for a failpoint (undefined when none is armed). */
export function failpointHook(
  fp: Failpoint | undefined,
  logger: Logger,
  kill: (signal: 'SIGKILL' | 'SIGSTOP') => void = (signal) => process.kill(process.pid, signal),
): StateWriteHook | undefined {
  if (fp === undefined) return undefined;
  const phase = fp.kind === 'kill-before' ? 'before' : 'after';
  const signal = fp.kind === 'stop-after' ? 'SIGSTOP' : 'SIGKILL';
  logger.warn(
    { failpoint: fp },
    `failpoint armed: vmplugd ${signal === 'SIGSTOP' ? 'stops' : 'kills'} itself ${phase} writing a ${fp.state} record`,
  );
  return (record, at) => {
    if (record.state !== fp.state || at !== phase) return;
    // Synchronous on purpose: nothing else may run between the durable write and the kill.
    logger.flush();
    kill(signal);
  };
}
