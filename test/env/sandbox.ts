/**
 * Kata-shaped sandboxes for tests: QEMU started through bin/vmplug-qemu with the arguments a Kata
 * sandbox has, Kata's own QMP socket held by a client for the sandbox's whole life (as the Kata
 * shim does), and the test guest's serial ports for events and commands.
 *
 * Everything lives under a test root (mkdtemp), never the real /run/vc or /run/vmplug:
 *   <root>/vc/vm/<id>/           Kata's sandbox dir: qmp.sock (Kata's monitor), console.log,
 *                                guest-events.sock, guest-cmd.sock
 *   <root>/vc/sbs/<id>/persist.json   when a pod identity is given
 *   <root>/vmplug/sandboxes/<id>/qmp.sock   made by the wrapper: vmplug's private monitor
 *
 * Teardown: stop()/cleanup(), and on process exit or SIGINT/SIGTERM (synchronous SIGKILL of every
 * QEMU still running). QEMU also runs under `setpriv --pdeathsig SIGKILL`, so it dies with the
 * test process even when that is killed outright.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { ensureGuestImage, GuestAgent } from './guest.js';
import { maxUnixSocketPathBytes, qemuWrapperPath } from './paths.js';

export class SandboxError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SandboxError';
    this.code = code;
  }
}

export interface TestRoot {
  dir: string;
  kataVmRoot: string;
  kataSbsRoot: string;
  monitorDir: string;
  cleanup(): Promise<void>;
}

export interface PodIdentity {
  uid: string;
  name: string;
  namespace: string;
}

export interface StartSandboxOptions {
  id?: string;
  memoryMiB?: number;
  maxMemoryMiB?: number;
  vcpus?: number;
  maxVcpus?: number;
  accel?: 'tcg' | 'kvm';
  pod?: PodIdentity;
  signal?: AbortSignal;
  /** Boot (connect + READY) timeout; default 90 s. */
  bootTimeoutMs?: number;
  /**
   * Adds a third QMP monitor, `<dir>/inspect.sock`, that only tests use: it lets a test look at
   * QEMU (block nodes, devices, secrets) while vmplugd holds the private monitor. A real Kata
   * sandbox has no such monitor; vmplug never uses it.
   */
  inspectMonitor?: boolean;
  /**
   * Guest RAM from a shared memfd backend (`-object memory-backend-memfd,...,share=on` and
   * `-machine memory-backend=mem`), as Kata has with virtio-fs: what vhost-user devices need (the
   * storage daemon maps the guest's memory). Off by default.
   */
  sharedMemory?: boolean;
  /** An initrd to boot instead of the test guest's own (bench/guest-io: the guest's plus fio). */
  initrd?: string;
}

