import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { access } from 'node:fs/promises';
import si from 'systeminformation';
import { ListenerSet } from '../../core/listeners.js';
import type { NodeFacts as StatusNodeFacts } from './kube/status.js';

// What the node is (GET /v1/node, the VmplugNode status), from systeminformation. Several of its
// calls run programs (lsblk, ip, hostname: some through a shell, some synchronously), so nothing
// here calls it per request: static facts (CPU, OS, NICs) are gathered once, dynamic ones
// (memory, block devices, /dev/kvm) are cached for a TTL and refreshed by a background timer, one
// refresh at a time, each call bounded by a timeout. A call that fails or times out leaves the
// previous value in place and is tried again at the next refresh.

/** The subset of systeminformation used, in its own shapes; tests inject fakes of it. */
export interface SystemInfo {
  cpu(): Promise<{ manufacturer: string; brand: string; cores: number; physicalCores: number }>;
  cpuFlags(): Promise<string>;
  osInfo(): Promise<{ distro: string; release: string; kernel: string; arch: string; hostname: string }>;
  networkInterfaces(): Promise<
    {
      iface: string;
      mac: string;
      operstate: string;
      speed: number | null;
      mtu: number | null;
      internal: boolean;
      virtual: boolean;
    }[]
  >;
  mem(): Promise<{ total: number; free: number; available: number }>;
  blockDevices(): Promise<
    { name: string; type: string; size: number; model: string; serial: string; removable: boolean }[]
  >;
  /** Whether /dev/kvm exists and this process may open it read-write. */
  kvmDevice(): Promise<KvmDevice>;
  /** QEMU's and libvirt's versions where this process can tell them (both optional). */
  virtVersions?(): Promise<VirtVersions>;
}

export interface VirtVersions {
  qemu?: string;
  libvirt?: string;
}

export type KvmDevice = 'accessible' | 'present' | 'missing';

export interface NodeCpu {
  model: string;
  /** Logical CPUs. */
  threads: number;
  cores: number;
}

export interface NodeBlockDevice {
  name: string;
  type: string;
  sizeBytes: number;
  model?: string;
  serial?: string;
  removable: boolean;
}

export interface NodeNic {
  name: string;
  mac?: string;
  up: boolean;
  speedMbps?: number;
  mtu?: number;
  virtual: boolean;
}

/** GET /v1/node. A part not gathered yet (or whose last attempt failed) is absent. */
export interface NodeFacts {
  hostname?: string;
  os?: { distro: string; release: string; kernel: string; arch: string };
  cpu?: NodeCpu;
  virtualization?: {
    /** The CPU flag that offers hardware virtualization, null when the CPU shows neither. */
    cpuFlag: 'vmx' | 'svm' | null;
    kvmDevice: KvmDevice;
    /** QEMU's version: its binary's --version, else the greeting of a sandbox's monitor. */
    qemuVersion?: string;
    /** The libvirt library vmplugd's addon is linked with. */
    libvirtVersion?: string;
  };
  memory?: { totalBytes: number; freeBytes: number; availableBytes: number };
  blockDevices?: NodeBlockDevice[];
  nics?: NodeNic[];
  /** When the dynamic facts were last refreshed (RFC 3339). */
  refreshedAt?: string;
}

export interface NodeFactsOptions {
  system?: SystemInfo;
  /** Dynamic facts older than this are refreshed (default 30 s); also the background period. */
  ttlMs?: number;
  /** Bound on each systeminformation call (default 5 s). */
  callTimeoutMs?: number;
  /** Told of each call that failed or timed out (the daemon logs it at debug). */
  onError?: (part: string, err: Error) => void;
  now?: () => number;
}

export class NodeFactsTimeoutError extends Error {
  readonly code = 'NODE_FACTS_TIMEOUT';
  constructor(part: string, ms: number) {
    super(`${part}: no answer within ${ms} ms`);
    this.name = 'NodeFactsTimeoutError';
  }
}

/**
 * `libvirt`: whether this vmplugd uses libvirt (a URI is configured). Without it the libvirt
 * library is not loaded just to tell its version: mapped in, it costs vmplugd about 15 MiB of
 * resident memory (bench:attach, 2026-12-06).
 */
