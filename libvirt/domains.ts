/**
 * The libvirt domains of the node as vmplugd knows them: one connection to --libvirt-uri, opened
 * in the background (a node without libvirtd still starts; health() says libvirtd is away) and
 * reopened with backoff whenever libvirt reports it closed. Domain states follow libvirt's
 * lifecycle events, never a poll; after each (re)connect a full listDomains resyncs what events
 * may have been missed while the connection was down.
 */
import type { SandboxId } from '../core/ids.js';
import { isSandboxId } from '../core/ids.js';
import { ListenerSet } from '../core/listeners.js';
import type { SandboxCatalog, SandboxRecord, SandboxState } from '../core/sandbox.js';
import {
  LibvirtConnection as Connection,
  type ConnectOptions,
  type DomainState,
  type LibvirtConnection,
  type LibvirtEvent,
  type LibvirtUuid,
  type LifecycleEvent,
} from './binding.js';
import { LibvirtError } from './errors.js';

/** The pino subset used here. */
export interface DomainsLogger {
  debug(obj: Record<string, unknown>, msg?: string): void;
  info(obj: Record<string, unknown>, msg?: string): void;
  warn(obj: Record<string, unknown>, msg?: string): void;
}

export interface LibvirtDomain {
  /** The domain's name: vmplug's sandbox id for it. */
  name: SandboxId;
  uuid: LibvirtUuid;
  state: DomainState;
  /** When vmplugd first saw it (ISO 8601). */
  discoveredAt: string;
}

export type DomainChange =
  | { kind: 'updated'; domain: LibvirtDomain }
  | { kind: 'removed'; name: SandboxId; uuid: LibvirtUuid }
  | { kind: 'connection'; connected: boolean };

export type Connect = (uri: string, opts: ConnectOptions) => Promise<LibvirtConnection>;

export interface LibvirtDomainsOptions {
  uri: string;
  logger: DomainsLogger;
  /** Replaces LibvirtConnection.connect (unit tests). */
  connect?: Connect;
  /** Bound of each libvirt call; default 10 s. */
  callTimeoutMs?: number;
  /** First reconnect delay, doubled up to maxBackoffMs; default 500 ms. */
  initialBackoffMs?: number;
  /** Default 30 s. */
  maxBackoffMs?: number;
  keepAliveIntervalS?: number;
  keepAliveCount?: number;
}

/** libvirt's state in the REST API's coarser vocabulary. */
export function sandboxState(state: DomainState): SandboxState {
  switch (state) {
    case 'running':
    case 'blocked':
      return 'running';
    case 'paused':
    case 'pmsuspended':
      return 'paused';
    case 'shutdown':
      return 'shutdown';
    case 'shutoff':
      return 'shutoff';
    case 'crashed':
      return 'crashed';
    default:
      return 'unknown';
  }
}

/** The state a lifecycle event implies, before the lookup that confirms it. */
function stateAfter(event: LifecycleEvent): DomainState | undefined {
  switch (event) {
    case 'started':
    case 'resumed':
      return 'running';
    case 'suspended':
      return 'paused';
    case 'pmsuspended':
      return 'pmsuspended';
    case 'stopped':
      return 'shutoff';
    case 'shutdown':
      return 'shutdown';
    case 'crashed':
      return 'crashed';
    default:
      return undefined;
  }
}

