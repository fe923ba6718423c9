/**
 * Host side of the test guest (test/env/guest-init): building the image and talking to a booted
 * guest over two serial ports exposed by QEMU as unix sockets.
 *
 * Protocol (one line per message, '\n' terminated, ASCII):
 * - events port (guest ttyS1, guest -> host):
 *   `VMPLUG DISK-ADD <name> <sizeBytes> <ro 0|1> <serial or ->`, `VMPLUG DISK-SIZE <name> <sizeBytes>`,
 *   `VMPLUG DISK-DEL <name>`, `VMPLUG READY` (after the first scan),
 *   `VMPLUG SNAPSHOT-BEGIN`, DISK-ADD lines for every disk, `VMPLUG SNAPSHOT-END`.
 *   The guest polls /sys/block every 20 ms. virtio-blk serials come from /sys/block/vdX/serial,
 *   scsi-hd serials from the Unit Serial Number VPD page (/sys/block/sdX/device/vpd_pg80).
 * - command port (guest ttyS2): host sends `RUN <id> <base64 script>` or `KILL <id>`; the guest
 *   answers each RUN with `VMPLUG RESULT <id> <exit> <base64 stdout> <base64 stderr>`. Base64
 *   frames any bytes and any size on one line; each command runs in the background in its own
 *   session, so a command that never ends delays nothing else and is killed by KILL on timeout.
 *
 * No event is lost, two ways:
 * - the Kata-shaped launcher (sandbox.ts) gives the events port `server=on,wait=on`: QEMU does not
 *   start the guest until the host is connected, so the host sees every line from READY on;
 * - where the host cannot hold QEMU (libvirt serial sockets, or a reconnect), the host asks for a
 *   snapshot through the command port and the guest re-sends its whole disk table on the *events*
 *   port between SNAPSHOT-BEGIN/END, in order with the other events. `waitReady` does this by
 *   itself when READY does not arrive within `probeAfterMs`.
 *
 * Every event carries its host-side arrival time (performance.now()), for latency measurements.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { StringDecoder } from 'node:string_decoder';
import { buildGuestPath } from './paths.js';

export class GuestError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'GuestError';
    this.code = code;
  }
}
export class GuestImageError extends GuestError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('GUEST_IMAGE_FAILED', message, options);
    this.name = 'GuestImageError';
  }
}
export class GuestConnectError extends GuestError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('GUEST_CONNECT_FAILED', message, options);
    this.name = 'GuestConnectError';
  }
}
export class GuestTimeoutError extends GuestError {
  constructor(message: string) {
    super('GUEST_TIMEOUT', message);
    this.name = 'GuestTimeoutError';
  }
}
export class GuestClosedError extends GuestError {
  constructor(message: string) {
    super('GUEST_CLOSED', message);
    this.name = 'GuestClosedError';
  }
}

export interface GuestImage {
  dir: string;
  kernel: string;
  initrd: string;
  kernelVersion: string;
}

/** Builds the guest (or finds it in the cache) with test/env/build-guest. */
export async function ensureGuestImage(signal?: AbortSignal): Promise<GuestImage> {
  const stdout = await new Promise<string>((resolve, reject) => {
    execFile(
      buildGuestPath,
      [],
      { timeout: 600_000, maxBuffer: 4 * 1024 * 1024, ...(signal ? { signal } : {}) },
      (err, out, errOut) => {
        if (err) {
          reject(
            new GuestImageError(`build-guest failed: ${String(errOut).trim().slice(-2000)}`, { cause: err }),
          );
        } else {
          resolve(String(out));
        }
      },
    );
  });
  const dir = stdout.trim().split('\n').at(-1)?.trim() ?? '';
  if (!dir.startsWith('/'))
    throw new GuestImageError(`build-guest printed no directory: ${stdout.slice(-500)}`);
  const version = await readFile(join(dir, 'VERSION'), 'utf8');
  const kernelVersion = /^kernel_version=(.+)$/m.exec(version)?.[1];
  if (!kernelVersion) throw new GuestImageError(`${dir}/VERSION has no kernel_version`);
  return { dir, kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd.img'), kernelVersion };
}

export interface GuestDisk {
  name: string;
  sizeBytes: number;
  readOnly: boolean;
  serial: string | null;
  /** performance.now() when the host received the line that reported this disk (or its size). */
  seenAt: number;
}

export type GuestEvent =
  | { type: 'ready'; at: number }
  | { type: 'disk-add'; disk: GuestDisk; at: number }
  | { type: 'disk-size'; name: string; sizeBytes: number; at: number }
  | { type: 'disk-del'; name: string; at: number }
  | { type: 'snapshot'; disks: GuestDisk[]; at: number };

export interface GuestRunResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  stdoutBytes: Buffer;
}

