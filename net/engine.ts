import { createHash } from 'node:crypto';
import { resolve } from 'node:path';
import { EngineBase } from '../core/engine-base.js';
import { ConflictError, NotFoundError, ValidationError, VmplugError } from '../core/errors.js';
import { OperationGate } from '../core/gate.js';
import type { NicId, SandboxId } from '../core/ids.js';
import { needsDeviceCheck, planAttach } from '../core/plan-attach.js';
import { type CallOptions, isQmpError, type QmpExecutor } from '../qmp/index.js';
import { NicBackendError, NicDetachPendingError, NicLanesFullError } from './errors.js';
import { type CallOpts, DEFAULT_IP_TIMEOUT_MS, type HostNetwork, IpHostNetwork } from './host.js';
import { advance, isNicAttachState, NicJournal, type NicRecord, newNicRecord } from './journal.js';
import { isNicDeviceName, isNicTapName, tapAlias } from './naming.js';
import {
  addNicDevice,
  addTapNetdev,
  delNetdev,
  listDevices,
  listVmplugNetdevs,
  portOf,
  rootPorts,
  unplugDevice,
} from './qemu.js';
import { type NicSpec, type NicSpecInput, specToInput } from './spec.js';

// The NIC engine: attach / detach / get / list / reconcile of virtio-net NICs in Kata sandboxes,
// over each sandbox's private QMP monitor and the host's iproute2. Every step is journalled
// before its side effect (Pending -> TapCreated -> NetdevAdded -> Attached; Detaching ->
// DeviceDeleted -> NetdevDeleted -> record removed), so a crash anywhere is finished or rolled
// back by the next attach, detach or reconcile. Admission and drain are EngineBase's: operations
// on one sandbox run one at a time, with its volumes and resizes too (one gate for the node,
// handed in by the daemon), since NICs and virtio-blk disks take the same vmplug root ports.

/** The pino subset the engine logs through (pino loggers and fastify's request.log fit). */
export interface NicLogger {
  debug(obj: Record<string, unknown>, msg?: string): void;
  info(obj: Record<string, unknown>, msg?: string): void;
  warn(obj: Record<string, unknown>, msg?: string): void;
  error(obj: Record<string, unknown>, msg?: string): void;
  child(bindings: Record<string, unknown>): NicLogger;
}

export interface NicContext {
  signal: AbortSignal;
  log: NicLogger;
}

/** The engine's view of the node's sandboxes; the daemon's discovery satisfies it as it is. */
export type NicSandboxPresence =
  | { state: 'present'; sandbox: { readonly qmp: QmpExecutor } }
  | { state: 'unreachable'; reason: string }
  | { state: 'gone' };

export interface NicSandboxDirectory {
  lookup(id: string): NicSandboxPresence;
  known(): readonly string[];
}

/** A NIC as the API shows it. */
export interface NicView {
  sandboxId: string;
  nicId: string;
  state: NicRecord['state'];
  mac: string;
  spec: NicSpecInput;
  /** The host tap QEMU uses, and whether vmplug created it (and so deletes it). */
  tap: string;
  tapOwned: boolean;
  netdevId: string;
  deviceId: string;
  /** The vmplug root port the device sits on. */
  port?: string;
  timeline: NicRecord['timeline'];
  lastError?: NicRecord['lastError'];
}

export interface NicAttachResult {
  created: boolean;
  nic: NicView;
}

export interface NicReconcileSummary {
  repairs: Array<{ sandboxId?: string; action: string; name: string }>;
  errors: Array<{ sandboxId?: string; message: string }>;
}

