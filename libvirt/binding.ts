/**
 * Typed face of vmplug's libvirt addon (native/): one connection per LibvirtConnection, every
 * call async (the addon runs libvirt on the thread pool) and bounded by a timeout and an
 * AbortSignal. A native libvirt call cannot be cancelled: on timeout or abort the promise rejects
 * at once while the call finishes on its own, so a caller that gave up on a mutating call (attach,
 * detach, setVcpus) must read the domain back to learn what happened.
 *
 * Domains and secrets are addressed by UUID; the addon looks them up inside each call, so no
 * native handle outlives a call. Events (lifecycle, device removed, connection closed) arrive
 * without polling, from libvirt's event loop running on its own thread.
 */
import { createRequire } from 'node:module';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { ListenerSet } from '../core/listeners.js';
import { fromNative, LibvirtError } from './errors.js';

declare const brand: unique symbol;
/** A UUID in libvirt's canonical string form (lower-case, dashed). */
export type LibvirtUuid = string & { readonly [brand]: 'LibvirtUuid' };

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function parseLibvirtUuid(s: string): LibvirtUuid {
  const lower = s.trim().toLowerCase();
  if (!uuidPattern.test(lower)) {
    throw new LibvirtError('LIBVIRT_INVALID_ARG', 'not a UUID', { operation: 'parseLibvirtUuid' });
  }
  return lower as LibvirtUuid;
}

export const domainStates = [
  'nostate',
  'running',
  'blocked',
  'paused',
  'shutdown',
  'shutoff',
  'crashed',
  'pmsuspended',
] as const;
export type DomainState = (typeof domainStates)[number] | 'unknown';

export const lifecycleEvents = [
  'defined',
  'undefined',
  'started',
  'suspended',
  'resumed',
  'stopped',
  'shutdown',
  'pmsuspended',
  'crashed',
] as const;
export type LifecycleEvent = (typeof lifecycleEvents)[number] | 'unknown';

export const closeReasons = ['error', 'eof', 'keepalive', 'client'] as const;
export type CloseReason = (typeof closeReasons)[number] | 'unknown';

/** virDomainModificationImpact: which definition a device or resize call changes. */
export const DomainModify = { CURRENT: 0, LIVE: 1, CONFIG: 2 } as const;
/** virDomainVcpuFlags: DomainModify plus these. */
export const VcpuFlags = { ...DomainModify, MAXIMUM: 4, GUEST: 8, HOTPLUGGABLE: 16 } as const;
/** virDomainMemoryModFlags: DomainModify plus MAXIMUM. */
export const MemoryFlags = { ...DomainModify, MAXIMUM: 4 } as const;
/** virDomainXMLFlags. */
export const DomainXmlFlags = { SECURE: 1, INACTIVE: 2, UPDATE_CPU: 4, MIGRATABLE: 8 } as const;

export const secretUsageTypes = ['none', 'volume', 'ceph', 'iscsi', 'tls', 'vtpm'] as const;
export type SecretUsageType = (typeof secretUsageTypes)[number];

export interface DomainRef {
  name: string;
  uuid: LibvirtUuid;
  /** The running domain's id; null when it is not running. */
  id: number | null;
}

export interface DomainSummary extends DomainRef {
  state: DomainState;
  /** libvirt's state reason (virDomain<State>Reason), for logs. */
  reason: number;
}

export interface DomainInfo {
  state: DomainState;
  vcpus: number;
  memoryKiB: number;
  maxMemoryKiB: number;
  cpuTimeNs: number;
}

/** virDomainBlockInfo of one disk, in bytes. */
export interface BlockInfo {
  /** The size the guest sees. */
  capacity: number;
  allocation: number;
  physical: number;
}

export interface SecretRef {
  uuid: LibvirtUuid;
  usageType: SecretUsageType | 'unknown';
  usageId: string;
}

interface EventBase {
  /** performance.now() when the event reached JS. */
  receivedAt: number;
}
export type LibvirtEvent =
  | (EventBase & { kind: 'lifecycle'; domain: DomainRef; event: LifecycleEvent; detail: number })
  | (EventBase & { kind: 'deviceRemoved'; domain: DomainRef; alias: string })
  | (EventBase & { kind: 'deviceRemovalFailed'; domain: DomainRef; alias: string })
  | (EventBase & { kind: 'closed'; reason: CloseReason });