interface PendingRun {
  resolve: (r: GuestRunResult) => void;
  reject: (e: Error) => void;
}

interface Waiter {
  check: () => boolean;
  fail: (e: Error) => void;
}

const defaultConnectTimeoutMs = 30_000;
const defaultWaitTimeoutMs = 30_000;
const retryConnectMs = 50;

/** Splits a byte stream into lines however it is chunked; lines may be many MB (command output). */
class LineSplitter {
  private readonly decoder = new StringDecoder('utf8');
  private parts: string[] = [];
  constructor(private readonly onLine: (line: string) => void) {}
  push(chunk: Buffer): void {
    let text = this.decoder.write(chunk);
    let nl = text.indexOf('\n');
    while (nl !== -1) {
      this.parts.push(text.slice(0, nl));
      const line = this.parts.join('').replace(/\r$/, '');
      this.parts = [];
      this.onLine(line);
      text = text.slice(nl + 1);
      nl = text.indexOf('\n');
    }
    if (text.length > 0) this.parts.push(text);
  }
}

function abortError(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new GuestError('ABORTED', 'aborted');
}

/** Connects to a unix socket, retrying while it does not exist yet or nobody listens. */
async function connectWithRetry(path: string, deadline: number, signal?: AbortSignal): Promise<net.Socket> {
  for (;;) {
    if (signal?.aborted) throw abortError(signal);
    try {
      return await new Promise<net.Socket>((resolve, reject) => {
        const s = net.createConnection({ path });
        const onErr = (e: Error): void => {
          s.destroy();
          reject(e);
        };
        s.once('error', onErr);
        s.once('connect', () => {
          s.off('error', onErr);
          resolve(s);
        });
      });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ECONNREFUSED') {
        throw new GuestConnectError(`connect ${path}: ${(err as Error).message}`, { cause: err });
      }
      if (performance.now() >= deadline) {
        throw new GuestConnectError(`connect ${path}: still ${code} after the timeout`, { cause: err });
      }
      await new Promise((r) => setTimeout(r, retryConnectMs));
    }
  }
}

export class GuestAgent {
  private readonly diskTable = new Map<string, GuestDisk>();
  private readonly eventLog: GuestEvent[] = [];
  private readonly listeners = new Set<(e: GuestEvent) => void>();
  private readonly waiters = new Set<Waiter>();
  private readonly pending = new Map<string, PendingRun>();
  private snapshotBuffer: GuestDisk[] | null = null;
  private readyAt: number | null = null;
  private closedReason: string | null = null;
  private nextId = 1;

  private constructor(
    private readonly events: net.Socket,
    private readonly commands: net.Socket,
  ) {
    const evLines = new LineSplitter((l) => this.onEventLine(l));
    const cmdLines = new LineSplitter((l) => this.onCommandLine(l));
    events.on('data', (c: Buffer) => evLines.push(c));
    commands.on('data', (c: Buffer) => cmdLines.push(c));
    for (const [s, what] of [
      [events, 'events'],
      [commands, 'command'],
    ] as const) {
      s.on('error', () => {
        // 'close' follows and reports it.
      });
      s.on('close', () => this.shutdown(`guest ${what} socket closed`));
    }
  }

  /**
   * Connects to both ports. They are dialled concurrently with retries, because with
   * `wait=on` QEMU creates each listening socket only after the previous one was connected.
   */
  static async connect(
    eventsPath: string,
    commandPath: string,
    opts: { timeoutMs?: number; signal?: AbortSignal } = {},
  ): Promise<GuestAgent> {
    const deadline = performance.now() + (opts.timeoutMs ?? defaultConnectTimeoutMs);
    const results = await Promise.allSettled([
      connectWithRetry(eventsPath, deadline, opts.signal),
      connectWithRetry(commandPath, deadline, opts.signal),
    ]);
    const [ev, cmd] = results;
    if (ev?.status === 'fulfilled' && cmd?.status === 'fulfilled') return new GuestAgent(ev.value, cmd.value);
    for (const r of results) if (r.status === 'fulfilled') r.value.destroy();
    const failed = results.find((r) => r.status === 'rejected');
    throw failed?.reason instanceof Error ? failed.reason : new GuestConnectError('connect failed');
  }

  get isReady(): boolean {
    return this.readyAt !== null;
  }

  /** performance.now() when READY (or the first snapshot) arrived, or null. */
  get readySince(): number | null {
    return this.readyAt;
  }