export function realSystemInfo(opts: { libvirt: boolean } = { libvirt: true }): SystemInfo {
  return {
    cpu: () => si.cpu(),
    cpuFlags: () => si.cpuFlags(),
    osInfo: () => si.osInfo(),
    networkInterfaces: async () => {
      const r = await si.networkInterfaces();
      return Array.isArray(r) ? r : [r];
    },
    mem: () => si.mem(),
    blockDevices: () => si.blockDevices(),
    kvmDevice: () => kvmDevice('/dev/kvm'),
    virtVersions: () => virtVersions(process.env.VMPLUG_QEMU ?? '/usr/bin/qemu-system-x86_64', opts),
  };
}

/**
 * QEMU's version from its binary (absent in vmplugd's container image: there it comes from a
 * sandbox's QMP greeting, see NodeFactsCache.observeQemuVersion) and the version of the libvirt
 * library the addon links (when the addon is built). Neither is required: a node may run neither.
 */
export async function virtVersions(
  qemuPath: string,
  opts: { libvirt: boolean } = { libvirt: true },
): Promise<VirtVersions> {
  const out: VirtVersions = {};
  const qemu = await new Promise<string | undefined>((resolve) => {
    execFile(qemuPath, ['--version'], { timeout: 5_000, maxBuffer: 64 * 1024 }, (err, stdout) =>
      resolve(err ? undefined : /version (\d+\.\d+\.\d+)/.exec(stdout)?.[1]),
    );
  });
  if (qemu !== undefined) out.qemu = qemu;
  if (!opts.libvirt) return out;
  try {
    const { loadAddon } = await import('../../libvirt/binding.js');
    out.libvirt = libvirtVersionString(loadAddon().libvirtVersion);
  } catch {
    // No addon built: vmplugd runs without libvirt support, and there is no version to tell.
  }
  return out;
}

/** libvirt's encoding: major * 1,000,000 + minor * 1,000 + release. */
export function libvirtVersionString(n: number): string {
  return `${Math.floor(n / 1_000_000)}.${Math.floor(n / 1_000) % 1_000}.${n % 1_000}`;
}
export async function kvmDevice(path: string): Promise<KvmDevice> {
  try {
    await access(path, constants.R_OK | constants.W_OK);
    return 'accessible';
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : 'present';
  }
}

export class NodeFactsCache {
  readonly #sys: SystemInfo;
  readonly #ttlMs: number;
  readonly #timeoutMs: number;
  readonly #now: () => number;
  readonly #onError: (part: string, err: Error) => void;
  readonly #listeners = new ListenerSet<[]>();
  #facts: NodeFacts = {};
  /** QEMU's version from a monitor's greeting, kept until the virtualization facts exist. */
  #greetedQemu: string | undefined;
  #staticDone = false;
  #staticRun: Promise<void> | undefined;
  #dynamicAt: number | undefined;
  #dynamicRun: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  /** Calls made to systeminformation, by part (tests check the caching with it). */
  readonly calls = new Map<string, number>();

  constructor(opts: NodeFactsOptions = {}) {
    this.#sys = opts.system ?? realSystemInfo();
    this.#ttlMs = opts.ttlMs ?? 30_000;
    this.#timeoutMs = opts.callTimeoutMs ?? 5_000;
    this.#now = opts.now ?? (() => performance.now());
    this.#onError = opts.onError ?? (() => {});
  }

  /** Gathers everything once, then refreshes the dynamic facts every TTL in the background. */
  start(): Promise<void> {
    if (this.#timer === undefined && !this.#closed) {
      // refresh(): also retries static facts whose first attempt failed.
      this.#timer = setInterval(() => void this.refresh(), this.#ttlMs);
      this.#timer.unref();
    }
    return this.refresh();
  }