export interface NicEngineOptions {
  stateDir: string;
  sandboxes: NicSandboxDirectory;
  logger: NicLogger;
  host?: HostNetwork;
  /** Tags this vmplugd's taps (their ip-link alias); default: a hash of the state dir. */
  instance?: string;
  qmpTimeoutMs?: number;
  ipTimeoutMs?: number;
  /** How long detach waits for the guest to release the NIC; default 10 s. */
  detachTimeoutMs?: number;
  /** The same, inside reconcile (a pending unplug is left for the next round); default 1 s. */
  reconcileUnplugWaitMs?: number;
  /** Told after a sandbox's NICs may have changed (attach, detach, a repair): status reporting. */
  onChange?: (sandboxId: string) => void;
  /** The node's one gate (one lock per sandbox shared with volumes and resizes); default: a private one. */
  gate?: OperationGate<string>;
}

export function toNicView(r: NicRecord): NicView {
  const v: NicView = {
    sandboxId: r.sandboxId,
    nicId: r.nicId,
    state: r.state,
    mac: r.spec.mac,
    spec: specToInput(r.spec),
    tap: r.tap,
    tapOwned: r.tapOwned,
    netdevId: r.names.netdev,
    deviceId: r.names.device,
    timeline: r.timeline,
  };
  if (r.port !== undefined) v.port = r.port;
  if (r.lastError !== undefined) v.lastError = r.lastError;
  return v;
}

function backend(operation: string, err: unknown): VmplugError {
  if (err instanceof VmplugError) return err;
  if (isQmpError(err)) {
    return new NicBackendError(operation, err.message, { cause: err, retryable: err.retryable });
  }
  return new NicBackendError(operation, (err as Error).message ?? String(err), { cause: err });
}

export class NicEngine extends EngineBase {
  readonly #o: Required<Omit<NicEngineOptions, 'host' | 'instance' | 'onChange' | 'gate'>>;
  readonly #onChange: (sandboxId: string) => void;
  readonly #host: HostNetwork;
  readonly #alias: string;
  readonly #journal: NicJournal;

