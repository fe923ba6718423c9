import { readFile } from 'node:fs/promises';

// Whether a QEMU seen earlier is still the same process: its pid alone is not enough (pids are
// reused), so the process's start time (field 22 of /proc/<pid>/stat, clock ticks since boot) is
// recorded when the pid is first seen and compared later. A zombie (exited, not yet reaped by its
// parent: the Kata shim, or a test) counts as exited: its fds, the monitor socket included, are
// already closed.

export interface ProcessStamp {
  pid: number;
  /** /proc/<pid>/stat starttime. */
  startTicks: string;
}

export type Liveness = 'alive' | 'exited';

/** The process's stamp, or undefined when no such live process exists (or /proc cannot be read). */
export async function processStamp(pid: number): Promise<ProcessStamp | undefined> {
  const stat = await readStat(pid);
  if (stat === undefined || stat.state === 'Z' || stat.state === 'X') return undefined;
  return { pid, startTicks: stat.startTicks };
}

/** 'exited' when the stamped process is gone, a zombie, or its pid now belongs to another process. */
export async function livenessOf(stamp: ProcessStamp): Promise<Liveness> {
  const stat = await readStat(stamp.pid);
  if (stat === undefined || stat.state === 'Z' || stat.state === 'X') return 'exited';
  return stat.startTicks === stamp.startTicks ? 'alive' : 'exited';
}

interface StatFields {
  state: string;
  startTicks: string;
}

async function readStat(pid: number): Promise<StatFields | undefined> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  return parseStat(text);
}

/**
 * The state and start time out of a /proc/<pid>/stat line. The command name (field 2) is in
 * parentheses and may hold spaces and parentheses itself, so fields are counted after the last ')'.
 */
export function parseStat(text: string): StatFields | undefined {
  const close = text.lastIndexOf(')');
  if (close === -1) return undefined;
  const rest = text
    .slice(close + 1)
    .trim()
    .split(/\s+/);
  // rest[0] is field 3 (state); field 22 (starttime) is rest[19].
  const state = rest[0];
  const startTicks = rest[19];
  if (state === undefined || startTicks === undefined || !/^[0-9]+$/.test(startTicks)) return undefined;
  return { state, startTicks };
}