export interface KataSandbox {
  id: string;
  pid: number;
  dir: string;
  kataQmpPath: string;
  vmplugQmpPath: string;
  /** Set when started with `inspectMonitor`. */
  inspectQmpPath?: string;
  consoleLog: string;
  /** The guest's serial ports as unix sockets, for a second GuestAgent after `guest` is closed. */
  guestEventsPath: string;
  guestCommandPath: string;
  guest: GuestAgent;
  /** The arguments given to bin/vmplug-qemu (what Kata would pass to its hypervisor). */
  args: readonly string[];
  /** From spawn to the guest's READY, in ms. */
  bootMs: number;
  /** Resolves when QEMU has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stop(): Promise<void>;
}

const rootState = Symbol('vmplug.testRootState');
const idPattern = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** What a root tracks so that cleanup (also at process exit) can find it. */
interface RootState {
  dir: string;
  running: Map<string, { pid: number; stop: () => Promise<void> }>;
}

function killSync(state: RootState): void {
  for (const { pid } of state.running.values()) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
  state.running.clear();
  rmSync(state.dir, { recursive: true, force: true });
}

/**
 * A temp dir for sandboxes. `at` places Kata's and vmplug's dirs elsewhere, e.g. at the host paths
 * a deployed vmplugd reads (/run/vc/vm, /run/vmplug/sandboxes); removing those is the caller's.
 */
export async function createTestRoot(
  at: Partial<Pick<TestRoot, 'kataVmRoot' | 'kataSbsRoot' | 'monitorDir'>> = {},
): Promise<TestRoot> {
  // Short base name: unix socket paths under it must stay within 107 bytes.
  const dir = await mkdtemp(join(tmpdir(), 'vmp-'));
  const kataVmRoot = at.kataVmRoot ?? join(dir, 'vc', 'vm');
  const kataSbsRoot = at.kataSbsRoot ?? join(dir, 'vc', 'sbs');
  const monitorDir = at.monitorDir ?? join(dir, 'vmplug', 'sandboxes');
  await mkdir(kataVmRoot, { recursive: true, mode: 0o750 });
  await mkdir(kataSbsRoot, { recursive: true, mode: 0o750 });
  // Not created: the wrapper must be able to make it itself.
  const state: RootState = { dir, running: new Map() };
  const onExit = (): void => killSync(state);
  const onSignal = (sig: NodeJS.Signals): void => {
    killSync(state);
    unregister();
    // Our listener replaced the default action; keep the default if nobody else handles it.
    if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
  };
  const unregister = (): void => {
    process.off('exit', onExit);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
  process.on('exit', onExit);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const root: TestRoot & { [rootState]: RootState } = {
    dir,
    kataVmRoot,
    kataSbsRoot,
    monitorDir,
    [rootState]: state,
    async cleanup() {
      await Promise.allSettled([...state.running.values()].map((s) => s.stop()));
      killSync(state);
      unregister();
      await rm(dir, { recursive: true, force: true });
    },
  };
  return root;
}

function stateOf(root: TestRoot): RootState {
  const s = (root as TestRoot & { [rootState]?: RootState })[rootState];
  if (!s) throw new SandboxError('SANDBOX_BAD_ROOT', 'not a root made by createTestRoot');
  return s;
}

/**
 * Holds Kata's monitor like the Kata shim: reads the greeting, negotiates capabilities and stays
 * connected, discarding events, until closed.
 */
class KataMonitorHolder {
  private constructor(private readonly socket: net.Socket) {}

  static async connect(path: string, deadline: number, signal: AbortSignal): Promise<KataMonitorHolder> {
    for (;;) {
      if (signal.aborted) throw signal.reason;
      const socket = await new Promise<net.Socket | null>((resolve, reject) => {
        const s = net.createConnection({ path });
        s.once('connect', () => resolve(s));
        s.once('error', (e: NodeJS.ErrnoException) => {
          s.destroy();
          if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') resolve(null);
          else reject(e);
        });
      });
      if (socket) {
        const holder = new KataMonitorHolder(socket);
        await holder.negotiate(deadline);
        return holder;
      }
      if (performance.now() > deadline) {
        throw new SandboxError('SANDBOX_KATA_QMP', `Kata's monitor ${path} never appeared`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  private negotiate(deadline: number): Promise<void> {
    const s = this.socket;
    return new Promise<void>((resolve, reject) => {
      let buf = '';
      let step: 'greeting' | 'capabilities' = 'greeting';
      const timer = setTimeout(
        () =>
          fail(new SandboxError('SANDBOX_KATA_QMP', `no QMP greeting/reply from Kata's monitor (${step})`)),
        Math.max(1, deadline - performance.now()),
      );
      const fail = (e: Error): void => {
        clearTimeout(timer);
        s.off('data', onData);
        s.destroy();
        reject(e);
      };
      const onData = (chunk: Buffer): void => {
        buf += chunk.toString('utf8');
        let nl = buf.indexOf('\n');
        while (nl !== -1) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          nl = buf.indexOf('\n');
          if (!line) continue;
          const msg = JSON.parse(line) as Record<string, unknown>;
          if (step === 'greeting' && 'QMP' in msg) {
            step = 'capabilities';
            s.write('{"execute":"qmp_capabilities"}\n');
          } else if (step === 'capabilities' && 'return' in msg) {
            clearTimeout(timer);
            s.off('data', onData);
            // Keep reading (and dropping events) so QEMU never blocks on a full socket.
            s.on('data', () => {});
            resolve();
            return;
          } else if ('error' in msg) {
            fail(new SandboxError('SANDBOX_KATA_QMP', `Kata's monitor refused: ${line}`));
            return;
          }
        }
      };
      s.on('data', onData);
      s.on('error', () => {});
      s.once('close', () => fail(new SandboxError('SANDBOX_KATA_QMP', "Kata's monitor closed")));
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.closed) return resolve();
      this.socket.once('close', () => resolve());
      this.socket.destroy();
    });
  }
}

function checkSocketPath(path: string): void {
  if (Buffer.byteLength(path) > maxUnixSocketPathBytes) {
    throw new SandboxError(
      'SANDBOX_PATH_TOO_LONG',
      `unix socket path too long (${path}); use a shorter id or root`,
    );
  }
}

function waitExit(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) {
      resolve({ code: child.exitCode, signal: child.signalCode });
      return;
    }
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
}

async function terminate(child: ChildProcess, exited: Promise<unknown>, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

function persistJson(id: string, pid: number, pod: PodIdentity): string {
  // The subset of Kata's persist.json (virtcontainers/persist/api SandboxState) vmplug reads:
  // the pod identity lives in the CRI annotations of the sandbox container (whose ID is the
  // sandbox id, also SandboxState.SandboxContainer) under Config.ContainerConfigs; Kata does not
  // persist the sandbox-level annotations.
  return `${JSON.stringify(
    {
      PersistVersion: 1,
      State: 'running',
      SandboxContainer: id,
      HypervisorState: { Type: 'qemu', Pid: pid },
      Config: {
        HypervisorType: 'qemu',
        ContainerConfigs: [
          {
            ID: id,
            Annotations: {
              'io.kubernetes.cri.container-type': 'sandbox',
              'io.kubernetes.cri.sandbox-id': id,
              'io.kubernetes.cri.sandbox-name': pod.name,
              'io.kubernetes.cri.sandbox-namespace': pod.namespace,
              'io.kubernetes.cri.sandbox-uid': pod.uid,
            },
          },
        ],
      },
    },
    null,
    2,
  )}\n`;
}

export async function startKataSandbox(root: TestRoot, opts: StartSandboxOptions = {}): Promise<KataSandbox> {
  const state = stateOf(root);
  const id = opts.id ?? `t${randomBytes(4).toString('hex')}`;
  if (!idPattern.test(id) || id.includes('..'))
    throw new SandboxError('SANDBOX_BAD_ID', `invalid sandbox id ${id}`);
  if (state.running.has(id)) throw new SandboxError('SANDBOX_EXISTS', `sandbox ${id} already runs`);
  const accelEnv = process.env.VMPLUG_TEST_ACCEL;
  const accel = opts.accel ?? (accelEnv === 'kvm' ? 'kvm' : 'tcg');
  const memoryMiB = opts.memoryMiB ?? 256;
  const maxMemoryMiB = opts.maxMemoryMiB ?? 1024;
  const vcpus = opts.vcpus ?? 1;
  const maxVcpus = opts.maxVcpus ?? 2;

  const dir = join(root.kataVmRoot, id);
  const kataQmpPath = join(dir, 'qmp.sock');
  const eventsPath = join(dir, 'guest-events.sock');
  const commandPath = join(dir, 'guest-cmd.sock');
  const consoleLog = join(dir, 'console.log');
  const inspectPath = join(dir, 'inspect.sock');
  const vmplugDir = join(root.monitorDir, id);
  const vmplugQmpPath = join(vmplugDir, 'qmp.sock');
  const sbsDir = join(root.kataSbsRoot, id);
  for (const p of [kataQmpPath, eventsPath, commandPath, vmplugQmpPath]) checkSocketPath(p);

  const image = await ensureGuestImage(opts.signal);
  await mkdir(dir, { recursive: true, mode: 0o750 });

  const args = [
    '-name',
    `sandbox-${id}`,
    '-machine',
    // One -machine only: bin/vmplug-qemu (like QEMU) takes the last one.
    `q35,accel=${accel}${opts.sharedMemory ? ',memory-backend=mem' : ''}`,
    '-cpu',
    'max',
    '-qmp',
    `unix:${kataQmpPath},server=on,wait=off`,
    '-m',
    `${memoryMiB}M,slots=4,maxmem=${maxMemoryMiB}M`,
    '-smp',
    `${vcpus},maxcpus=${maxVcpus}`,
    '-device',
    'pci-bridge,bus=pcie.0,id=pci-bridge-0,chassis_nr=1,shpc=on,addr=2',
    '-device',
    'virtio-scsi-pci,id=scsi0',
    '-nic',
    'none',
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    '-kernel',
    image.kernel,
    '-initrd',
    opts.initrd ?? image.initrd,
    '-append',
    // The busybox guest has no udev: hot-added memory must come up online by itself (a Kata
    // guest's agent onlines it). Movable, so the guest can give a DIMM back on unplug.
    'console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init memhp_default_state=online_movable',
    '-chardev',
    `file,id=vmplug-console,path=${consoleLog}`,
    '-serial',
    'chardev:vmplug-console',
    // wait=on: QEMU starts the guest only once the host is connected, so no event is lost.
    '-chardev',
    `socket,id=vmplug-events,path=${eventsPath},server=on,wait=on`,
    '-serial',
    'chardev:vmplug-events',
    '-chardev',
    `socket,id=vmplug-cmd,path=${commandPath},server=on,wait=on`,
    '-serial',
    'chardev:vmplug-cmd',
  ];
  if (opts.sharedMemory) {
    args.push('-object', `memory-backend-memfd,id=mem,size=${memoryMiB}M,share=on`);
  }
  if (opts.inspectMonitor) {
    checkSocketPath(inspectPath);
    args.push('-qmp', `unix:${inspectPath},server=on,wait=off`);
  }

  const started = performance.now();
  const child = spawn('setpriv', ['--pdeathsig', 'SIGKILL', '--', qemuWrapperPath, ...args], {
    env: { ...process.env, VMPLUG_MONITOR_DIR: root.monitorDir },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => {
    stderr = (stderr + c.toString('utf8')).slice(-8192);
  });
  const spawned = await new Promise<Error | null>((resolve) => {
    child.once('spawn', () => resolve(null));
    child.once('error', (e) => resolve(e));
  });
  if (spawned || child.pid === undefined) {
    throw new SandboxError('SANDBOX_SPAWN', `cannot start QEMU: ${spawned?.message ?? 'no pid'}`, {
      cause: spawned,
    });
  }
  const pid = child.pid;
  const exited = waitExit(child);

  let guest: GuestAgent | undefined;
  let holder: KataMonitorHolder | undefined;
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      await Promise.allSettled([guest?.close(), holder?.close()]);
      await terminate(child, exited, 3_000);
      state.running.delete(id);
      await Promise.all([dir, vmplugDir, sbsDir].map((p) => rm(p, { recursive: true, force: true })));
    })();
    return stopping;
  };
  state.running.set(id, { pid, stop });

  // Everything below fails fast if QEMU dies or the caller aborts.
  const died = new AbortController();
  void exited.then(() =>
    died.abort(
      new SandboxError('SANDBOX_QEMU_EXITED', `QEMU exited during start: ${stderr.trim().slice(-2000)}`),
    ),
  );
  const signal = opts.signal ? AbortSignal.any([opts.signal, died.signal]) : died.signal;
  const bootTimeoutMs = opts.bootTimeoutMs ?? 90_000;
  const deadline = started + bootTimeoutMs;
  try {
    guest = await GuestAgent.connect(eventsPath, commandPath, { timeoutMs: bootTimeoutMs, signal });
    holder = await KataMonitorHolder.connect(kataQmpPath, deadline, signal);
    const g = guest;
    await Promise.race([
      // The events port is wait=on: READY cannot be missed, so no snapshot probing.
      g.waitReady({
        timeoutMs: Math.max(1, deadline - performance.now()),
        probeAfterMs: Number.POSITIVE_INFINITY,
      }),
      new Promise<never>((_, reject) => {
        if (signal.aborted) reject(signal.reason);
        signal.addEventListener('abort', () => reject(signal.reason), { once: true });
      }),
    ]);
    if (opts.pod) {
      await mkdir(sbsDir, { recursive: true, mode: 0o750 });
      await writeFile(join(sbsDir, 'persist.json'), persistJson(id, pid, opts.pod), { mode: 0o640 });
    }
  } catch (err) {
    const qemuDied = died.signal.aborted;
    await stop();
    const code = qemuDied
      ? 'SANDBOX_QEMU_EXITED'
      : err instanceof SandboxError
        ? err.code
        : 'SANDBOX_START_FAILED';
    throw new SandboxError(
      code,
      `sandbox ${id} did not start: ${(err as Error).message}; QEMU stderr: ${stderr.trim().slice(-2000)}`,
      { cause: err },
    );
  }
  const bootMs = (guest.readySince ?? performance.now()) - started;
  return {
    id,
    pid,
    dir,
    kataQmpPath,
    vmplugQmpPath,
    ...(opts.inspectMonitor ? { inspectQmpPath: inspectPath } : {}),
    consoleLog,
    guestEventsPath: eventsPath,
    guestCommandPath: commandPath,
    guest,
    args,
    bootMs,
    exited,
    stop,
  };
}
