import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';

// A stand-in for systemd's notification socket: notify-receiver.py (Node 20 cannot receive unix
// datagrams) binds it with SO_PASSCRED, as the service manager does, and reports every datagram
// with the sender's pid from its credentials, the pid NotifyAccess=main compares with MainPID.

const RECEIVER = fileURLToPath(new URL('./notify-receiver.py', import.meta.url));

export interface Notification {
  /** Sender pid from SCM_CREDENTIALS. */
  pid: number | null;
  /** The KEY=VALUE lines of the datagram. */
  assignments: string[];
}

export interface NotifyReceiver {
  readonly socketPath: string;
  /** Every datagram so far, in order. */
  readonly received: readonly Notification[];
  /** Resolves with the first datagram (from `from` on) holding `assignment`; rejects after `timeoutMs`. */
  waitFor(assignment: string, opts?: { from?: number; timeoutMs?: number }): Promise<Notification>;
  close(): Promise<void>;
}

export async function startNotifyReceiver(socketPath: string): Promise<NotifyReceiver> {
  const child: ChildProcess = spawn('/usr/bin/python3', [RECEIVER, socketPath], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const received: Notification[] = [];
  let errors = '';
  const waiters = new Set<() => void>();
  let bound: () => void = () => {};
  const ready = new Promise<void>((resolve) => {
    bound = resolve;
  });
  let rest = '';
  child.stdout?.setEncoding('utf8');
  child.stdout?.on('data', (chunk: string) => {
    rest += chunk;
    for (let nl = rest.indexOf('\n'); nl !== -1; nl = rest.indexOf('\n')) {
      const msg = JSON.parse(rest.slice(0, nl)) as { ready?: boolean } & Notification;
      rest = rest.slice(nl + 1);
      if (msg.ready === true) bound();
      else received.push({ pid: msg.pid, assignments: msg.assignments });
      for (const w of waiters) w();
    }
  });
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    errors += chunk;
  });
  const exited = once(child, 'exit');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await Promise.race([
    ready,
    exited.then(() => {
      throw new Error(`notify receiver exited: ${errors}`);
    }),
  ]).finally(() => clearTimeout(timer));

  return {
    socketPath,
    received,
    waitFor: (assignment, opts = {}) =>
      new Promise((resolve, reject) => {
        const check = (): void => {
          const hit = received.slice(opts.from ?? 0).find((n) => n.assignments.includes(assignment));
          if (hit === undefined) return;
          done();
          resolve(hit);
        };
        const timeout = setTimeout(() => {
          done();
          reject(new Error(`no ${assignment} in time; received: ${JSON.stringify(received)}`));
        }, opts.timeoutMs ?? 60_000);
        const done = (): void => {
          clearTimeout(timeout);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      }),
    close: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await exited;
      }
    },
  };
}