  close(): void {
    this.#closed = true;
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /**
   * Whether every fact the VmplugNode status carries has been gathered once. The reporter writes
   * no status before (a first apply without cpu or virtualization after a restart left nulls the
   * CRD refuses: 422).
   */
  complete(): boolean {
    return this.#staticDone && this.#dynamicAt !== undefined;
  }

  /** QEMU's version as a sandbox's monitor greeted us (where the binary is not ours to run). */
  observeQemuVersion(version: string): void {
    this.#greetedQemu ??= version;
    const v = this.#facts.virtualization;
    // Before the static facts (a monitor greets within ms of start): applied when they come.
    if (v === undefined || v.qemuVersion !== undefined) return;
    this.#set({ ...this.#facts, virtualization: { ...v, qemuVersion: version } });
  }

  /** The facts as cached now (no I/O). */
  current(): NodeFacts {
    return structuredClone(this.#facts);
  }

  /**
   * The facts, refreshing what is missing or stale first; waits at most `waitMs` (default the
   * call timeout) and then answers with what it has.
   */
  async get(opts: { signal?: AbortSignal; waitMs?: number } = {}): Promise<NodeFacts> {
    const stale = this.#dynamicAt === undefined || this.#now() - this.#dynamicAt >= this.#ttlMs;
    if (!this.#staticDone || stale) {
      const waitMs = opts.waitMs ?? this.#timeoutMs;
      await settleWithin(this.refresh(), waitMs, opts.signal);
    }
    return this.current();
  }

  /** Gathers the static facts still missing and refreshes the dynamic ones (one run of each at a time). */
  async refresh(): Promise<void> {
    await Promise.all([this.#gatherStatic(), this.#refreshDynamic()]);
  }

  /** Called after facts changed. */
  onChange(listener: () => void): () => void {
    return this.#listeners.add(listener);
  }

  #gatherStatic(): Promise<void> {
    if (this.#staticDone || this.#closed) return Promise.resolve();
    this.#staticRun ??= (async () => {
      const virt = this.#sys.virtVersions?.bind(this.#sys);
      const [cpu, flags, os, nics, versions] = await Promise.all([
        this.#call('cpu', () => this.#sys.cpu()),
        this.#call('cpuFlags', () => this.#sys.cpuFlags()),
        this.#call('osInfo', () => this.#sys.osInfo()),
        this.#call('networkInterfaces', () => this.#sys.networkInterfaces()),
        virt === undefined ? undefined : this.#call('virtVersions', virt),
      ]);
      const next: NodeFacts = { ...this.#facts };
      if (cpu !== undefined) {
        next.cpu = { model: cpu.brand, threads: cpu.cores, cores: cpu.physicalCores || cpu.cores };
        if (cpu.manufacturer !== '' && !cpu.brand.startsWith(cpu.manufacturer))
          next.cpu.model = `${cpu.manufacturer} ${cpu.brand}`;
      }
      const qemuVersion = versions?.qemu ?? this.#greetedQemu;
      if (flags !== undefined) {
        next.virtualization = {
          ...next.virtualization,
          cpuFlag: virtualizationFlag(flags),
          kvmDevice: next.virtualization?.kvmDevice ?? 'missing',
          ...(qemuVersion !== undefined ? { qemuVersion } : {}),
          ...(versions?.libvirt !== undefined ? { libvirtVersion: versions.libvirt } : {}),
        };
      }
      if (os !== undefined) {
        next.hostname = os.hostname;
        next.os = { distro: os.distro, release: os.release, kernel: os.kernel, arch: os.arch };
      }
      if (nics !== undefined) next.nics = nics.filter((n) => !n.internal).map(toNic);
      this.#staticDone = [cpu, flags, os, nics].every((x) => x !== undefined);
      this.#set(next);
    })().finally(() => {
      this.#staticRun = undefined;
    });
    return this.#staticRun;
  }

  #refreshDynamic(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#dynamicRun ??= (async () => {
      const [mem, disks, kvm] = await Promise.all([
        this.#call('mem', () => this.#sys.mem()),
        this.#call('blockDevices', () => this.#sys.blockDevices()),
        this.#call('kvmDevice', () => this.#sys.kvmDevice()),
      ]);
      const next: NodeFacts = { ...this.#facts };
      if (mem !== undefined)
        next.memory = { totalBytes: mem.total, freeBytes: mem.free, availableBytes: mem.available };
      if (disks !== undefined) next.blockDevices = disks.map(toBlockDevice);
      if (kvm !== undefined)
        next.virtualization = {
          ...next.virtualization,
          cpuFlag: next.virtualization?.cpuFlag ?? null,
          kvmDevice: kvm,
        };
      this.#dynamicAt = this.#now();
      next.refreshedAt = new Date().toISOString();
      this.#set(next);
    })().finally(() => {
      this.#dynamicRun = undefined;
    });
    return this.#dynamicRun;
  }

  async #call<T>(part: string, fn: () => Promise<T>): Promise<T | undefined> {
    this.calls.set(part, (this.calls.get(part) ?? 0) + 1);
    try {
      return await withTimeout(fn(), this.#timeoutMs, part);
    } catch (err) {
      this.#onError(part, err instanceof Error ? err : new Error(String(err)));
      return undefined;
    }
  }

  #set(next: NodeFacts): void {
    const { refreshedAt: _a, ...a } = this.#facts;
    const { refreshedAt: _b, ...b } = next;
    const changed = JSON.stringify(a) !== JSON.stringify(b);
    this.#facts = next;
    if (!changed) return;
    this.#listeners.emit();
  }
}