export type LibvirtEventListener = (event: LibvirtEvent) => void;

export interface CallOptions {
  /** Default: the connection's callTimeoutMs. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface ConnectOptions extends CallOptions {
  readOnly?: boolean;
  /** Keepalive probe interval; 0 turns keepalive off. Default 5 s. */
  keepAliveIntervalS?: number;
  /** Unanswered probes before the connection counts as dead. Default 3. */
  keepAliveCount?: number;
  /** Default timeout of each call on this connection; default 30 s (libvirt's own job wait). */
  callTimeoutMs?: number;
  /** Told of an event listener's throw (never re-thrown); default: a process warning. */
  onListenerError?: (err: unknown) => void;
}

// ---- the addon's raw surface (native/src/conn.h) ----

interface RawDomain {
  name: string;
  uuid: string;
  id: number;
  state: number;
  reason: number;
}
interface RawSecret {
  uuid: string;
  usageType: number;
  usageId: string;
}
type RawEvent =
  | { kind: 'lifecycle'; name: string; uuid: string; id: number; event: number; detail: number }
  | { kind: 'deviceRemoved' | 'deviceRemovalFailed'; name: string; uuid: string; id: number; alias: string }
  | { kind: 'closed'; reason: number };

interface NativeConnection {
  close(): Promise<void>;
  isAlive(): Promise<boolean>;
  listDomains(): Promise<RawDomain[]>;
  lookupByName(name: string): Promise<RawDomain>;
  lookupByUUID(uuid: string): Promise<RawDomain>;
  getXMLDesc(uuid: string, flags: number): Promise<string>;
  getState(uuid: string): Promise<{ state: number; reason: number }>;
  getInfo(uuid: string): Promise<{
    state: number;
    vcpus: number;
    memoryKiB: number;
    maxMemoryKiB: number;
    cpuTimeNs: number;
  }>;
  attachDeviceFlags(uuid: string, xml: string, flags: number): Promise<void>;
  detachDeviceFlags(uuid: string, xml: string, flags: number): Promise<void>;
  detachDeviceAlias(uuid: string, alias: string, flags: number): Promise<void>;
  setVcpusFlags(uuid: string, vcpus: number, flags: number): Promise<void>;
  setMemoryFlags(uuid: string, kib: number, flags: number): Promise<void>;
  blockResize(uuid: string, disk: string, sizeBytes: number, flags: number): Promise<void>;
  getBlockInfo(uuid: string, disk: string): Promise<BlockInfo>;
  suspend(uuid: string): Promise<void>;
  resume(uuid: string): Promise<void>;
  destroy(uuid: string): Promise<void>;
  secretDefineXML(xml: string): Promise<RawSecret>;
  secretSetValue(uuid: string, value: Buffer): Promise<void>;
  secretUndefine(uuid: string): Promise<void>;
  secretLookupByUUID(uuid: string): Promise<RawSecret>;
  secretLookupByUsage(usageType: number, usageId: string): Promise<RawSecret>;
  listSecrets(): Promise<RawSecret[]>;
}

export interface NativeAddon {
  libvirtVersion: number;
  connect(
    uri: string,
    options: { readOnly: boolean; keepAliveIntervalS: number; keepAliveCount: number },
    onEvent: (event: RawEvent) => void,
  ): Promise<NativeConnection>;
}

/** Where the addon is looked for: next to this file (sources run by tsx) or from dist/. */
function addonCandidates(): string[] {
  const fromEnv = process.env.VMPLUG_LIBVIRT_ADDON;
  const rel = 'native/build/Release/vmplug_libvirt.node';
  return [
    ...(fromEnv ? [fromEnv] : []),
    fileURLToPath(new URL(`./${rel}`, import.meta.url)),
    fileURLToPath(new URL(`../../libvirt/${rel}`, import.meta.url)),
  ];
}

/** Loads the addon; LIBVIRT_ADDON_MISSING names the build step when it is not there. */
export function loadAddon(): NativeAddon {
  const require = createRequire(import.meta.url);
  const tried: string[] = [];
  for (const path of addonCandidates()) {
    try {
      return require(path) as NativeAddon;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') {
        throw new LibvirtError('LIBVIRT_ADDON_MISSING', `cannot load the libvirt addon ${path}`, {
          operation: 'load',
          cause: err,
        });
      }
      tried.push(path);
    }
  }
  throw new LibvirtError(
    'LIBVIRT_ADDON_MISSING',
    `the libvirt addon is not built (looked in ${tried.join(', ')}): run \`npm run build:libvirt\``,
    { operation: 'load' },
  );
}