  disks(): GuestDisk[] {
    return [...this.diskTable.values()].map((d) => ({ ...d }));
  }

  /** Every event received so far, in order. */
  history(): readonly GuestEvent[] {
    return this.eventLog;
  }

  onEvent(listener: (e: GuestEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Resolves once the guest reported READY. If READY has not come after `probeAfterMs`
   * (default 2 s), asks for a snapshot every second, which also counts as ready: the host may
   * have connected after the guest booted. `probeAfterMs: Infinity` never probes (QEMU held the
   * guest until we connected, so READY cannot have been missed).
   */
  async waitReady(opts: { timeoutMs?: number; probeAfterMs?: number } = {}): Promise<void> {
    if (this.readyAt !== null) return;
    const timeoutMs = opts.timeoutMs ?? 60_000;
    const probeAfterMs = opts.probeAfterMs ?? 2_000;
    let probing = true;
    const probe = async (): Promise<void> => {
      await new Promise((r) => setTimeout(r, probeAfterMs));
      while (probing && this.readyAt === null && this.closedReason === null) {
        try {
          await this.run('vmplug-snapshot', { timeoutMs: 1_000 });
          return;
        } catch {
          // Lost while the guest boots (the UART is reset when its driver starts): try again.
        }
      }
    };
    if (Number.isFinite(probeAfterMs)) void probe();
    try {
      await this.waitUntil(() => this.readyAt !== null, timeoutMs, 'guest READY');
    } finally {
      probing = false;
    }
  }

  /** Re-reads the guest's whole disk table (see the header comment). */
  async snapshot(opts: { timeoutMs?: number } = {}): Promise<GuestDisk[]> {
    const timeoutMs = opts.timeoutMs ?? defaultWaitTimeoutMs;
    let got: GuestDisk[] | null = null;
    const off = this.onEvent((e) => {
      if (e.type === 'snapshot') got = e.disks;
    });
    try {
      await this.run('vmplug-snapshot', { timeoutMs });
      await this.waitUntil(() => got !== null, timeoutMs, 'guest snapshot');
    } finally {
      off();
    }
    return this.disks();
  }

  /** Resolves with the first disk (present now or reported later) that matches. */
  async waitForDisk(match: (d: GuestDisk) => boolean, opts: { timeoutMs?: number } = {}): Promise<GuestDisk> {
    let found: GuestDisk | undefined;
    await this.waitUntil(
      () => {
        found = [...this.diskTable.values()].find(match);
        return found !== undefined;
      },
      opts.timeoutMs ?? defaultWaitTimeoutMs,
      () => `a matching guest disk (guest has: ${[...this.diskTable.keys()].join(', ') || 'none'})`,
    );
    return { ...(found as GuestDisk) };
  }

  /**
   * Resolves when the guest no longer has the disk, with the arrival time of the DISK-DEL line
   * (or now, if the disk was not there when called).
   */
  async waitForDiskGone(
    name: string,
    opts: { timeoutMs?: number } = {},
  ): Promise<{ name: string; at: number }> {
    if (!this.diskTable.has(name)) return { name, at: performance.now() };
    let at = 0;
    const off = this.onEvent((e) => {
      if ((e.type === 'disk-del' && e.name === name) || e.type === 'snapshot') at = e.at;
    });
    try {
      await this.waitUntil(
        () => !this.diskTable.has(name),
        opts.timeoutMs ?? defaultWaitTimeoutMs,
        `disk ${name} gone`,
      );
    } finally {
      off();
    }
    return { name, at };
  }

  /** Runs a shell script in the guest (busybox sh), stdin /dev/null. */
  run(command: string, opts: { timeoutMs?: number } = {}): Promise<GuestRunResult> {
    if (this.closedReason !== null) return Promise.reject(new GuestClosedError(this.closedReason));
    const id = `c${this.nextId++}`;
    const timeoutMs = opts.timeoutMs ?? defaultWaitTimeoutMs;
    return new Promise<GuestRunResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        if (this.closedReason === null) this.commands.write(`\nKILL ${id}\n`);
        reject(new GuestTimeoutError(`guest command ${id} did not finish within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      // The leading newline ends whatever partial line the port may hold: a probe sent while the
      // guest was still booting can leave half a line in the tty (its UART is reset when the
      // driver starts), and the next command glued to it would never be recognised.
      this.commands.write(`\nRUN ${id} ${Buffer.from(command, 'utf8').toString('base64')}\n`);
    });
  }

  async close(): Promise<void> {
    this.shutdown('guest agent closed');
    await Promise.all(
      [this.events, this.commands].map(
        (s) =>
          new Promise<void>((resolve) => {
            if (s.destroyed && s.closed) return resolve();
            s.once('close', () => resolve());
            s.destroy();
          }),
      ),
    );
  }

  private shutdown(reason: string): void {
    if (this.closedReason !== null) return;
    this.closedReason = reason;
    this.events.destroy();
    this.commands.destroy();
    for (const p of this.pending.values()) p.reject(new GuestClosedError(reason));
    this.pending.clear();
    for (const w of this.waiters) w.fail(new GuestClosedError(reason));
    this.waiters.clear();
  }

  private waitUntil(check: () => boolean, timeoutMs: number, what: string | (() => string)): Promise<void> {
    if (check()) return Promise.resolve();
    if (this.closedReason !== null) return Promise.reject(new GuestClosedError(this.closedReason));
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        check: () => {
          if (!check()) return false;
          clearTimeout(timer);
          resolve();
          return true;
        },
        fail: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        const desc = typeof what === 'string' ? what : what();
        reject(new GuestTimeoutError(`timed out after ${timeoutMs} ms waiting for ${desc}`));
      }, timeoutMs);
      this.waiters.add(waiter);
    });
  }

  private emit(e: GuestEvent): void {
    this.eventLog.push(e);
    for (const l of this.listeners) l(e);
    for (const w of [...this.waiters]) if (w.check()) this.waiters.delete(w);
  }

  private onEventLine(line: string): void {
    const at = performance.now();
    const f = line.split(' ');
    if (f[0] !== 'VMPLUG') return;
    switch (f[1]) {
      case 'READY':
        this.readyAt ??= at;
        this.emit({ type: 'ready', at });
        return;
      case 'DISK-ADD': {
        const [, , name, size, ro] = f;
        if (!name || size === undefined || ro === undefined) return;
        const serial = f.slice(5).join(' ');
        const disk: GuestDisk = {
          name,
          sizeBytes: Number(size),
          readOnly: ro === '1',
          serial: serial === '-' || serial === '' ? null : serial,
          seenAt: at,
        };
        if (this.snapshotBuffer) {
          this.snapshotBuffer.push(disk);
          return;
        }
        this.diskTable.set(name, disk);
        this.emit({ type: 'disk-add', disk: { ...disk }, at });
        return;
      }
      case 'DISK-SIZE': {
        const [, , name, size] = f;
        const disk = name ? this.diskTable.get(name) : undefined;
        if (!name || !disk || size === undefined) return;
        disk.sizeBytes = Number(size);
        disk.seenAt = at;
        this.emit({ type: 'disk-size', name, sizeBytes: disk.sizeBytes, at });
        return;
      }
      case 'DISK-DEL': {
        const name = f[2];
        if (!name) return;
        this.diskTable.delete(name);
        this.emit({ type: 'disk-del', name, at });
        return;
      }
      case 'SNAPSHOT-BEGIN':
        this.snapshotBuffer = [];
        return;
      case 'SNAPSHOT-END': {
        const disks = this.snapshotBuffer ?? [];
        this.snapshotBuffer = null;
        // Keep the arrival time of disks we already knew unchanged: a snapshot is not an arrival.
        const old = new Map(this.diskTable);
        this.diskTable.clear();
        for (const d of disks) {
          const prev = old.get(d.name);
          if (prev && prev.sizeBytes === d.sizeBytes && prev.serial === d.serial) d.seenAt = prev.seenAt;
          this.diskTable.set(d.name, d);
        }
        this.readyAt ??= at;
        this.emit({ type: 'snapshot', disks: disks.map((d) => ({ ...d })), at });
        return;
      }
      default:
        return;
    }
  }

  private onCommandLine(raw: string): void {
    // Take the answer from wherever it starts: bytes the tty echoed while the guest booted (before
    // its command loop turned echo off) can sit in front of it without a newline of their own.
    const at = raw.lastIndexOf('VMPLUG RESULT ');
    if (at === -1) return;
    const line = raw.slice(at).trimEnd();
    const f = line.split(' ');
    if (f[0] !== 'VMPLUG' || f[1] !== 'RESULT') return;
    const [, , id, code, out = '', err = ''] = f;
    if (!id) return;
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    const stdoutBytes = Buffer.from(out, 'base64');
    p.resolve({
      exitCode: Number(code),
      stdout: stdoutBytes.toString('utf8'),
      stderr: Buffer.from(err, 'base64').toString('utf8'),
      stdoutBytes,
    });
  }
}