/** The status subset of the facts (deploy/crd-vmplugnode.yaml): stable values only, no free memory. */
export function statusNodeFacts(f: NodeFacts, vmplugVersion?: string): StatusNodeFacts {
  const out: StatusNodeFacts = {};
  if (f.hostname !== undefined) out.hostname = f.hostname;
  if (f.os !== undefined) {
    out.os = `${f.os.distro} ${f.os.release}`.trim();
    out.kernel = f.os.kernel;
    out.arch = f.os.arch;
  }
  if (vmplugVersion !== undefined) out.vmplugVersion = vmplugVersion;
  if (f.cpu !== undefined) out.cpu = { model: f.cpu.model, cores: f.cpu.cores, threads: f.cpu.threads };
  if (f.memory !== undefined) out.memoryBytes = f.memory.totalBytes;
  if (f.virtualization !== undefined) {
    const v = f.virtualization;
    out.virtualization = {
      kvm: v.kvmDevice === 'accessible',
      ...(v.qemuVersion !== undefined ? { qemuVersion: v.qemuVersion } : {}),
      ...(v.libvirtVersion !== undefined ? { libvirtVersion: v.libvirtVersion } : {}),
    };
  }
  if (f.blockDevices !== undefined) {
    out.blockDevices = f.blockDevices.map((d) => ({
      name: d.name,
      type: d.type,
      sizeBytes: d.sizeBytes,
      ...(d.model !== undefined ? { model: d.model } : {}),
    }));
  }
  if (f.nics !== undefined) {
    out.nics = f.nics.map((n) => ({
      name: n.name,
      up: n.up,
      ...(n.mac !== undefined ? { mac: n.mac } : {}),
      ...(n.speedMbps !== undefined ? { speedMbps: n.speedMbps } : {}),
    }));
  }
  return out;
}

export function virtualizationFlag(flags: string): 'vmx' | 'svm' | null {
  const set = new Set(flags.split(/\s+/));
  return set.has('vmx') ? 'vmx' : set.has('svm') ? 'svm' : null;
}

function toNic(n: Awaited<ReturnType<SystemInfo['networkInterfaces']>>[number]): NodeNic {
  const nic: NodeNic = { name: n.iface, up: n.operstate === 'up', virtual: n.virtual };
  if (n.mac !== '') nic.mac = n.mac;
  if (typeof n.speed === 'number' && n.speed > 0) nic.speedMbps = Math.round(n.speed);
  if (typeof n.mtu === 'number' && n.mtu > 0) nic.mtu = n.mtu;
  return nic;
}

function toBlockDevice(d: Awaited<ReturnType<SystemInfo['blockDevices']>>[number]): NodeBlockDevice {
  const b: NodeBlockDevice = {
    name: d.name,
    type: d.type,
    sizeBytes: Number.isFinite(d.size) ? d.size : 0,
    removable: d.removable,
  };
  if (d.model !== '') b.model = d.model;
  if (d.serial !== '') b.serial = d.serial;
  return b;
}

function withTimeout<T>(p: Promise<T>, ms: number, part: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new NodeFactsTimeoutError(part, ms)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** Waits for `p` at most `ms` (or until `signal` aborts); never rejects. */
async function settleWithin(p: Promise<unknown>, ms: number, signal?: AbortSignal): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const stop = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, ms);
    onAbort = resolve;
    signal?.addEventListener('abort', onAbort, { once: true });
  });
  try {
    await Promise.race([p.catch(() => {}), stop]);
  } finally {
    clearTimeout(timer);
    if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort);
  }
}