/**
 * Settles with `call`'s outcome, or rejects with LIBVIRT_TIMEOUT / LIBVIRT_ABORTED first. The
 * native call is not cancelled (libvirt has no way to); its late result is dropped.
 */
export function bounded<T>(
  operation: string,
  call: () => Promise<T>,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (signal?.aborted) {
      reject(
        new LibvirtError('LIBVIRT_ABORTED', `${operation}: aborted`, { operation, cause: signal.reason }),
      );
      return;
    }
    let settled = false;
    const finish = (): void => {
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
    const onAbort = (): void => {
      if (settled) return;
      finish();
      reject(
        new LibvirtError('LIBVIRT_ABORTED', `${operation}: aborted`, { operation, cause: signal?.reason }),
      );
    };
    const timer = setTimeout(() => {
      if (settled) return;
      finish();
      reject(
        new LibvirtError('LIBVIRT_TIMEOUT', `${operation}: no answer within ${timeoutMs} ms`, { operation }),
      );
    }, timeoutMs);
    signal?.addEventListener('abort', onAbort, { once: true });
    let p: Promise<T>;
    try {
      p = call();
    } catch (err) {
      finish();
      reject(fromNative(err, operation));
      return;
    }
    p.then(
      (v) => {
        if (settled) return;
        finish();
        resolve(v);
      },
      (err: unknown) => {
        if (settled) return;
        finish();
        reject(fromNative(err, operation));
      },
    );
  });
}

function named<T extends string>(names: readonly T[], n: number): T | 'unknown' {
  return names[n] ?? 'unknown';
}

function toRef(r: { name: string; uuid: string; id: number }): DomainRef {
  return { name: r.name, uuid: r.uuid as LibvirtUuid, id: r.id >= 0 ? r.id : null };
}

function toSummary(r: RawDomain): DomainSummary {
  return { ...toRef(r), state: named(domainStates, r.state), reason: r.reason };
}

function toSecret(r: RawSecret): SecretRef {
  return { uuid: r.uuid as LibvirtUuid, usageType: named(secretUsageTypes, r.usageType), usageId: r.usageId };
}

export function toEvent(raw: RawEvent, receivedAt: number): LibvirtEvent {
  switch (raw.kind) {
    case 'lifecycle':
      return {
        kind: 'lifecycle',
        domain: toRef(raw),
        event: named(lifecycleEvents, raw.event),
        detail: raw.detail,
        receivedAt,
      };
    case 'deviceRemoved':
    case 'deviceRemovalFailed':
      return { kind: raw.kind, domain: toRef(raw), alias: raw.alias, receivedAt };
    case 'closed':
      return { kind: 'closed', reason: named(closeReasons, raw.reason), receivedAt };
  }
}

export class LibvirtConnection {
  readonly #native: NativeConnection;
  readonly #listeners: ListenerSet<[LibvirtEvent]>;
  readonly #callTimeoutMs: number;
  #closing: Promise<void> | undefined;
  #lostReason: CloseReason | undefined;

  private constructor(
    native: NativeConnection,
    callTimeoutMs: number,
    listeners: ListenerSet<[LibvirtEvent]>,
  ) {
    this.#native = native;
    this.#callTimeoutMs = callTimeoutMs;
    this.#listeners = listeners;
  }

  /**
   * Opens `uri` (e.g. `qemu:///system`) with keepalive, and subscribes to lifecycle,
   * device-removed and close events before it resolves.
   */
  static async connect(
    uri: string,
    opts: ConnectOptions = {},
    addon: NativeAddon = loadAddon(),
  ): Promise<LibvirtConnection> {
    const listeners = new ListenerSet<[LibvirtEvent]>(opts.onListenerError);
    let conn: LibvirtConnection | undefined;
    const onEvent = (raw: RawEvent): void => {
      const event = toEvent(raw, performance.now());
      if (event.kind === 'closed' && conn) conn.#lostReason = event.reason;
      listeners.emit(event);
    };
    const callTimeoutMs = opts.callTimeoutMs ?? 30_000;
    const native = await bounded(
      'connect',
      () =>
        addon.connect(
          uri,
          {
            readOnly: opts.readOnly ?? false,
            keepAliveIntervalS: opts.keepAliveIntervalS ?? 5,
            keepAliveCount: opts.keepAliveCount ?? 3,
          },
          onEvent,
        ),
      opts.timeoutMs ?? callTimeoutMs,
      opts.signal,
    );
    conn = new LibvirtConnection(native, callTimeoutMs, listeners);
    return conn;
  }

