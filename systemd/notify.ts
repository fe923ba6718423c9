import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import type { LeveledLog } from '../core/log.js';

// sd_notify for vmplugd. Node 20 has no unix datagram sockets, so the datagram is sent by
// systemd's own `systemd-notify --no-block`, run with execFile (no shell). Two properties make
// that correct under NotifyAccess=main:
// - systemd-notify first sends with SCM_CREDENTIALS naming its *parent's* pid (vmplugd, the main
//   pid), which the kernel allows when the sender holds CAP_SYS_ADMIN (vmplugd runs as root);
//   only without that capability does it fall back to its own pid, which NotifyAccess=main
//   rejects (see `canSendAsParent`).
// - `--no-block` skips the BARRIER=1 round trip: that second datagram always comes from the
//   helper's own pid, so systemd would log a rejected message for every notification.
// This module imports nothing of vmplug's (systemd/ is a leaf of the design's layout).

/** Where and how to notify, from the service manager's environment. */
export interface NotifyEnv {
  /** NOTIFY_SOCKET: a path, or `@name` for the abstract namespace. */
  socket: string;
  /** WATCHDOG_USEC when it applies to this process; null: no watchdog. */
  watchdogUsec: number | null;
}

export class NotifyEnvError extends Error {
  readonly code = 'SYSTEMD_ENV_INVALID';

  constructor(message: string) {
    super(message);
    this.name = 'NotifyEnvError';
  }
}

/**
 * Reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID like sd_notify(3) and sd_watchdog_enabled(3):
 * null when NOTIFY_SOCKET is unset or empty (not run by systemd: do nothing); the watchdog applies
 * only when WATCHDOG_PID is unset or names this process (a child must not ping for its parent).
 */
export function parseNotifyEnv(
  env: Readonly<Record<string, string | undefined>>,
  pid: number,
): NotifyEnv | null {
  const socket = env.NOTIFY_SOCKET;
  if (socket === undefined || socket === '') return null;
  if (!socket.startsWith('/') && !socket.startsWith('@')) {
    throw new NotifyEnvError(`NOTIFY_SOCKET must be an absolute path or @abstract name (got "${socket}")`);
  }
  return { socket, watchdogUsec: watchdogUsecFor(env, pid) };
}

function watchdogUsecFor(env: Readonly<Record<string, string | undefined>>, pid: number): number | null {
  const usec = env.WATCHDOG_USEC;
  if (usec === undefined || usec === '') return null;
  const n = decimal(usec);
  if (n === null || n === 0)
    throw new NotifyEnvError(`WATCHDOG_USEC must be a positive integer (got "${usec}")`);
  const forPid = env.WATCHDOG_PID;
  if (forPid !== undefined && forPid !== '') {
    const p = decimal(forPid);
    if (p === null) throw new NotifyEnvError(`WATCHDOG_PID must be a pid (got "${forPid}")`);
    if (p !== pid) return null;
  }
  return n;
}

function decimal(s: string): number | null {
  if (!/^[0-9]{1,16}$/.test(s)) return null;
  const n = Number(s);
  return Number.isSafeInteger(n) ? n : null;
}

/** How often to ping: half the watchdog period, as sd_watchdog_enabled(3) advises (at least 50 ms). */
export function watchdogIntervalMs(watchdogUsec: number): number {
  return Math.max(50, Math.floor(watchdogUsec / 2_000));
}

/** One notification: the state assignments systemd understands (READY, STATUS, STOPPING, ...). */
export type NotifyFields = Readonly<Record<string, string | number>>;

const KEY = /^[A-Z][A-Z0-9_]*$/;
const STATUS_MAX = 256;

/**
 * The `KEY=VALUE` assignments of a notification, one per argument of systemd-notify (which joins
 * them with newlines into one datagram). A newline inside a value would start a forged assignment,
 * so STATUS is flattened to one line and other values must not contain one.
 */
export function notifyAssignments(fields: NotifyFields): string[] {
  const out: string[] = [];
  for (const [key, raw] of Object.entries(fields)) {
    if (!KEY.test(key)) throw new RangeError(`not a notification key: "${key}"`);
    let value = String(raw);
    if (key === 'STATUS') {
      value = value.replace(/\s*[\r\n\t]\s*/g, ' ').trim();
      if (value.length > STATUS_MAX) value = `${value.slice(0, STATUS_MAX - 3)}...`;
    } else if (/[\r\n\0]/.test(value)) {
      throw new RangeError(`notification value of ${key} contains a line break`);
    }
    out.push(`${key}=${value}`);
  }
  if (out.length === 0) throw new RangeError('empty notification');
  return out;
}

/** Sends one notification's assignments; rejects on failure. */
export type NotifySender = (assignments: readonly string[], signal: AbortSignal) => Promise<void>;

const SEND_TIMEOUT_MS = 5_000;

