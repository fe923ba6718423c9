import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { copyFile, mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { type IncomingMessage, request } from 'node:http';
import { connect } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { TEST_BED_ALLOWED_DEVICES } from './loop.js';
import { repoRoot } from './paths.js';

// vmplugd as a real child process, for end-to-end tests and benchmarks: started from the
// checkout's bin/vmplugd.js with flags (no config file), JSON log lines captured, REST calls over
// its unix socket, and a kill -9 that leaves its journal and sockets exactly as a crash would.

const VMPLUGD = fileURLToPath(new URL('../../bin/vmplugd.js', import.meta.url));

export interface DaemonProcessOptions {
  /** Directory for the socket and the state dir (journal). */
  dir: string;
  /** Where the QEMU wrapper puts the private monitors (the test root's vmplug/sandboxes). */
  monitorDir: string;
  /** Kata's vm root of the test root (identity only). */
  kataVmRoot: string;
  /** libvirt URI to manage domains at (e.g. a test domain's uri); default '' (none). */
  libvirtUri?: string;
  /** Extra flags, e.g. ['--reconcile-interval-ms', '2000']. */
  extraArgs?: string[];
  env?: Record<string, string>;
  /** VMPLUG_FAILPOINT (daemon/failpoints.ts), e.g. 'kill-after:Pending'; unset when absent. */
  failpoint?: string;
  /** Until /healthz answers (default 30 s: tsx compiles the sources on first start). */
  startTimeoutMs?: number;
  logLevel?: string;
  /** Node flags before the script, e.g. ['--cpu-prof', '--cpu-prof-dir', dir] (benches). */
  nodeArgs?: string[];
  /** The entry script instead of bin/vmplugd.js (e.g. a runner of a build, bench/daemon-memory.ts). */
  script?: string;
}

export interface ApiResponse<T = unknown> {
  status: number;
  contentType: string;
  body: T;
}

export interface DaemonProcess {
  readonly pid: number;
  readonly socketPath: string;
  readonly stateDir: string;
  /** Every stdout/stderr line so far, in order (JSON log lines and anything else). */
  readonly lines: readonly string[];
  call<T = unknown>(
    method: string,
    path: string,
    body?: unknown,
    timeoutMs?: number,
  ): Promise<ApiResponse<T>>;
  /** The process's argv as the kernel shows it (for the "no secret on argv" check). */
  cmdline(): Promise<string>;
  /** SIGKILL: no cleanup at all, like a crash or an OOM kill. */
  crash(): Promise<void>;
  /** SIGTERM and wait for exit; resolves with the exit code. */
  stop(timeoutMs?: number): Promise<number | null>;
}

/**
 * The node options vmplugd runs with in production: those bin/vmplugd.js names on its first line
 * (`#!/usr/bin/env -S node ...`; the systemd unit repeats them), for benches that measure it.
 */
export async function productionNodeOptions(): Promise<string[]> {
  const first = (await readFile(join(repoRoot, 'bin', 'vmplugd.js'), 'utf8')).split('\n')[0] ?? '';
  const m = /^#!\/usr\/bin\/env -S node(.*)$/.exec(first);
  return (
    m?.[1]
      ?.trim()
      .split(/\s+/)
      .filter((o) => o !== '') ?? []
  );
}

/**
 * Compiles the daemon (tsconfig.build.json, as `npm run build`) into `dir`, outside the checkout
 * (the linter would read it) and resolving its node_modules, and answers a runner script for
 * `script`: bin/vmplugd.js prefers the sources whenever tsx is installed. For benches measuring
 * what a production install runs (tsx's loader thread and esbuild cost ~25 MiB more).
 */
export async function buildDaemon(dir: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  await symlink(join(repoRoot, 'node_modules'), join(dir, 'node_modules'));
  // The native addons (libvirt, peer credentials, keyring, file replace), where the build's
  // modules look for them, as beside dist/ in a checkout.
  await mkdir(join(dir, 'libvirt', 'native'), { recursive: true });
  await symlink(join(repoRoot, 'libvirt', 'native', 'build'), join(dir, 'libvirt', 'native', 'build'));
  // "type": "module" (and the version the daemon reports) for the build's .js files.
  await copyFile(join(repoRoot, 'package.json'), join(dir, 'package.json'));
  await promisify(execFile)('npx', ['tsc', '-p', join(repoRoot, 'tsconfig.build.json'), '--outDir', dir], {
    cwd: repoRoot,
    timeout: 300_000,
  });
  const runner = join(dir, 'run-vmplugd.mjs');
  await writeFile(
    runner,
    "const { main } = await import('./daemon/main.js');\n" +
      'process.exit(await main({ argv: process.argv.slice(2), env: process.env, stdout: process.stdout, stderr: process.stderr }));\n',
  );
  return runner;
}

export async function startDaemonProcess(opts: DaemonProcessOptions): Promise<DaemonProcess> {
  const stateDir = join(opts.dir, 'state');
  const socketPath = join(opts.dir, 'vmplug.sock');
  await mkdir(stateDir, { recursive: true });
  const args = [
    ...(opts.nodeArgs ?? []),
    opts.script ?? VMPLUGD,
    '--socket',
    socketPath,
    '--state-dir',
    stateDir,
    '--monitor-dir',
    opts.monitorDir,
    '--kata-vm-root',
    opts.kataVmRoot,
    '--libvirt-uri',
    opts.libvirtUri ?? '',
    '--log-level',
    opts.logLevel ?? 'debug',
    ...(opts.extraArgs ?? []),
  ];
  const child = spawn(process.execPath, args, {
    // Loop devices stand in for rbd mappings: the test bed allows them (a flag in extraArgs wins).
    env: {
      ...process.env,
      VMPLUG_ALLOWED_DEVICES: TEST_BED_ALLOWED_DEVICES,
      ...(opts.failpoint !== undefined ? { VMPLUG_FAILPOINT: opts.failpoint } : {}),
      ...(opts.env ?? {}),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const collect = (stream: NodeJS.ReadableStream): void => {
    let rest = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      rest += chunk;
      let nl = rest.indexOf('\n');
      while (nl !== -1) {
        lines.push(rest.slice(0, nl));
        rest = rest.slice(nl + 1);
        nl = rest.indexOf('\n');
      }
    });
    stream.on('end', () => {
      if (rest !== '') lines.push(rest);
    });
  };
  if (child.stdout) collect(child.stdout);
  if (child.stderr) collect(child.stderr);
  const exited = once(child, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;

  const call = <T>(method: string, path: string, body?: unknown, timeoutMs = 60_000) =>
    apiCall<T>(socketPath, method, path, body, timeoutMs);

  const deadline = Date.now() + (opts.startTimeoutMs ?? 30_000);
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`vmplugd exited during start-up:\n${lines.slice(-20).join('\n')}`);
    }
    try {
      const r = await call('GET', '/healthz', undefined, 1000);
      if (r.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`vmplugd did not answer /healthz in time:\n${lines.slice(-20).join('\n')}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }

  const pid = child.pid ?? -1;
  return {
    pid,
    socketPath,
    stateDir,
    lines,
    call,
    cmdline: async () => (await readFile(`/proc/${pid}/cmdline`, 'utf8')).replaceAll('\0', ' '),
    crash: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
    },
    stop: async (timeoutMs = 30_000) => {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      try {
        const [code] = await exited;
        return code;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/**
 * Waits until vmplugd is ready (discovery settled, start-up reconcile run) and serves
 * `sandboxId`: the moment a test may act on that sandbox through it.
 */
export async function waitServing(d: DaemonProcess, sandboxId: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ready = await d.call('GET', '/readyz');
    const found = await d.call('GET', `/v1/sandboxes/${sandboxId}`);
    if (ready.status === 200 && found.status === 200) return;
    if (Date.now() > deadline) {
      throw new Error(`vmplugd not ready with ${sandboxId} discovered: ${JSON.stringify(ready.body)}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Sends the call; true when the daemon died answering it (a crash failpoint fired), then reaped. */
export async function diesOn(
  d: DaemonProcess,
  method: string,
  path: string,
  body?: unknown,
): Promise<boolean> {
  try {
    await d.call(method, path, body, 30_000);
    return false;
  } catch {
    await d.crash();
    return true;
  }
}

/**
 * A request whose body the server refuses from its content-length (413) without reading it. Like
 * a client sending `Expect: 100-continue`, it writes the headers, waits a moment for an early
 * answer, and writes the body only if none came: racing a 2 MiB body against the server's close
 * loses the answer (node:http drops it on EPIPE, and a unix socket closed with unread data resets
 * the peer).
 */
export function apiCallOversized(
  socketPath: string,
  method: string,
  path: string,
  body: string,
  timeoutMs = 60_000,
): Promise<ApiResponse> {
  return new Promise((resolve, reject) => {
    const sock = connect(socketPath);
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`no answer to ${method} ${path} within ${timeoutMs} ms`));
    }, timeoutMs);
    let bodyTimer: NodeJS.Timeout | undefined;
    sock.on('error', () => undefined);
    sock.on('data', (c: Buffer) => {
      clearTimeout(bodyTimer);
      chunks.push(c);
    });
    sock.on('close', () => {
      clearTimeout(timer);
      clearTimeout(bodyTimer);
      const text = Buffer.concat(chunks).toString('utf8');
      const head = text.slice(0, text.indexOf('\r\n\r\n'));
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0);
      if (status === 0) return reject(new Error(`no HTTP answer to ${method} ${path}`));
      const contentType = /^content-type:\s*(.*)$/im.exec(head)?.[1]?.trim() ?? '';
      const rest = text.slice(head.length + 4);
      let parsed: unknown = rest;
      try {
        parsed = JSON.parse(rest);
      } catch {
        // not JSON
      }
      resolve({ status, contentType, body: parsed });
    });
    sock.write(
      `${method} ${path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n` +
        `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n`,
    );
    bodyTimer = setTimeout(() => sock.write(body), 1_000);
  });
}