  /** Set once libvirt reported the connection closed (libvirtd died, keepalive timed out). */
  get lostReason(): CloseReason | undefined {
    return this.#lostReason;
  }

  /** Adds a listener for every event; returns the function that removes it. */
  onEvent(listener: LibvirtEventListener): () => void {
    return this.#listeners.add(listener);
  }

  /**
   * Resolves with the first event `match` accepts. Subscribe (call this) before the call that
   * causes the event: an event can arrive before that call returns.
   */
  waitForEvent<E extends LibvirtEvent>(match: (e: LibvirtEvent) => e is E, opts?: CallOptions): Promise<E>;
  waitForEvent(match: (e: LibvirtEvent) => boolean, opts?: CallOptions): Promise<LibvirtEvent>;
  waitForEvent(match: (e: LibvirtEvent) => boolean, opts: CallOptions = {}): Promise<LibvirtEvent> {
    let off = (): void => {};
    const seen = new Promise<LibvirtEvent>((resolve) => {
      off = this.onEvent((e) => {
        if (match(e)) resolve(e);
      });
    });
    return bounded('waitForEvent', () => seen, opts.timeoutMs ?? this.#callTimeoutMs, opts.signal).finally(
      () => off(),
    );
  }

  #call<T>(operation: string, call: () => Promise<T>, opts: CallOptions = {}): Promise<T> {
    return bounded(operation, call, opts.timeoutMs ?? this.#callTimeoutMs, opts.signal);
  }

  /** Closes the connection (idempotent); later calls fail with LIBVIRT_CLOSED. */
  close(opts: CallOptions = {}): Promise<void> {
    this.#closing ??= this.#call('close', () => this.#native.close(), opts);
    return this.#closing;
  }

  /** False once libvirt considers the connection dead (keepalive) or after close. */
  isAlive(opts?: CallOptions): Promise<boolean> {
    return this.#call('isAlive', () => this.#native.isAlive(), opts);
  }

