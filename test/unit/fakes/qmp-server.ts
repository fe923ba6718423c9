// A QMP server over a real unix socket that behaves like QEMU 7.2 as captured from
// `qemu-system-x86_64 -machine none -qmp unix:...,server=on,wait=off -nodefaults`:
// - the greeting below, byte for byte, and "\r\n" after every message;
// - Python-style separators (", " and ": "), replies as {"return": ..., "id": ...} and errors as
//   {"id": ..., "error": {"class", "desc"}}, events as {"timestamp", "event", "data"};
// - commands refused with CommandNotFound until qmp_capabilities, and a second
//   qmp_capabilities refused too;
// - one client at a time: later clients are connected but get nothing until the current one
//   leaves, then the next gets the greeting;
// - input is a stream of concatenated JSON objects (no newline needed).
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

export const QEMU_72_GREETING =
  '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}\r\n';

export type Reply =
  | { return: unknown }
  | { error: { class: string; desc: string } }
  /** Send nothing (the test answers later with `replyTo`, or never). */
  | { noReply: true };

export interface Received {
  execute: string;
  arguments?: Record<string, unknown>;
  id?: unknown;
}

export type Handler = (args: Record<string, unknown> | undefined, ctx: HandlerContext) => Reply;

export interface HandlerContext {
  id: unknown;
  /** Sends an event now, before the reply this handler returns. */
  emit(event: string, data?: Record<string, unknown>): void;
}

/** Python json.dumps style, as QEMU's QMP output looks. */
export function qemuJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(qemuJson).join(', ')}]`;
  if (typeof value === 'object' && value !== null) {
    return `{${Object.entries(value)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${JSON.stringify(k)}: ${qemuJson(v)}`)
      .join(', ')}}`;
  }
  return JSON.stringify(value);
}

export function timestamp(): { seconds: number; microseconds: number } {
  const us = Math.round(performance.timeOrigin * 1000 + performance.now() * 1000);
  return { seconds: Math.floor(us / 1e6), microseconds: us % 1e6 };
}

export class FakeQemu {
  readonly received: Received[] = [];
  readonly handlers = new Map<string, Handler>();
  /** How bytes go out; tests replace it to split or coalesce writes. */
  transmit: (socket: net.Socket, bytes: Buffer) => void = (s, b) => {
    s.write(b);
  };
  /** When false, the current client gets no greeting (a wedged monitor). */
  greet = true;
  connections = 0;
  private server: net.Server | undefined;
  private active: net.Socket | undefined;
  private readonly parked: net.Socket[] = [];
  private readonly all = new Set<net.Socket>();

  private constructor(
    readonly dir: string,
    readonly path: string,
  ) {
    this.handlers.set('query-status', () => ({
      return: { status: 'running', singlestep: false, running: true },
    }));
  }

  static async start(): Promise<FakeQemu> {
    const dir = mkdtempSync(join(tmpdir(), 'vmplug-fakeqmp-'));
    const fake = new FakeQemu(dir, join(dir, 'qmp.sock'));
    await fake.listen();
    return fake;
  }

  /**
   * Listens at `socketPath` (its directory must exist), e.g. a sandbox's monitor under a test
   * --monitor-dir; close() then removes that directory.
   */
  static async startAt(socketPath: string): Promise<FakeQemu> {
    const fake = new FakeQemu(dirname(socketPath), socketPath);
    await fake.listen();
    return fake;
  }

  async listen(): Promise<void> {
    const server = net.createServer((socket) => this.accept(socket));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.path, () => resolve());
    });
  }

  /** Like QEMU exiting: the socket file goes away and every client is cut off. */
  async stopListening(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.all) s.destroy();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  async close(): Promise<void> {
    await this.stopListening();
    rmSync(this.dir, { recursive: true, force: true });
  }

  get client(): net.Socket | undefined {
    return this.active;
  }

  get parkedCount(): number {
    return this.parked.length;
  }

  /** Drops the current client's connection (socket reset). */
  dropClient(): void {
    this.active?.destroy();
  }

  send(message: unknown): void {
    if (this.active) this.transmit(this.active, Buffer.from(`${qemuJson(message)}\r\n`));
  }

  sendRaw(text: string): void {
    if (this.active) this.transmit(this.active, Buffer.from(text));
  }

  emit(event: string, data?: Record<string, unknown>): void {
    this.send(
      data === undefined ? { timestamp: timestamp(), event } : { timestamp: timestamp(), event, data },
    );
  }

  replyTo(id: unknown, reply: Reply): void {
    if ('return' in reply) this.send({ return: reply.return, id });
    else if ('error' in reply) this.send({ id, error: reply.error });
  }

  private accept(socket: net.Socket): void {
    this.all.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => {
      this.all.delete(socket);
      const i = this.parked.indexOf(socket);
      if (i >= 0) this.parked.splice(i, 1);
      if (this.active === socket) {
        this.active = undefined;
        const next = this.parked.shift();
        if (next) this.serve(next);
      }
    });
    if (this.active) this.parked.push(socket);
    else this.serve(socket);
  }

  private serve(socket: net.Socket): void {
    this.active = socket;
    this.connections++;
    let negotiated = false;
    const parser = new JsonStreamParser((text) => {
      let msg: Received;
      try {
        msg = JSON.parse(text) as Received;
      } catch {
        this.send({ error: { class: 'GenericError', desc: 'JSON parse error, expecting value' } });
        return;
      }
      this.received.push(msg);
      const id = msg.id;
      if (msg.execute === 'qmp_capabilities') {
        if (negotiated) {
          this.replyTo(id, {
            error: {
              class: 'CommandNotFound',
              desc: 'Capabilities negotiation is already complete, command ignored',
            },
          });
        } else {
          negotiated = true;
          this.replyTo(id, { return: {} });
        }
        return;
      }
      if (!negotiated) {
        this.replyTo(id, {
          error: {
            class: 'CommandNotFound',
            desc: "Expecting capabilities negotiation with 'qmp_capabilities'",
          },
        });
        return;
      }
      const handler = this.handlers.get(msg.execute);
      if (!handler) {
        this.replyTo(id, {
          error: { class: 'CommandNotFound', desc: `The command ${msg.execute} has not been found` },
        });
        return;
      }
      const reply = handler(msg.arguments, { id, emit: (e, d) => this.emit(e, d) });
      this.replyTo(id, reply);
    });
    socket.on('data', (d: Buffer) => parser.push(d.toString('utf8')));
    if (this.greet) this.transmit(socket, Buffer.from(QEMU_72_GREETING));
  }
}

/** Splits concatenated JSON objects (QEMU's input side accepts them back to back). */
class JsonStreamParser {
  private buf = '';
  private depth = 0;
  private inString = false;
  private escaped = false;
  private scanned = 0;

  constructor(private readonly onObject: (text: string) => void) {}

  push(text: string): void {
    this.buf += text;
    let start = 0;
    for (let i = this.scanned; i < this.buf.length; i++) {
      const c = this.buf[i];
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (c === '\\') this.escaped = true;
        else if (c === '"') this.inString = false;
      } else if (c === '"') this.inString = true;
      else if (c === '{' || c === '[') this.depth++;
      else if (c === '}' || c === ']') {
        this.depth--;
        if (this.depth === 0) {
          this.onObject(this.buf.slice(start, i + 1));
          start = i + 1;
        }
      }
    }
    this.buf = this.buf.slice(start);
    this.scanned = this.buf.length;
  }
}