  constructor(opts: NicEngineOptions) {
    super({
      gate: opts.gate ?? new OperationGate(8),
      closedError: () =>
        new NicBackendError('engine', 'vmplugd is shutting down; retry', { retryable: true }),
    });
    this.#o = {
      qmpTimeoutMs: 10_000,
      ipTimeoutMs: DEFAULT_IP_TIMEOUT_MS,
      detachTimeoutMs: 10_000,
      reconcileUnplugWaitMs: 1_000,
      ...opts,
    };
    this.#host = opts.host ?? new IpHostNetwork();
    this.#onChange = (id) => {
      try {
        opts.onChange?.(id);
      } catch {
        // an observer's bug must not fail the operation
      }
    };
    const instance =
      opts.instance ?? createHash('sha256').update(resolve(opts.stateDir)).digest('hex').slice(0, 12);
    this.#alias = tapAlias(instance);
    this.#journal = new NicJournal(opts.stateDir);
  }

  get journal(): NicJournal {
    return this.#journal;
  }

  /** The ip-link alias of this engine's taps. */
  get tapAlias(): string {
    return this.#alias;
  }

  async attach(sandboxId: SandboxId, nicId: NicId, spec: NicSpec, ctx: NicContext): Promise<NicAttachResult> {
    const log = ctx.log.child({ op: 'nic-attach', sandboxId, nicId });
    return this.#observed(
      sandboxId,
      this.admit(sandboxId, ctx.signal, async (signal) => {
        const qmp = this.#present(sandboxId);
        const existing = await this.#journal.load(sandboxId, nicId);
        const fresh = newNicRecord(sandboxId, nicId, spec);
        const plan = planAttach(
          existing,
          fresh.fingerprint,
          needsDeviceCheck(existing, fresh.fingerprint) &&
            (
              await listDevices(qmp, this.#q(signal)).catch((e: unknown) => {
                throw backend('attach', e);
              })
            ).has(existing.names.device),
          isNicAttachState,
        );
        let record = fresh;
        switch (plan.kind) {
          case 'reuse':
            return { created: false, nic: toNicView(plan.record) };
          case 'conflict':
            throw new ConflictError(
              plan.reason === 'spec'
                ? `NIC ${nicId} of sandbox ${sandboxId} exists with a different spec; detach it first`
                : `NIC ${nicId} of sandbox ${sandboxId} is being detached (${plan.record.state}); finish the detach first`,
            );
          case 'resume':
            log.info({ state: plan.record.state }, 'resuming a half-done NIC attach');
            record = plan.record;
            break;
          case 'clear-lost': {
            // QEMU lost the device (restarted, or deleted behind vmplug's back): clear what is left
            // and attach anew rather than answer "attached" for a NIC the guest does not have.
            log.warn(
              { device: plan.record.names.device },
              'attached NIC has no device in QEMU; attaching it again',
            );
            const lost = advance(plan.record, 'Detaching', {
              error: { code: 'DEVICE_LOST', message: `device ${plan.record.names.device} vanished` },
            });
            await this.#journal.save(lost);
            await this.#teardown(qmp, lost, signal, this.#o.detachTimeoutMs);
            break;
          }
          case 'fresh':
            break;
        }
        if (plan.kind !== 'resume') {
          await this.#checkHostSide(spec, signal);
          await this.#journal.save(record);
        }
        try {
          const done = await this.#attachSteps(qmp, record, signal);
          log.info(
            { device: done.names.device, port: done.port, tap: done.tap, mac: done.spec.mac },
            'NIC attached',
          );
          return { created: true, nic: toNicView(done) };
        } catch (err) {
          const failure = backend('attach', err);
          await this.#rollback(qmp, sandboxId, nicId, failure, log);
          throw failure;
        }
      }),
    );
  }

  /** Resolves true when there was a NIC to detach, false when there was none (also fine). */
  async detach(sandboxId: SandboxId, nicId: NicId, ctx: NicContext): Promise<boolean> {
    const log = ctx.log.child({ op: 'nic-detach', sandboxId, nicId });
    return this.#observed(
      sandboxId,
      this.admit(sandboxId, ctx.signal, async (signal) => {
        let record = await this.#journal.load(sandboxId, nicId);
        if (record === undefined) return false;
        const presence = this.#o.sandboxes.lookup(sandboxId);
        if (presence.state === 'gone') {
          await this.#dropGone(record, signal);
          log.info({}, 'sandbox gone; removed its NIC record and tap');
          return true;
        }
        if (presence.state === 'unreachable') {
          throw new NicBackendError(
            'detach',
            `the monitor of sandbox ${sandboxId} does not answer (${presence.reason})`,
            {
              retryable: true,
            },
          );
        }
        if (isNicAttachState(record.state)) {
          record = advance(record, 'Detaching');
          await this.#journal.save(record);
        }
        await this.#teardown(presence.sandbox.qmp, record, signal, this.#o.detachTimeoutMs);
        log.info({}, 'NIC detached');
        return true;
      }),
    );
  }

  /** Tells the observer once `op` settles, either way (a failed attach may have rolled back). */
  async #observed<T>(sandboxId: string, op: Promise<T>): Promise<T> {
    try {
      return await op;
    } finally {
      this.#onChange(sandboxId);
    }
  }

  async get(sandboxId: SandboxId, nicId: NicId): Promise<NicView> {
    const record = await this.#journal.load(sandboxId, nicId);
    if (record === undefined) {
      throw this.#o.sandboxes.lookup(sandboxId).state === 'gone'
        ? new NotFoundError('sandbox', sandboxId)
        : new NotFoundError('nic', nicId);
    }
    return toNicView(record);
  }

  async list(sandboxId: SandboxId): Promise<NicView[]> {
    return (await this.#journal.list(sandboxId)).map(toNicView);
  }

  /**
   * Converges the journal, QEMU and the host: half-done attaches are rolled back (the client's
   * retry attaches anew), half-done detaches finished, records of gone sandboxes dropped with
   * their taps, and vmplug-named NIC devices, netdevs and this instance's taps that no record
   * explains removed.
   */
  async reconcile(opts: { signal?: AbortSignal; log?: NicLogger } = {}): Promise<NicReconcileSummary> {
    const signal = opts.signal ?? new AbortController().signal;
    const log = (opts.log ?? this.#o.logger).child({ op: 'nic-reconcile' });
    const summary: NicReconcileSummary = { repairs: [], errors: [] };
    // Taps are listed before any record is read: an attach saves its record before it creates
    // its tap, so a tap seen here whose record is then missing was not made by an attach in flight.
    let links: Awaited<ReturnType<HostNetwork['links']>> = [];
    try {
      links = await this.#host.links(this.#ip(signal));
    } catch (err) {
      summary.errors.push({ message: (err as Error).message });
    }
    const ids = new Set<string>([...(await this.#journal.sandboxes()), ...this.#o.sandboxes.known()]);
    const explainedTaps = new Set<string>();
    for (const id of [...ids].sort()) {
      const sandboxId = id as SandboxId;
      try {
        await this.admit(sandboxId, signal, () =>
          this.#reconcileSandbox(sandboxId, signal, log, summary, explainedTaps),
        );
      } catch (err) {
        summary.errors.push({ sandboxId, message: (err as Error).message });
        log.warn(
          { sandboxId, error: (err as Error).message },
          'NIC reconcile of a sandbox failed; next round retries',
        );
      }
    }
    for (const l of links) {
      if (!isNicTapName(l.name) || l.alias !== this.#alias || explainedTaps.has(l.name)) continue;
      // Re-read: the record may have appeared since (an attach started after the listing).
      if (await this.#tapExplained(l.name)) continue;
      const now = await this.#host.link(l.name, this.#ip(signal)).catch(() => undefined);
      if (now === undefined || now.lowerUp) continue; // gone, or a QEMU holds it open
      try {
        await this.#host.deleteLink(l.name, this.#ip(signal));
        summary.repairs.push({ action: 'deleted-stray-tap', name: l.name });
        log.info({ tap: l.name }, 'deleted a vmplug tap no record explains');
      } catch (err) {
        summary.errors.push({ message: (err as Error).message });
      }
    }
    for (const id of new Set(
      summary.repairs.flatMap((r) => (r.sandboxId !== undefined ? [r.sandboxId] : [])),
    )) {
      this.#onChange(id);
    }
    return summary;
  }

  async #tapExplained(tap: string): Promise<boolean> {
    for (const s of await this.#journal.sandboxes()) {
      if ((await this.#journal.list(s)).some((r) => r.tapOwned && r.tap === tap)) return true;
    }
    return false;
  }

  async #reconcileSandbox(
    sandboxId: SandboxId,
    signal: AbortSignal,
    log: NicLogger,
    summary: NicReconcileSummary,
    explainedTaps: Set<string>,
  ): Promise<void> {
    const presence = this.#o.sandboxes.lookup(sandboxId);
    const records = await this.#journal.list(sandboxId);
    for (const r of records) if (r.tapOwned) explainedTaps.add(r.tap);
    if (presence.state === 'unreachable') return;
    if (presence.state === 'gone') {
      for (const r of records) {
        await this.#dropGone(r, signal);
        summary.repairs.push({ sandboxId, action: 'dropped-gone-sandbox-nic', name: r.nicId });
        log.info({ sandboxId, nicId: r.nicId }, 'sandbox gone; dropped its NIC record and tap');
      }
      return;
    }
    const qmp = presence.sandbox.qmp;
    for (let r of records) {
      if (r.state === 'Attached') continue;
      const action = isNicAttachState(r.state) ? 'rolled-back-attach' : 'finished-detach';
      if (isNicAttachState(r.state)) {
        r = advance(r, 'Detaching', {
          error: { code: 'INTERRUPTED', message: `attach interrupted in ${r.state}` },
        });
        await this.#journal.save(r);
      }
      try {
        await this.#teardown(qmp, r, signal, this.#o.reconcileUnplugWaitMs);
        summary.repairs.push({ sandboxId, action, name: r.nicId });
        log.info({ sandboxId, nicId: r.nicId, action }, 'NIC repaired');
      } catch (err) {
        summary.errors.push({ sandboxId, message: (err as Error).message });
      }
    }
    // Strays: vmplug-named devices and netdevs that no record (left after the above) explains.
    const q = this.#q(signal);
    const kept = await this.#journal.list(sandboxId);
    const devices = [...(await listDevices(qmp, q)).keys()].filter(isNicDeviceName);
    for (const d of devices) {
      if (kept.some((r) => r.names.device === d)) continue;
      const res = await unplugDevice(qmp, d, this.#o.reconcileUnplugWaitMs, q);
      summary.repairs.push({
        sandboxId,
        action: res === 'gone' ? 'deleted-stray-device' : 'unplug-pending',
        name: d,
      });
      log.info({ sandboxId, device: d, result: res }, 'unplugging a vmplug NIC device no record explains');
    }
    for (const n of await listVmplugNetdevs(qmp, q)) {
      if (kept.some((r) => r.names.netdev === n)) continue;
      try {
        await delNetdev(qmp, n, q);
        summary.repairs.push({ sandboxId, action: 'deleted-stray-netdev', name: n });
        log.info({ sandboxId, netdev: n }, 'deleted a vmplug netdev no record explains');
      } catch (err) {
        // Its device is still being unplugged: the next round removes it.
        summary.errors.push({ sandboxId, message: (err as Error).message });
      }
    }
  }

  async #checkHostSide(spec: NicSpec, signal: AbortSignal): Promise<void> {
    const hi = spec.hostInterface;
    const name = hi.mode === 'bridge' ? hi.bridge : hi.name;
    const field = hi.mode === 'bridge' ? 'hostInterface.bridge' : 'hostInterface.name';
    const link = await this.#host.link(name, this.#ip(signal));
    if (hi.mode === 'bridge' && link?.kind !== 'bridge') {
      throw new ValidationError(field, `${name} is not an existing bridge on this node`);
    }
    if (hi.mode === 'existing' && (link?.kind !== 'tun' || link.tunType !== 'tap')) {
      throw new ValidationError(field, `${name} is not an existing tap device on this node`);
    }
  }

  async #attachSteps(qmp: QmpExecutor, start: NicRecord, signal: AbortSignal): Promise<NicRecord> {
    let r = start;
    const q = this.#q(signal);
    if (r.state === 'Pending') {
      const ip = this.#ip(signal);
      if (r.tapOwned) {
        const bridge = r.spec.hostInterface.mode === 'bridge' ? r.spec.hostInterface.bridge : undefined;
        // A tap left by a crash before TapCreated was written: no netdev uses it yet, recreate it.
        await this.#host.deleteLink(r.tap, ip);
        await this.#host.createTap(
          r.tap,
          {
            alias: this.#alias,
            ...(r.spec.mtu !== undefined ? { mtu: r.spec.mtu } : {}),
            ...(bridge !== undefined ? { bridge } : {}),
          },
          ip,
        );
      } else if (r.spec.mtu !== undefined) {
        await this.#host.setMtu(r.tap, r.spec.mtu, ip);
      }
      r = advance(r, 'TapCreated');
      await this.#journal.save(r);
    }
    if (r.state === 'TapCreated') {
      await addTapNetdev(qmp, r.names.netdev, r.tap, q);
      r = advance(r, 'NetdevAdded');
      await this.#journal.save(r);
    }
    if (r.state === 'NetdevAdded') {
      const port = await this.#placeDevice(qmp, r, q);
      r = advance(r, 'Attached', { port });
      await this.#journal.save(r);
    }
    return r;
  }

  /**
   * device_add on the first free vmplug root port. No move to the next port on "slot not
   * available": ports are read under the sandbox's lock, which volumes (whose virtio-blk disks use
   * the same ports), NICs and resizes all take (one OperationGate for the node), and a device
   * vmplug did not place counts as busy (qemu.ts rootPorts). A refusal is a device hot-plugged
   * behind vmplug's back in that very instant: a plain error, rolled back.
   */
  async #placeDevice(qmp: QmpExecutor, r: NicRecord, q: CallOptions): Promise<string> {
    if ((await listDevices(qmp, q)).has(r.names.device)) {
      // Resumed after a crash between device_add and the journal write.
      const port = await portOf(qmp, r.names.device, q);
      if (port === undefined)
        throw new NicBackendError('device_add', `device ${r.names.device} is not on a vmplug root port`);
      return port;
    }
    const ports = await rootPorts(qmp, q);
    const free = ports.find((p) => !p.busy);
    if (free === undefined) throw new NicLanesFullError(ports.length);
    await addNicDevice(
      qmp,
      {
        id: r.names.device,
        netdev: r.names.netdev,
        mac: r.spec.mac,
        port: free.id,
        ...(r.spec.mtu !== undefined ? { mtu: r.spec.mtu } : {}),
      },
      q,
    );
    return free.id;
  }

  /** From Detaching/DeviceDeleted/NetdevDeleted to the record's removal. */
  async #teardown(qmp: QmpExecutor, start: NicRecord, signal: AbortSignal, waitMs: number): Promise<void> {
    let r = start;
    const q = this.#q(signal);
    try {
      if (r.state === 'Detaching') {
        const res = await unplugDevice(qmp, r.names.device, waitMs, q);
        if (res === 'pending') throw new NicDetachPendingError(r.names.device, waitMs);
        r = advance(r, 'DeviceDeleted');
        await this.#journal.save(r);
      }
      if (r.state === 'DeviceDeleted') {
        await delNetdev(qmp, r.names.netdev, q);
        r = advance(r, 'NetdevDeleted');
        await this.#journal.save(r);
      }
      if (r.tapOwned) await this.#host.deleteLink(r.tap, this.#ip(signal));
      await this.#journal.remove(r.sandboxId, r.nicId);
    } catch (err) {
      throw backend('detach', err);
    }
  }

  async #rollback(
    qmp: QmpExecutor,
    sandboxId: SandboxId,
    nicId: NicId,
    failure: VmplugError,
    log: NicLogger,
  ): Promise<void> {
    try {
      let r = await this.#journal.load(sandboxId, nicId);
      if (r === undefined) return;
      if (isNicAttachState(r.state)) {
        r = advance(r, 'Detaching', { error: { code: failure.code, message: failure.message } });
        await this.#journal.save(r);
      }
      // Its own signal: the rollback runs even when the request's signal fired.
      await this.#teardown(qmp, r, new AbortController().signal, this.#o.detachTimeoutMs);
      log.warn({ code: failure.code }, 'NIC attach failed; rolled back');
    } catch (err) {
      log.error(
        { code: failure.code, rollbackError: (err as Error).message },
        'NIC attach failed and its rollback did not finish; reconcile will retry',
      );
    }
  }

  /** The sandbox (and its QEMU) is gone: only the tap vmplug made and the record remain. */
  async #dropGone(r: NicRecord, signal: AbortSignal): Promise<void> {
    if (r.tapOwned) await this.#host.deleteLink(r.tap, this.#ip(signal));
    await this.#journal.remove(r.sandboxId, r.nicId);
  }

  #present(sandboxId: SandboxId): QmpExecutor {
    const p = this.#o.sandboxes.lookup(sandboxId);
    if (p.state === 'gone') throw new NotFoundError('sandbox', sandboxId);
    if (p.state === 'unreachable') {
      throw new NicBackendError(
        'sandbox',
        `the monitor of sandbox ${sandboxId} does not answer (${p.reason})`,
        {
          retryable: true,
        },
      );
    }
    return p.sandbox.qmp;
  }

  #q(signal: AbortSignal): CallOptions {
    return { timeoutMs: this.#o.qmpTimeoutMs, signal };
  }

  #ip(signal: AbortSignal): CallOpts {
    return { timeoutMs: this.#o.ipTimeoutMs, signal };
  }
}