/** One REST call over a unix socket; JSON in, JSON (or text) out. */
export function apiCall<T = unknown>(
  socketPath: string,
  method: string,
  path: string,
  body?: unknown,
  timeoutMs = 60_000,
): Promise<ApiResponse<T>> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
    const req = request(
      {
        socketPath,
        method,
        path,
        headers: payload === undefined ? {} : { 'content-type': 'application/json' },
        signal: AbortSignal.timeout(timeoutMs),
      },
      (res) => collectResponse<T>(res).then(resolve, reject),
    );
    req.on('error', reject);
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

/**
 * A request whose whole body is written, as a plain client does (no `Expect: 100-continue`, no
 * early stop), with node:http, in 64 KiB pieces a couple of milliseconds apart, the way a body
 * streamed from a file or a slow producer goes out: the server must read an oversized body to its
 * end and answer after it. A server that answers and closes early makes a later write fail with
 * EPIPE and node:http then reports the error, not the answer: this rejects with it.
 */
export function apiCallWholeBody(
  socketPath: string,
  method: string,
  path: string,
  body: string | Buffer,
  timeoutMs = 60_000,
): Promise<ApiResponse> {
  const payload = typeof body === 'string' ? Buffer.from(body) : body;
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath,
        method,
        path,
        headers: { 'content-type': 'application/json', 'content-length': payload.length },
        signal: AbortSignal.timeout(timeoutMs),
      },
      (res) => collectResponse(res).then(resolve, reject),
    );
    req.on('error', reject);
    void (async () => {
      const piece = 64 * 1024;
      for (let at = 0; at < payload.length && !req.destroyed; at += piece) {
        if (!req.write(payload.subarray(at, at + piece))) await once(req, 'drain');
        await new Promise((r) => setTimeout(r, 2));
      }
      if (!req.destroyed) req.end();
    })().catch(() => undefined);
  });
}

/** A response's status, content type and body (parsed when JSON). */
function collectResponse<T>(res: IncomingMessage): Promise<ApiResponse<T>> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    res.on('data', (c: Buffer) => chunks.push(c));
    res.on('error', reject);
    res.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const contentType = String(res.headers['content-type'] ?? '');
      let parsed: unknown = text;
      if (contentType.includes('json') && text !== '') {
        try {
          parsed = JSON.parse(text);
        } catch {
          parsed = text;
        }
      }
      resolve({ status: res.statusCode ?? 0, contentType, body: parsed as T });
    });
  });
}

/** vmplugd on a test root (quiet logs), serving `sandboxId`: what the benchmarks start with. */
export async function startServingDaemon(
  root: { monitorDir: string; kataVmRoot: string },
  sandboxId: string,
  dir: string,
): Promise<DaemonProcess> {
  const d = await startDaemonProcess({
    dir,
    monitorDir: root.monitorDir,
    kataVmRoot: root.kataVmRoot,
    logLevel: 'warn',
  });
  await waitServing(d, sandboxId);
  return d;
}