export class LibvirtDomains {
  readonly uri: string;
  readonly #o: Required<Omit<LibvirtDomainsOptions, 'connect'>> & { connect: Connect };
  readonly #domains = new Map<SandboxId, LibvirtDomain>();
  readonly #listeners = new ListenerSet<[DomainChange]>((err) =>
    this.#o.logger.warn({ error: (err as Error).message }, 'libvirt: a domain listener threw'),
  );
  /** Per-domain refresh chains, so a slow lookup never overwrites a later one. */
  readonly #refreshing = new Map<string, Promise<void>>();
  #conn: LibvirtConnection | undefined;
  #offEvents: (() => void) | undefined;
  #lastError: string | undefined;
  #backoffMs: number;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  #connecting: Promise<void> | undefined;
  #connectedWaiters = new Set<() => void>();

  private constructor(opts: LibvirtDomainsOptions) {
    this.uri = opts.uri;
    this.#o = {
      callTimeoutMs: 10_000,
      initialBackoffMs: 500,
      maxBackoffMs: 30_000,
      keepAliveIntervalS: 5,
      keepAliveCount: 3,
      connect: (uri, o) => Connection.connect(uri, o),
      ...opts,
    };
    this.#backoffMs = this.#o.initialBackoffMs;
  }

  /** Starts connecting in the background and returns at once. */
  static start(opts: LibvirtDomainsOptions): LibvirtDomains {
    const d = new LibvirtDomains(opts);
    d.#connecting = d.#connectOnce();
    return d;
  }

  /** The live connection, or undefined while libvirtd is away. */
  get connection(): LibvirtConnection | undefined {
    return this.#conn;
  }

  /** Resolves true once connected (and resynced), false after `timeoutMs`. */
  async connected(timeoutMs: number): Promise<boolean> {
    if (this.#conn !== undefined) return true;
    return new Promise<boolean>((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#connectedWaiters.delete(done);
        resolve(this.#conn !== undefined);
      };
      const timer = setTimeout(done, timeoutMs);
      this.#connectedWaiters.add(done);
    });
  }

  list(): LibvirtDomain[] {
    return [...this.#domains.values()].map((d) => ({ ...d }));
  }

  get(name: SandboxId): LibvirtDomain | undefined {
    const d = this.#domains.get(name);
    return d === undefined ? undefined : { ...d };
  }

  /** Changes of domains and of the connection; returns the unsubscribe function. */
  onChange(listener: (c: DomainChange) => void): () => void {
    return this.#listeners.add(listener);
  }

  health(): { ok: boolean; detail: string } {
    if (this.#conn !== undefined) return { ok: true, detail: `connected to ${this.uri}` };
    return {
      ok: false,
      detail: `libvirtd at ${this.uri} not reachable${this.#lastError ? ` (${this.#lastError})` : ''}; retrying`,
    };
  }

  /** The domains in the REST API's shape; while libvirtd is away they show as unreachable. */
  catalog(): SandboxCatalog {
    const record = (d: LibvirtDomain): SandboxRecord => {
      const r: SandboxRecord = {
        id: d.name,
        kind: 'libvirt',
        state: this.#conn === undefined ? 'unreachable' : sandboxState(d.state),
        hypervisorStatus: d.state,
        discoveredAt: d.discoveredAt,
      };
      if (this.#conn === undefined) r.reason = `libvirtd at ${this.uri} not reachable`;
      return r;
    };
    return {
      list: () => [...this.#domains.values()].map(record),
      get: (id) => {
        const d = this.#domains.get(id);
        return d === undefined ? undefined : record(d);
      },
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    await this.#connecting?.catch(() => {});
    this.#offEvents?.();
    const conn = this.#conn;
    this.#conn = undefined;
    await conn?.close({ timeoutMs: 2_000 }).catch(() => {});
  }

  #emit(c: DomainChange): void {
    this.#listeners.emit(c);
  }

  async #connectOnce(): Promise<void> {
    if (this.#closed) return;
    let conn: LibvirtConnection;
    try {
      conn = await this.#o.connect(this.uri, {
        timeoutMs: this.#o.callTimeoutMs,
        callTimeoutMs: this.#o.callTimeoutMs,
        keepAliveIntervalS: this.#o.keepAliveIntervalS,
        keepAliveCount: this.#o.keepAliveCount,
        onListenerError: (err) =>
          this.#o.logger.warn({ error: (err as Error).message }, 'libvirt: an event listener threw'),
      });
    } catch (err) {
      this.#failed(err);
      return;
    }
    if (this.#closed) {
      await conn.close({ timeoutMs: 2_000 }).catch(() => {});
      return;
    }
    // Subscribed before the resync: an event during listDomains is applied after it (the refresh
    // chain orders them), never lost.
    const off = conn.onEvent((e) => this.#onEvent(conn, e));
    try {
      const summaries = await conn.listDomains({ timeoutMs: this.#o.callTimeoutMs });
      const seen = new Set<SandboxId>();
      for (const s of summaries) {
        if (!isSandboxId(s.name)) {
          this.#o.logger.debug(
            { domain: s.name },
            'libvirt: domain name is not a valid sandbox id; not managed',
          );
          continue;
        }
        seen.add(s.name);
        this.#upsert(s.name, s.uuid, s.state);
      }
      for (const [name, d] of [...this.#domains]) {
        if (!seen.has(name)) this.#remove(name, d.uuid);
      }
    } catch (err) {
      off();
      await conn.close({ timeoutMs: 2_000 }).catch(() => {});
      this.#failed(err);
      return;
    }
    if (conn.lostReason !== undefined) {
      off();
      this.#failed(new Error(`connection closed (${conn.lostReason})`));
      return;
    }
    this.#conn = conn;
    this.#offEvents = off;
    this.#lastError = undefined;
    this.#backoffMs = this.#o.initialBackoffMs;
    this.#o.logger.info({ uri: this.uri, domains: this.#domains.size }, 'libvirt: connected');
    this.#emit({ kind: 'connection', connected: true });
    for (const w of [...this.#connectedWaiters]) w();
  }

  #failed(err: unknown): void {
    const message = err instanceof LibvirtError ? `${err.code}: ${err.message}` : (err as Error).message;
    if (this.#lastError !== message) {
      this.#o.logger.warn({ uri: this.uri, error: message }, 'libvirt: not connected; retrying with backoff');
    }
    this.#lastError = message;
    this.#schedule();
  }

  #schedule(): void {
    if (this.#closed) return;
    const delay = this.#backoffMs;
    this.#backoffMs = Math.min(this.#o.maxBackoffMs, this.#backoffMs * 2);
    this.#timer = setTimeout(() => {
      this.#connecting = this.#connectOnce();
    }, delay);
    this.#timer.unref();
  }

  #onEvent(conn: LibvirtConnection, e: LibvirtEvent): void {
    if (e.kind === 'closed') {
      if (this.#conn !== conn) return;
      this.#offEvents?.();
      this.#offEvents = undefined;
      this.#conn = undefined;
      this.#lastError = `connection closed (${e.reason})`;
      this.#o.logger.warn({ uri: this.uri, reason: e.reason }, 'libvirt: connection lost; reconnecting');
      this.#emit({ kind: 'connection', connected: false });
      void conn.close({ timeoutMs: 2_000 }).catch(() => {});
      this.#schedule();
      return;
    }
    if (e.kind !== 'lifecycle') return;
    const name = e.domain.name;
    if (!isSandboxId(name)) return;
    const implied = stateAfter(e.event);
    if (implied !== undefined && this.#domains.has(name)) this.#upsert(name, e.domain.uuid, implied);
    // Confirm with libvirt (a transient domain that stopped is gone; 'defined' has no state yet).
    const prev = this.#refreshing.get(name) ?? Promise.resolve();
    const next = prev.then(() => this.#refresh(conn, name, e.domain.uuid));
    this.#refreshing.set(name, next);
    void next.finally(() => {
      if (this.#refreshing.get(name) === next) this.#refreshing.delete(name);
    });
  }

  async #refresh(conn: LibvirtConnection, name: SandboxId, uuid: LibvirtUuid): Promise<void> {
    try {
      const s = await conn.lookupByUUID(uuid, { timeoutMs: this.#o.callTimeoutMs });
      if (this.#conn === conn || this.#conn === undefined) this.#upsert(name, s.uuid, s.state);
    } catch (err) {
      if (err instanceof LibvirtError && err.code === 'LIBVIRT_NO_DOMAIN') {
        const known = this.#domains.get(name);
        if (known?.uuid === uuid) this.#remove(name, uuid);
        return;
      }
      // The next event or the resync after a reconnect corrects it.
      this.#o.logger.warn({ domain: name, error: (err as Error).message }, 'libvirt: domain refresh failed');
    }
  }

  #upsert(name: SandboxId, uuid: LibvirtUuid, state: DomainState): void {
    const known = this.#domains.get(name);
    if (known !== undefined && known.uuid === uuid && known.state === state) return;
    const d: LibvirtDomain = {
      name,
      uuid,
      state,
      discoveredAt: known?.uuid === uuid ? known.discoveredAt : new Date().toISOString(),
    };
    this.#domains.set(name, d);
    this.#o.logger.debug({ domain: name, state }, 'libvirt: domain state');
    this.#emit({ kind: 'updated', domain: { ...d } });
  }

  #remove(name: SandboxId, uuid: LibvirtUuid): void {
    if (!this.#domains.delete(name)) return;
    this.#o.logger.info({ domain: name }, 'libvirt: domain gone');
    this.#emit({ kind: 'removed', name, uuid });
  }
}
