import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { qmpSocketOfArgv } from './argv.js';

// The storage daemons as processes: spawned detached (own session, no stdio tie to vmplugd) so a
// vmplugd restart leaves them serving, and recognised afterwards by pid + start time, the pair
// that cannot be recycled (a reused pid has a later start time).

export interface ProcessIdentity {
  pid: number;
  /** /proc/<pid>/stat field 22: clock ticks after boot. */
  startTime: number;
}

export interface ProcStat {
  state: string;
  startTime: number;
}

/** Parses /proc/<pid>/stat; comm (field 2) may hold spaces and parentheses, so cut at the last ')'. */
export function parseProcStat(text: string): ProcStat {
  const close = text.lastIndexOf(')');
  if (close < 0) throw new Error('malformed /proc stat');
  // Fields from 3 on; field 22 is at index 19 of this list.
  const rest = text
    .slice(close + 2)
    .trim()
    .split(/\s+/);
  const state = rest[0];
  const startTime = Number(rest[19]);
  if (state === undefined || !Number.isSafeInteger(startTime)) throw new Error('malformed /proc stat');
  return { state, startTime };
}

/** The process's stat, or undefined when it is gone or a zombie (it no longer serves anything). */
export async function procStat(pid: number): Promise<ProcStat | undefined> {
  try {
    const st = parseProcStat(await readFile(`/proc/${pid}/stat`, 'utf8'));
    return st.state === 'Z' || st.state === 'X' ? undefined : st;
  } catch {
    return undefined;
  }
}

export async function isRunning(id: ProcessIdentity): Promise<boolean> {
  const st = await procStat(id.pid);
  return st !== undefined && st.startTime === id.startTime;
}

/**
 * Starts the daemon detached: new session, stdin from /dev/null, stdout and stderr appended to
 * `logPath` (QEMU's own error lines; no secret ever reaches them, since the key goes over QMP).
 */
export async function spawnDetached(
  binary: string,
  argv: readonly string[],
  logPath: string,
): Promise<ProcessIdentity> {
  const log = openSync(logPath, 'a', 0o600);
  try {
    const child = spawn(binary, argv, { detached: true, stdio: ['ignore', log, log] });
    const pid = await new Promise<number>((resolve, reject) => {
      child.once('error', reject);
      child.once('spawn', () => (child.pid === undefined ? reject(new Error('no pid')) : resolve(child.pid)));
    });
    // Reaped by Node if it dies while we run; otherwise it outlives us.
    child.unref();
    const st = await procStat(pid);
    if (st === undefined) throw new Error(`${binary} exited at once (see ${logPath})`);
    return { pid, startTime: st.startTime };
  } finally {
    closeSync(log);
  }
}

/** Signals the process only if it is still the one we started. */
export async function signalIfSame(id: ProcessIdentity, signal: NodeJS.Signals): Promise<boolean> {
  if (!(await isRunning(id))) return false;
  try {
    process.kill(id.pid, signal);
    return true;
  } catch {
    return false;
  }
}

/** Resolves true once the process is gone (or a zombie), false when `timeoutMs` passes first. */
export async function waitGone(id: ProcessIdentity, timeoutMs: number): Promise<boolean> {
  const until = performance.now() + timeoutMs;
  for (;;) {
    if (!(await isRunning(id))) return true;
    if (performance.now() >= until) return false;
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * Storage daemons whose QMP socket lies under `stateDir`, found in /proc: covers a daemon whose
 * state file was never written (vmplugd killed right after the spawn).
 */
export async function findDaemons(
  binaryName: string,
  stateDir: string,
): Promise<Array<ProcessIdentity & { qmpSocket: string }>> {
  const prefix = stateDir.endsWith('/') ? stateDir : `${stateDir}/`;
  const out: Array<ProcessIdentity & { qmpSocket: string }> = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    let argv: string[];
    try {
      argv = (await readFile(`/proc/${entry}/cmdline`, 'utf8')).split('\0');
    } catch {
      continue;
    }
    if (!(argv[0] ?? '').endsWith(binaryName)) continue;
    const qmpSocket = qmpSocketOfArgv(argv.slice(1));
    if (qmpSocket === undefined || !qmpSocket.startsWith(prefix)) continue;
    const st = await procStat(pid);
    if (st !== undefined) out.push({ pid, startTime: st.startTime, qmpSocket });
  }
  return out;
}

/**
 * Counts vhost-user clients connected to the listening socket at `path`: Linux lists an accepted
 * unix connection in /proc/net/unix under the listener's path, state 03 (SS_CONNECTED); the
 * listener itself is state 01. The storage daemon runs in vmplugd's network namespace, so its
 * sockets are in the /proc/net/unix vmplugd reads.
 */
export function connectedClients(procNetUnix: string, path: string): number {
  let n = 0;
  for (const line of procNetUnix.split('\n').slice(1)) {
    // Num RefCount Protocol Flags Type St Inode Path
    const f = line.trim().split(/\s+/);
    if (f.length >= 8 && f[5] === '03' && f.slice(7).join(' ') === path) n++;
  }
  return n;
}

export async function readProcNetUnix(): Promise<string> {
  return readFile('/proc/net/unix', 'utf8');
}
