import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';

// systemd's socket activation for tests (there is no systemd as PID 1 here): socket-activator.py
// binds the socket once and starts the command as systemd does, with the socket on fd 3 and
// LISTEN_PID set to the started process's own pid, holding the socket across restarts.

const ACTIVATOR = fileURLToPath(new URL('./socket-activator.py', import.meta.url));

export interface Exit {
  code: number | null;
  signal: number | null;
}

export interface SocketActivator {
  readonly socketPath: string;
  /** Starts the command once more; resolves with its pid. */
  start(timeoutMs?: number): Promise<number>;
  /** Resolves when that pid has exited. */
  exited(pid: number, timeoutMs?: number): Promise<Exit>;
  /** Kills what still runs (SIGKILL) and closes the socket. */
  close(): Promise<void>;
}

type Line = { ready?: true; started?: number; exited?: number; code?: number | null; signal?: number | null };

export async function startSocketActivator(
  socketPath: string,
  logPath: string,
  argv: readonly string[],
): Promise<SocketActivator> {
  const child: ChildProcess = spawn('/usr/bin/python3', [ACTIVATOR, socketPath, logPath, ...argv], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const lines: Line[] = [];
  const waiters = new Set<() => void>();
  let errors = '';
  let rest = '';
  child.stdout?.setEncoding('utf8');
  child.stdout?.on('data', (chunk: string) => {
    rest += chunk;
    for (let nl = rest.indexOf('\n'); nl !== -1; nl = rest.indexOf('\n')) {
      lines.push(JSON.parse(rest.slice(0, nl)) as Line);
      rest = rest.slice(nl + 1);
    }
    for (const w of waiters) w();
  });
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    errors += chunk;
  });
  const gone = once(child, 'exit');

  const next = <T>(pick: (l: Line) => T | undefined, from: number, timeoutMs: number, what: string) =>
    new Promise<T>((resolve, reject) => {
      const check = (): void => {
        for (const l of lines.slice(from)) {
          const v = pick(l);
          if (v !== undefined) {
            done();
            resolve(v);
            return;
          }
        }
        if (child.exitCode !== null || child.signalCode !== null) {
          done();
          reject(new Error(`socket activator exited: ${errors}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`socket activator: no ${what} in time (${errors})`));
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        waiters.delete(check);
      };
      waiters.add(check);
      check();
    });

  await next((l) => l.ready, 0, 10_000, 'ready');
  const running = new Set<number>();
  return {
    socketPath,
    start: async (timeoutMs = 10_000) => {
      const from = lines.length;
      child.stdin?.write('start\n');
      const pid = await next((l) => l.started, from, timeoutMs, 'start');
      running.add(pid);
      return pid;
    },
    exited: async (pid, timeoutMs = 60_000) => {
      const exit = await next(
        (l) => (l.exited === pid ? { code: l.code ?? null, signal: l.signal ?? null } : undefined),
        0,
        timeoutMs,
        `exit of ${pid}`,
      );
      running.delete(pid);
      return exit;
    },
    close: async () => {
      for (const pid of running) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      if (child.exitCode === null && child.signalCode === null) {
        child.stdin?.end();
        child.kill('SIGTERM');
        await gone;
      }
    },
  };
}