/** The default sender: `systemd-notify --no-block KEY=VALUE...` with only NOTIFY_SOCKET and PATH. */
export function systemdNotifySender(
  socket: string,
  opts: { command?: string; path?: string } = {},
): NotifySender {
  const command = opts.command ?? 'systemd-notify';
  const env = { NOTIFY_SOCKET: socket, PATH: opts.path ?? '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin' };
  return (assignments, signal) =>
    new Promise((resolve, reject) => {
      execFile(
        command,
        ['--no-block', ...assignments],
        { env, signal, timeout: SEND_TIMEOUT_MS, maxBuffer: 64 * 1024 },
        (err, _stdout, stderr) => {
          if (err === null) resolve();
          else reject(new Error(`${command} failed: ${String(stderr).trim() || err.message}`));
        },
      );
    });
}

/**
 * True when this process may send credentials naming another pid (CAP_SYS_ADMIN in its effective
 * set), i.e. when systemd-notify's messages reach systemd as vmplugd's own.
 */
export async function canSendAsParent(statusFile = '/proc/self/status'): Promise<boolean> {
  const text = await readFile(statusFile, { encoding: 'utf8', signal: AbortSignal.timeout(2_000) });
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(text);
  if (m?.[1] === undefined) return false;
  const CAP_SYS_ADMIN = 21n;
  return ((BigInt(`0x${m[1]}`) >> CAP_SYS_ADMIN) & 1n) === 1n;
}

/** What the notifier logs through (pino's shape, without depending on it). */
export type NotifyLog = LeveledLog;

export interface SystemdNotifierOptions {
  env: NotifyEnv;
  log: NotifyLog;
  send?: NotifySender;
}

/**
 * Tells systemd about vmplugd's life: READY=1 once it serves, STOPPING=1 at shutdown, STATUS= lines,
 * and WATCHDOG=1 from a timer on the event loop (a wedged loop stops the pings and systemd restarts
 * the service). A failed send is logged, never thrown: notification must not take the daemon down.
 */
export class SystemdNotifier {
  readonly #env: NotifyEnv;
  readonly #log: NotifyLog;
  readonly #send: NotifySender;
  readonly #closer = new AbortController();
  #watchdog: NodeJS.Timeout | undefined;
  #pinging = false;
  #pingFailing = false;
  /** Notifications go out one after the other, so STATUS, READY and STOPPING arrive in order. */
  #queue: Promise<unknown> = Promise.resolve();

  constructor(opts: SystemdNotifierOptions) {
    this.#env = opts.env;
    this.#log = opts.log;
    this.#send = opts.send ?? systemdNotifySender(opts.env.socket);
  }

  /** Sends one notification; resolves false (logged) when it could not be sent. */
  notify(fields: NotifyFields): Promise<boolean> {
    const assignments = notifyAssignments(fields);
    const sent = this.#queue.then(() => this.#sendNow(assignments));
    this.#queue = sent;
    return sent;
  }

  async #sendNow(assignments: string[]): Promise<boolean> {
    if (this.#closer.signal.aborted) return false;
    try {
      await this.#send(
        assignments,
        AbortSignal.any([this.#closer.signal, AbortSignal.timeout(SEND_TIMEOUT_MS)]),
      );
      this.#log.debug({ notify: assignments }, 'systemd notified');
      return true;
    } catch (err) {
      this.#log.warn({ err, notify: assignments }, 'systemd notification failed');
      return false;
    }
  }

  ready(status: string): Promise<boolean> {
    return this.notify({ READY: 1, STATUS: status });
  }

  stopping(status: string): Promise<boolean> {
    return this.notify({ STOPPING: 1, STATUS: status });
  }

  status(status: string): Promise<boolean> {
    return this.notify({ STATUS: status });
  }

  /** Starts the WATCHDOG=1 pings when systemd asked for them; the timer never keeps the process alive. */
  startWatchdog(): void {
    const usec = this.#env.watchdogUsec;
    if (usec === null || this.#watchdog !== undefined || this.#closer.signal.aborted) return;
    const everyMs = watchdogIntervalMs(usec);
    this.#log.info({ watchdogUsec: usec, everyMs }, 'systemd watchdog enabled');
    this.#watchdog = setInterval(() => void this.#ping(), everyMs);
    this.#watchdog.unref();
    void this.#ping();
  }

  async #ping(): Promise<void> {
    // A send still running (a stalled fork) is not stacked on: the next tick tries again.
    if (this.#pinging) return;
    this.#pinging = true;
    try {
      const assignments = notifyAssignments({ WATCHDOG: 1 });
      await this.#send(
        assignments,
        AbortSignal.any([this.#closer.signal, AbortSignal.timeout(SEND_TIMEOUT_MS)]),
      );
      if (this.#pingFailing) this.#log.info({}, 'systemd watchdog pings go through again');
      this.#pingFailing = false;
    } catch (err) {
      // Logged once per run of failures, not every tick.
      if (!this.#pingFailing && !this.#closer.signal.aborted) {
        this.#log.warn({ err }, 'systemd watchdog ping failed');
      }
      this.#pingFailing = true;
    } finally {
      this.#pinging = false;
    }
  }

  /** Stops the watchdog and aborts sends in flight. */
  close(): void {
    clearInterval(this.#watchdog);
    this.#watchdog = undefined;
    this.#closer.abort();
  }
}
