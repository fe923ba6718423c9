import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CephEnvError } from './errors.js';
import type { CephLayout } from './layout.js';
import { cephClientEnv } from './run.js';

export interface DaemonOptions {
  /**
   * Tie the daemon's life to this process (`setpriv --pdeathsig`): when the test runner dies,
   * however it dies, the daemon gets SIGKILL. Off for clusters started by the CLI for humans.
   */
  dieWithParent: boolean;
}

/**
 * Starts one ceph daemon in the foreground (`-f`: no fork, so the pid we get is the daemon's) in
 * its own process group, so a terminal's Ctrl-C reaches the test runner, which then stops the
 * cluster in order, not the daemons directly. Only `-c`, `-i` and `-f` go on its command line.
 */
export function spawnDaemon(
  l: CephLayout,
  binary: 'ceph-mon' | 'ceph-osd' | 'ceph-mgr',
  id: string,
  opts: DaemonOptions,
): number {
  const out = openSync(join(l.logDir, `${binary}.${id}.out`), 'a', 0o600);
  try {
    const daemonArgs = ['-f', '-c', l.confPath, '-i', id];
    const [file, args] = opts.dieWithParent
      ? ['setpriv', ['--pdeathsig', 'KILL', '--', binary, ...daemonArgs]]
      : [binary, daemonArgs];
    const child = spawn(file, args, {
      cwd: l.dir,
      detached: true,
      stdio: ['ignore', out, out],
      env: cephClientEnv(),
    });
    child.on('error', () => {
      // Reported by the readiness checks that follow (the daemon never answers).
    });
    child.unref();
    if (child.pid === undefined) throw new CephEnvError('CEPH_SPAWN', `could not start ${binary}`);
    return child.pid;
  } finally {
    closeSync(out);
  }
}

/** True when `pid` runs a program whose arguments mention this cluster's config file. */
export function isClusterProcess(pid: number, confPath: string): boolean {
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return argv.includes(confPath);
  } catch {
    return false;
  }
}

/**
 * SIGKILLs the cluster's daemons: their data is thrown away with the directory, so nothing is
 * gained by a clean shutdown. The cmdline check keeps a recycled pid from being hit.
 */
export function killDaemonsSync(pids: readonly number[], confPath: string): void {
  for (const pid of pids) {
    if (!isClusterProcess(pid, confPath)) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Gone already.
    }
  }
}

function alive(pid: number): boolean {
  try {
    // A zombie still answers kill(0); its state in /proc tells.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** Kills and waits until the daemons are gone (their files are removed right after). */
export async function killDaemons(
  pids: readonly number[],
  confPath: string,
  timeoutMs = 10_000,
): Promise<void> {
  killDaemonsSync(pids, confPath);
  const deadline = Date.now() + timeoutMs;
  while (pids.some(alive)) {
    if (Date.now() > deadline) {
      throw new CephEnvError(
        'CEPH_STOP_TIMEOUT',
        `ceph daemons ${pids.filter(alive).join(', ')} did not die`,
      );
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Whether the daemon with this pid is still running (for readiness checks). */
export const isAlive = alive;