  async listDomains(opts?: CallOptions): Promise<DomainSummary[]> {
    return (await this.#call('listDomains', () => this.#native.listDomains(), opts)).map(toSummary);
  }

  async lookupByName(name: string, opts?: CallOptions): Promise<DomainSummary> {
    return toSummary(await this.#call('lookupByName', () => this.#native.lookupByName(name), opts));
  }

  async lookupByUUID(uuid: LibvirtUuid, opts?: CallOptions): Promise<DomainSummary> {
    return toSummary(await this.#call('lookupByUUID', () => this.#native.lookupByUUID(uuid), opts));
  }

  getXMLDesc(uuid: LibvirtUuid, flags = 0, opts?: CallOptions): Promise<string> {
    return this.#call('getXMLDesc', () => this.#native.getXMLDesc(uuid, flags), opts);
  }

  async getState(uuid: LibvirtUuid, opts?: CallOptions): Promise<{ state: DomainState; reason: number }> {
    const r = await this.#call('getState', () => this.#native.getState(uuid), opts);
    return { state: named(domainStates, r.state), reason: r.reason };
  }

  async getInfo(uuid: LibvirtUuid, opts?: CallOptions): Promise<DomainInfo> {
    const r = await this.#call('getInfo', () => this.#native.getInfo(uuid), opts);
    return { ...r, state: named(domainStates, r.state) };
  }

  /** Device XML (disk, memory, ...) into the domain; flags from DomainModify. */
  attachDeviceFlags(uuid: LibvirtUuid, xml: string, flags: number, opts?: CallOptions): Promise<void> {
    return this.#call('attachDeviceFlags', () => this.#native.attachDeviceFlags(uuid, xml, flags), opts);
  }

  /**
   * Asks for the device's removal. With LIVE it returns once libvirt sent the unplug request
   * (or after its ~5 s wait): the guest may still hold the device; the deviceRemoved event says
   * when it is gone.
   */
  detachDeviceFlags(uuid: LibvirtUuid, xml: string, flags: number, opts?: CallOptions): Promise<void> {
    return this.#call('detachDeviceFlags', () => this.#native.detachDeviceFlags(uuid, xml, flags), opts);
  }

  /** Like detachDeviceFlags, by the device's alias (`ua-...` user aliases survive restarts). */
  detachDeviceAlias(uuid: LibvirtUuid, alias: string, flags: number, opts?: CallOptions): Promise<void> {
    return this.#call('detachDeviceAlias', () => this.#native.detachDeviceAlias(uuid, alias, flags), opts);
  }

  /** vCPU count; flags from VcpuFlags (LIVE hot-plugs vCPUs, within the domain's maximum). */
  setVcpusFlags(uuid: LibvirtUuid, vcpus: number, flags: number, opts?: CallOptions): Promise<void> {
    return this.#call('setVcpusFlags', () => this.#native.setVcpusFlags(uuid, vcpus, flags), opts);
  }

  /** Balloon target (LIVE) or configured memory, in KiB; flags from MemoryFlags. */
  setMemoryFlags(uuid: LibvirtUuid, memoryKiB: number, flags: number, opts?: CallOptions): Promise<void> {
    return this.#call('setMemoryFlags', () => this.#native.setMemoryFlags(uuid, memoryKiB, flags), opts);
  }

  /**
   * Online resize of a domain's disk to `sizeBytes` (virDomainBlockResize with
   * VIR_DOMAIN_BLOCK_RESIZE_BYTES). `disk` is its target name (sda, vdb) or source path.
   */
  blockResize(uuid: LibvirtUuid, disk: string, sizeBytes: number, opts?: CallOptions): Promise<void> {
    return this.#call('blockResize', () => this.#native.blockResize(uuid, disk, sizeBytes, 0), opts);
  }

  /** Capacity, allocation and physical size of a domain's disk (target name or source path). */
  getBlockInfo(uuid: LibvirtUuid, disk: string, opts?: CallOptions): Promise<BlockInfo> {
    return this.#call('getBlockInfo', () => this.#native.getBlockInfo(uuid, disk), opts);
  }

  suspend(uuid: LibvirtUuid, opts?: CallOptions): Promise<void> {
    return this.#call('suspend', () => this.#native.suspend(uuid), opts);
  }

  resume(uuid: LibvirtUuid, opts?: CallOptions): Promise<void> {
    return this.#call('resume', () => this.#native.resume(uuid), opts);
  }

  /** Hard stop (virDomainDestroy). */
  destroy(uuid: LibvirtUuid, opts?: CallOptions): Promise<void> {
    return this.#call('destroy', () => this.#native.destroy(uuid), opts);
  }

  async secretDefineXML(xml: string, opts?: CallOptions): Promise<SecretRef> {
    return toSecret(await this.#call('secretDefineXML', () => this.#native.secretDefineXML(xml), opts));
  }

  /**
   * Sets a secret's value (raw bytes: for a ceph secret the decoded cephx key). The addon copies
   * the bytes and wipes its copy after the call; with `wipe` the caller's buffer is zeroed too,
   * right after the copy.
   */
  secretSetValue(
    uuid: LibvirtUuid,
    value: Buffer,
    opts: CallOptions & { wipe?: boolean } = {},
  ): Promise<void> {
    return this.#call(
      'secretSetValue',
      () => {
        try {
          return this.#native.secretSetValue(uuid, value);
        } finally {
          if (opts.wipe) value.fill(0);
        }
      },
      opts,
    );
  }

  secretUndefine(uuid: LibvirtUuid, opts?: CallOptions): Promise<void> {
    return this.#call('secretUndefine', () => this.#native.secretUndefine(uuid), opts);
  }

  async secretLookupByUUID(uuid: LibvirtUuid, opts?: CallOptions): Promise<SecretRef> {
    return toSecret(
      await this.#call('secretLookupByUUID', () => this.#native.secretLookupByUUID(uuid), opts),
    );
  }

  async secretLookupByUsage(
    usageType: SecretUsageType,
    usageId: string,
    opts?: CallOptions,
  ): Promise<SecretRef> {
    const type = secretUsageTypes.indexOf(usageType);
    return toSecret(
      await this.#call('secretLookupByUsage', () => this.#native.secretLookupByUsage(type, usageId), opts),
    );
  }

  async listSecrets(opts?: CallOptions): Promise<SecretRef[]> {
    return (await this.#call('listSecrets', () => this.#native.listSecrets(), opts)).map(toSecret);
  }
}
