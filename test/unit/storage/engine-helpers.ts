import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseSandboxId, parseVolumeId, type SandboxId } from '../../../core/ids.js';
import type { OperationContext, OperationLogger } from '../../../storage/attach-service.js';
import { AttachEngine, type AttachEngineOptions } from '../../../storage/engine.js';
import { Journal } from '../../../storage/journal.js';
import type { SandboxDirectory, SandboxPresence } from '../../../storage/sandbox-directory.js';
import { type AttachSpec, parseAttachRequest } from '../../../storage/volume-spec.js';
import { FakeQemu, type FakeQemuOptions } from '../fakes/qemu.js';

/** A cephx key of the shape `ceph auth get-key` prints. */
export const KEY = 'AQDuSQNrSIzGGhAAA42jGo01/mILR5NFi7XNYA==';

export const sb = parseSandboxId('a'.repeat(64));
export const sb2 = parseSandboxId('b'.repeat(64));
export const vol = (v: string) => parseVolumeId(v);

/** Captures every line, serialized, so tests can grep them (for the key). */
export class MemoryLog implements OperationLogger {
  constructor(
    readonly lines: string[] = [],
    private readonly bindings: Record<string, unknown> = {},
  ) {}
  #push(level: string, obj: Record<string, unknown>, msg?: string): void {
    this.lines.push(JSON.stringify({ level, ...this.bindings, ...obj, msg }));
  }
  trace(obj: Record<string, unknown>, msg?: string): void {
    this.#push('trace', obj, msg);
  }
  debug(obj: Record<string, unknown>, msg?: string): void {
    this.#push('debug', obj, msg);
  }
  info(obj: Record<string, unknown>, msg?: string): void {
    this.#push('info', obj, msg);
  }
  warn(obj: Record<string, unknown>, msg?: string): void {
    this.#push('warn', obj, msg);
  }
  error(obj: Record<string, unknown>, msg?: string): void {
    this.#push('error', obj, msg);
  }
  child(bindings: Record<string, unknown>): OperationLogger {
    return new MemoryLog(this.lines, { ...this.bindings, ...bindings });
  }
}

export class FakeDirectory implements SandboxDirectory {
  readonly presence = new Map<SandboxId, SandboxPresence>();

  addQemu(id: SandboxId, qemu: FakeQemu): void {
    this.presence.set(id, { state: 'present', sandbox: { id, kind: 'kata', qmp: qemu } });
  }
  lookup(id: SandboxId): SandboxPresence {
    return this.presence.get(id) ?? { state: 'gone' };
  }
  known(): SandboxId[] {
    return [...this.presence].filter(([, p]) => p.state !== 'gone').map(([id]) => id);
  }
}

/** A TCP server that talks like a Ceph msgr2 monitor for as long as the probe looks. */
export async function fakeMonitor(
  banner = 'ceph v2\n',
): Promise<{ address: string; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
    if (banner.length > 0) s.write(banner);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    address: `127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

/** A loopback port nobody listens on. */
export async function closedPort(): Promise<string> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((r) => server.close(() => r()));
  return `127.0.0.1:${port}`;
}

export function blockSpec(path = '/dev/loop7', extra: Record<string, unknown> = {}): AttachSpec {
  return parseAttachRequest({ mode: 'block', source: { type: 'hostDevice', path }, ...extra });
}

export function rbdSpec(monitor: string, extra: Record<string, unknown> = {}, image = 'vol1'): AttachSpec {
  return parseAttachRequest({
    mode: 'rbd',
    source: { type: 'rbd', pool: 'rbd', image, monitors: [monitor], user: 'vmplug', key: KEY },
    ...extra,
  });
}

export interface Bed {
  stateDir: string;
  journal: Journal;
  dir: FakeDirectory;
  qemu: FakeQemu;
  log: MemoryLog;
  engine: AttachEngine;
  ctx: OperationContext;
  cleanup(): Promise<void>;
}

export async function makeBed(
  opts: { qemu?: FakeQemuOptions; engine?: Partial<AttachEngineOptions> } = {},
): Promise<Bed> {
  const stateDir = await mkdtemp(join(tmpdir(), 'vmplug-engine-'));
  const log = new MemoryLog();
  const journal = new Journal({
    stateDir,
    logger: log as unknown as ConstructorParameters<typeof Journal>[0]['logger'],
  });
  const dir = new FakeDirectory();
  const qemu = new FakeQemu(opts.qemu);
  dir.addQemu(sb, qemu);
  const engine = new AttachEngine({
    journal,
    sandboxes: dir,
    fingerprintKey: Buffer.alloc(32, 3),
    stateDir,
    logger: log,
    detachTimeoutMs: 500,
    reconcileUnplugWaitMs: 100,
    qmpTimeoutMs: 2_000,
    cephProbeTimeoutMs: 1_000,
    // The fake's paths (/dev/loop1...) need not exist on the test host.
    checkHostDevice: async (path) => path,
    ...opts.engine,
  });
  const ctx: OperationContext = { signal: new AbortController().signal, log };
  return {
    stateDir,
    journal,
    dir,
    qemu,
    log,
    engine,
    ctx,
    cleanup: async () => {
      // Writes behind an answer may still run: the directory goes after them.
      await journal.settled();
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}
