/**
 * AttachService for libvirt domains, through libvirt itself (DESIGN section 3: never raw QMP into
 * a domain libvirt owns), so `virsh domblklist` and libvirt's own bookkeeping stay true:
 *   - a disk is `<disk>` XML attached with flags LIVE only (transient, like a Kata attach: the
 *     domain's persistent definition never learns of it), named by a `ua-vmpd-<hash>` alias and
 *     vmplug's serial so events, reconcile and the guest can find it;
 *   - rbd: an ephemeral, private libvirt ceph secret (usage `vmplug/vmps-<hash>`) holds the key
 *     (set from the request, never logged) and is undefined on detach; a per-attach Ceph config
 *     file sets a short client_mount_timeout where QEMU can read one, and the monitors are
 *     checked over TCP before anything exists (QEMU's main loop blocks while librbd connects);
 *   - detach is done only when libvirt's deviceRemoved event for the alias arrives; within the
 *     bound or it is DetachPending and a retry continues.
 * The journal, idempotency and reconcile follow the Kata engine (storage/engine.ts), with records
 * of kind 'libvirt'. Operations on one domain run one at a time.
 */
import { constants } from 'node:fs';
import { access, mkdir, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { EngineBase } from '../../core/engine-base.js';
import {
  BackendError,
  ConflictError,
  DetachPendingError,
  LanesFullError,
  NotFoundError,
  ValidationError,
  VmplugError,
} from '../../core/errors.js';
import { OperationGate } from '../../core/gate.js';
import type { SandboxId, VolumeId } from '../../core/ids.js';
import { needsDeviceCheck, planAttach } from '../../core/plan-attach.js';
import {
  DomainModify,
  type LibvirtConnection,
  type LibvirtEvent,
  type LibvirtUuid,
  type SecretRef,
} from '../../libvirt/binding.js';
import type { LibvirtDomains } from '../../libvirt/domains.js';
import { LibvirtError } from '../../libvirt/errors.js';
import {
  type Attachment,
  type AttachResult,
  type AttachService,
  attachConflict,
  attachmentFromRecord,
  checkResizeBytes,
  type OperationContext,
  type OperationLogger,
  pendingRecord,
  resizableRecord,
  shuttingDown,
} from '../attach-service.js';
import { checkCephFirst, DEFAULT_CEPH_PROBE_TIMEOUT_MS } from '../ceph-probe.js';
import { isAttachState, type Journal, type JournalRecord, transition, type VolumeState } from '../journal.js';
import { parseVmplugName, volumeNames } from '../naming.js';
import { listConfHashes, removeConfByHash, removeConfFile, writeConfFile } from '../rbd-conf-files.js';
import type { ReconcileSummary, Repair } from '../reconcile.js';
import { type AttachSpec, specFingerprint } from '../volume-spec.js';
import {
  deviceOfAlias,
  diskAlias,
  diskXml,
  freeTarget,
  type LiveDisk,
  MAX_TARGETS,
  parseDisks,
  secretOfUsage,
  secretUsage,
  secretXml,
} from './disk-xml.js';

export interface LibvirtAttachOptions {
  journal: Journal;
  domains: LibvirtDomains;
  /** The per-node key of specFingerprint (shared with the Kata engine). */
  fingerprintKey: Uint8Array;
  logger: OperationLogger;
  /**
   * Base directory of the per-attach Ceph config files (<base>/rbd/<hash>.conf). QEMU runs as
   * libvirt's unprivileged user: when it cannot traverse to the file, none is used (the monitor
   * check still guards the attach). Undefined: no config files.
   */
  cephConfBase?: string;
  /** Ignored when `gate` is given. */
  maxConcurrentOps?: number;
  /** The node's one gate (one lock per sandbox shared with Kata volumes, NICs and resizes). */
  gate?: OperationGate<string>;
  /** Bound of each libvirt call; default 15 s. */
  callTimeoutMs?: number;
  /** How long a detach waits for deviceRemoved before answering DetachPending; default 10 s. */
  detachTimeoutMs?: number;
  cephProbeTimeoutMs?: number;
  /** client_mount_timeout in the per-attach Ceph config; default 5 s. */
  clientMountTimeoutS?: number;
  /** How long reconcile waits for an unplug before leaving it for the next round; default 1 s. */
  reconcileUnplugWaitMs?: number;
  /** How long the first reconcile waits for libvirtd's connection; default 5 s. */
  startupConnectWaitMs?: number;
}

interface Target {
  conn: LibvirtConnection;
  uuid: LibvirtUuid;
}

function isLibvirt(err: unknown, ...codes: string[]): boolean {
  return err instanceof LibvirtError && codes.includes(err.code);
}

/** A libvirt failure as the API's error (502, retryable where libvirt says so). */
function failure(step: string, err: unknown, spec?: AttachSpec): VmplugError {
  if (err instanceof VmplugError) return err;
  const secrets = spec?.mode === 'rbd' ? [spec.source.key] : [];
  if (err instanceof LibvirtError) {
    return new BackendError(step, `${err.code}: ${err.message}`, {
      retryable: err.retryable,
      secrets,
      cause: err,
    });
  }
  return new BackendError(step, (err as Error).message ?? String(err), { secrets, cause: err });
}

export class LibvirtAttachService extends EngineBase implements AttachService {
  readonly #o: Required<Omit<LibvirtAttachOptions, 'cephConfBase' | 'gate'>> & { cephConfBase?: string };
  /** Whether QEMU can reach files under cephConfBase (checked once). */
  #confCheck: Promise<boolean> | undefined;
  #reconciledOnce = false;

  constructor(opts: LibvirtAttachOptions) {
    super({
      gate: opts.gate ?? new OperationGate(opts.maxConcurrentOps ?? 8),
      closedError: shuttingDown,
    });
    this.#o = {
      maxConcurrentOps: 8,
      callTimeoutMs: 15_000,
      detachTimeoutMs: 10_000,
      cephProbeTimeoutMs: DEFAULT_CEPH_PROBE_TIMEOUT_MS,
      clientMountTimeoutS: 5,
      reconcileUnplugWaitMs: 1_000,
      startupConnectWaitMs: 5_000,
      ...opts,
    };
  }

  /** True when vmplug has a journal record of a libvirt attachment on `sandboxId`. */
  async hasRecords(sandboxId: SandboxId): Promise<boolean> {
    return (await this.#o.journal.list(sandboxId)).some((r) => r.kind === 'libvirt');
  }

  async attach(
    sandboxId: SandboxId,
    volumeId: VolumeId,
    spec: AttachSpec,
    ctx: OperationContext,
  ): Promise<AttachResult> {
    if (spec.mode === 'rbd' && spec.source.namespace !== undefined) {
      throw new ValidationError(
        'source.namespace',
        "RBD namespaces are not supported for libvirt domains (libvirt's rbd source names pool/image only)",
      );
    }
    const log = ctx.log.child({ op: 'attach', sandboxId, volumeId, kind: 'libvirt' });
    const fingerprint = specFingerprint(spec, this.#o.fingerprintKey);
    return this.admit(sandboxId, ctx.signal, async (signal) => {
      const t = await this.#target(sandboxId, signal, true);
      const existing = await this.#o.journal.load(sandboxId, volumeId);
      if (existing !== undefined && existing.kind !== 'libvirt') {
        throw new ConflictError(`volume ${volumeId} is recorded for a Kata sandbox of the same id`);
      }
      const plan = planAttach(
        existing,
        fingerprint,
        needsDeviceCheck(existing, fingerprint) &&
          (await this.#disks(t, signal)).some((d) => d.alias === diskAlias(existing.names)),
        isAttachState,
      );
      switch (plan.kind) {
        case 'reuse':
          return { created: false, attachment: this.#view(plan.record) };
        case 'conflict':
          throw attachConflict(plan, `domain ${sandboxId}`);
        case 'clear-lost':
          // The domain lost the disk (restarted, or detached behind vmplug's back): answering
          // "already attached" would be a lie. Clear what is left and attach anew.
          log.warn(
            { alias: diskAlias(plan.record.names) },
            'attached volume has no disk in the domain; attaching it again',
          );
          await this.#clear(t, plan.record, 'DEVICE_LOST', 'the disk vanished from the domain', signal, log);
          break;
        case 'resume':
          // A half-done attach (a crash, or a rollback that did not finish): undo it, then start over.
          log.info({ state: plan.record.state }, 'rolling back a half-done attach before attaching again');
          await this.#clear(t, plan.record, 'RESTARTED', 'attach restarted', signal, log);
          break;
        case 'fresh':
          break;
      }
      const bus = spec.bus === 'virtio-blk' ? 'virtio-blk' : 'scsi';
      await checkCephFirst(spec, { timeoutMs: this.#o.cephProbeTimeoutMs, signal }, log);
      const record = pendingRecord({ sandboxId, volumeId, kind: 'libvirt', fingerprint, bus }, spec);
      await this.#o.journal.save(record);
      return { created: true, attachment: await this.#runAttach(t, record, spec, signal, log) };
    });
  }

  async #runAttach(
    t: Target,
    first: JournalRecord,
    spec: AttachSpec,
    signal: AbortSignal,
    log: OperationLogger,
  ): Promise<Attachment> {
    let record = first;
    const call = { timeoutMs: this.#o.callTimeoutMs, signal };
    try {
      let secretUuid: string | undefined;
      let cephConfFile: string | undefined;
      if (spec.mode === 'rbd') {
        const started = performance.now();
        const confBase = this.#o.cephConfBase;
        if (confBase !== undefined && (await this.#confUsable(confBase))) {
          cephConfFile = await writeConfFile(confBase, record.names, {
            clientMountTimeoutS: this.#o.clientMountTimeoutS,
          });
        }
        // A secret of this usage left by a crash holds an unknown value: replace it.
        await this.#undefineSecret(t.conn, record, signal);
        const secret = await t.conn.secretDefineXML(
          secretXml({ names: record.names, sandboxId: record.sandboxId, volumeId: record.volumeId }),
          call,
        );
        secretUuid = secret.uuid;
        await t.conn.secretSetValue(secret.uuid, Buffer.from(spec.source.key.reveal(), 'base64'), {
          ...call,
          wipe: true,
        });
        record = await this.#advance(record, ['SecretAdded'], performance.now() - started);
      }
      const disks = await this.#disks(t, signal);
      const targetDev = freeTarget(record.bus, disks);
      if (targetDev === undefined) throw new LanesFullError(record.bus, MAX_TARGETS);
      const xml = diskXml({
        spec: record.spec,
        names: record.names,
        bus: record.bus,
        targetDev,
        ...(secretUuid !== undefined ? { secretUuid } : {}),
        ...(cephConfFile !== undefined ? { cephConfFile } : {}),
      });
      const started = performance.now();
      await t.conn.attachDeviceFlags(t.uuid, xml, DomainModify.LIVE, call);
      record = await this.#advance(record, ['BlockdevAdded', 'DeviceAdded'], performance.now() - started);
      // libvirt's own view must show it (the call returned, so it does unless the domain died).
      const after = await this.#disks(t, signal);
      if (!after.some((d) => d.alias === diskAlias(record.names))) {
        throw new BackendError(
          'attachDeviceFlags',
          `disk ${diskAlias(record.names)} is not in the domain after attach`,
        );
      }
      record = await this.#advance(record, ['Attached'], 0);
      log.info({ bus: record.bus, target: targetDev, alias: diskAlias(record.names) }, 'attached');
      return this.#view(record);
    } catch (err) {
      const f = isLibvirt(err, 'LIBVIRT_NO_DOMAIN')
        ? new NotFoundError('sandbox', record.sandboxId)
        : failure('attach', err, spec);
      await this.#rollback(t, record, f, log);
      throw f;
    }
  }

  async #advance(record: JournalRecord, steps: VolumeState[], ms: number): Promise<JournalRecord> {
    let next = record;
    steps.forEach((s, i) => {
      next = transition(next, s, { ms: i === 0 ? ms : 0 });
    });
    await this.#o.journal.save(next);
    return next;
  }

  async #rollback(t: Target, record: JournalRecord, f: VmplugError, log: OperationLogger): Promise<void> {
    try {
      const current = await this.#o.journal.load(record.sandboxId, record.volumeId);
      if (current === undefined) return;
      // A fresh signal: the rollback must run even when the request's signal fired.
      await this.#clear(t, current, f.code, f.message, new AbortController().signal, log);
      log.warn({ code: f.code }, 'attach failed; rolled back');
    } catch (err) {
      log.error(
        { code: f.code, rollbackError: (err as Error).message },
        'attach failed and its rollback did not finish; reconcile will retry',
      );
    }
  }

  /** Detaching (with `code` as the reason) and the teardown. */
  async #clear(
    t: Target,
    record: JournalRecord,
    code: string,
    message: string,
    signal: AbortSignal,
    log: OperationLogger,
  ): Promise<void> {
    let r = record;
    if (isAttachState(r.state)) {
      r = transition(r, 'Detaching', { error: { code, message } });
      await this.#o.journal.save(r);
    }
    await this.#teardown(t, r, this.#o.detachTimeoutMs, signal, log);
  }

  /**
   * From any detach state to the record's removal: unplug (waiting for deviceRemoved within
   * `waitMs`, else DetachPending), then the secret and the conf file.
   */
  async #teardown(
    t: Target | undefined,
    first: JournalRecord,
    waitMs: number,
    signal: AbortSignal,
    log: OperationLogger,
  ): Promise<void> {
    let r = first;
    const alias = diskAlias(r.names);
    if (r.state === 'Detaching' || r.state === 'DetachPending') {
      const started = performance.now();
      const present = t !== undefined && (await this.#disks(t, signal)).some((d) => d.alias === alias);
      if (present && t !== undefined) {
        const removed = await this.#unplug(t, alias, waitMs, signal, r.state === 'DetachPending');
        if (!removed) {
          r = transition(r, 'DetachPending', {
            ms: performance.now() - started,
            error: { code: 'DETACH_PENDING', message: `the guest has not released ${alias} yet` },
          });
          await this.#o.journal.save(r);
          throw new DetachPendingError(alias, waitMs);
        }
        r = await this.#advance(r, ['DeviceDeleted'], performance.now() - started);
      } else if (r.state === 'DetachPending') {
        // Detaching with no disk: nothing to record before the next step's write.
        r = await this.#advance(r, ['DeviceDeleted'], 0);
      }
    }
    if (r.state !== 'BlockdevDeleted' && r.state !== 'Detached') {
      const started = performance.now();
      // A vanished domain still leaves its secret in libvirt: remove it over the node's connection.
      const conn = t?.conn ?? this.#o.domains.connection;
      if (conn !== undefined) await this.#undefineSecret(conn, r, signal);
      else if (r.spec.mode === 'rbd') {
        throw new BackendError('secretUndefine', this.#o.domains.health().detail, { retryable: true });
      }
      if (this.#o.cephConfBase !== undefined) await removeConfFile(this.#o.cephConfBase, r.names);
      r = await this.#advance(r, ['BlockdevDeleted'], performance.now() - started);
    }
    if (r.state === 'BlockdevDeleted') r = await this.#advance(r, ['Detached'], 0);
    await this.#o.journal.remove(r.sandboxId, r.volumeId);
    await this.#o.journal.pruneSandbox(r.sandboxId);
    log.debug({ state: 'Detached' }, 'volume Detached');
  }

  /** True once deviceRemoved for `alias` arrived (or the disk is gone); false after `waitMs`. */
  async #unplug(
    t: Target,
    alias: string,
    waitMs: number,
    signal: AbortSignal,
    again: boolean,
  ): Promise<boolean> {
    // Subscribed before the request: the event can arrive before detachDeviceAlias returns.
    // Its own controller: a refused request ends the wait at once rather than at its timeout.
    const waiting = new AbortController();
    const removed = t.conn
      .waitForEvent(
        (e: LibvirtEvent) =>
          (e.kind === 'deviceRemoved' || e.kind === 'deviceRemovalFailed') &&
          e.domain.uuid === t.uuid &&
          e.alias === alias,
        { timeoutMs: waitMs, signal: AbortSignal.any([signal, waiting.signal]) },
      )
      .then(
        (e) => e.kind === 'deviceRemoved',
        () => false,
      );
    try {
      await t.conn.detachDeviceAlias(t.uuid, alias, DomainModify.LIVE, {
        timeoutMs: this.#o.callTimeoutMs,
        signal,
      });
    } catch (err) {
      if (isLibvirt(err, 'LIBVIRT_DEVICE_MISSING')) return true;
      // A repeated request while the guest still holds the device: the first one stands.
      if (!(again && isLibvirt(err, 'LIBVIRT_OPERATION_FAILED', 'LIBVIRT_OPERATION_INVALID'))) {
        waiting.abort();
        throw failure('detachDeviceAlias', err);
      }
    }
    if (await removed) return true;
    // The event may have been lost with a reconnect: libvirt's view decides.
    return !(await this.#disks(t, signal)).some((d) => d.alias === alias);
  }

  async #undefineSecret(conn: LibvirtConnection, r: JournalRecord, signal: AbortSignal): Promise<void> {
    if (r.spec.mode !== 'rbd') return;
    const call = { timeoutMs: this.#o.callTimeoutMs, signal };
    try {
      const s = await conn.secretLookupByUsage('ceph', secretUsage(r.names), call);
      await conn.secretUndefine(s.uuid, call);
    } catch (err) {
      if (!isLibvirt(err, 'LIBVIRT_NO_SECRET')) throw failure('secretUndefine', err);
    }
  }

  async detach(sandboxId: SandboxId, volumeId: VolumeId, ctx: OperationContext): Promise<void> {
    const log = ctx.log.child({ op: 'detach', sandboxId, volumeId, kind: 'libvirt' });
    await this.admit(sandboxId, ctx.signal, async (signal) => {
      let record = await this.#o.journal.load(sandboxId, volumeId);
      if (record === undefined || record.kind !== 'libvirt') return;
      const t = await this.#target(sandboxId, signal, false);
      if (isAttachState(record.state)) {
        record = transition(record, 'Detaching');
        await this.#o.journal.save(record);
      }
      // A domain that is gone took its disks with it: only the secret and files remain.
      await this.#teardown(t, record, this.#o.detachTimeoutMs, signal, log);
      log.info({}, t === undefined ? 'domain gone; dropped its record' : 'detached');
    });
  }

  async get(sandboxId: SandboxId, volumeId: VolumeId, ctx: OperationContext): Promise<Attachment> {
    const record = await this.#o.journal.load(sandboxId, volumeId, { signal: ctx.signal });
    if (record === undefined || record.kind !== 'libvirt') {
      throw this.#o.domains.get(sandboxId) === undefined
        ? new NotFoundError('sandbox', sandboxId)
        : new NotFoundError('volume', volumeId);
    }
    const attachment = this.#view(record);
    if (record.state === 'Attached') {
      try {
        const size = await this.#size(sandboxId, record, ctx.signal);
        if (size !== undefined) attachment.stats = { size_bytes: size };
      } catch (err) {
        // The size is a nicety: the record still answers the question.
        ctx.log.warn({ sandboxId, volumeId, error: (err as Error).message }, 'getBlockInfo failed');
      }
    }
    return attachment;
  }

  async #size(sandboxId: SandboxId, record: JournalRecord, signal: AbortSignal): Promise<number | undefined> {
    const t = await this.#target(sandboxId, signal, false);
    if (t === undefined) return undefined;
    const disk = (await this.#disks(t, signal)).find((d) => d.alias === diskAlias(record.names));
    if (disk === undefined) return undefined;
    const info = await t.conn.getBlockInfo(t.uuid, disk.targetDev, {
      timeoutMs: this.#o.callTimeoutMs,
      signal,
    });
    return info.capacity;
  }

  async list(sandboxId: SandboxId, ctx?: Pick<OperationContext, 'signal'>): Promise<Attachment[]> {
    const records = await this.#o.journal.list(sandboxId, ctx?.signal ? { signal: ctx.signal } : {});
    return records.filter((r) => r.kind === 'libvirt').map((r) => this.#view(r));
  }

  async resize(
    sandboxId: SandboxId,
    volumeId: VolumeId,
    sizeBytes: number,
    ctx: OperationContext,
  ): Promise<Attachment> {
    checkResizeBytes(sizeBytes);
    const log = ctx.log.child({ op: 'resize', sandboxId, volumeId, kind: 'libvirt' });
    return this.admit(sandboxId, ctx.signal, async (signal) => {
      const t = await this.#target(sandboxId, signal, true);
      const found = await this.#o.journal.load(sandboxId, volumeId);
      const record = resizableRecord(found?.kind === 'libvirt' ? found : undefined, volumeId);
      const disk = (await this.#disks(t, signal)).find((d) => d.alias === diskAlias(record.names));
      if (disk === undefined) {
        throw new BackendError('blockResize', `disk ${diskAlias(record.names)} is gone from the domain`);
      }
      const call = { timeoutMs: this.#o.callTimeoutMs, signal };
      try {
        const before = await t.conn.getBlockInfo(t.uuid, disk.targetDev, call);
        if (sizeBytes < before.capacity) {
          throw new ValidationError(
            'sizeBytes',
            `must be at least the current size ${before.capacity}: shrinking is refused`,
          );
        }
        // rbd: libvirt (QEMU) grows the image itself; block: the host device must have grown first.
        await t.conn.blockResize(t.uuid, disk.targetDev, sizeBytes, call);
        const after = await t.conn.getBlockInfo(t.uuid, disk.targetDev, call);
        log.info({ sizeBytes, target: disk.targetDev }, 'resized');
        return { ...this.#view(record), stats: { size_bytes: after.capacity } };
      } catch (err) {
        throw failure('blockResize', err);
      }
    });
  }

  #view(record: JournalRecord): Attachment {
    // In a libvirt domain the QEMU device id is the alias; libvirt names the block nodes itself.
    return { ...attachmentFromRecord(record), deviceId: diskAlias(record.names) };
  }

  /**
   * The live connection and the domain's UUID. `mustRun`: NotFound for an unknown domain and a
   * conflict for one that is not running; otherwise undefined when the domain no longer exists.
   */
  async #target(sandboxId: SandboxId, signal: AbortSignal, mustRun: true): Promise<Target>;
  async #target(sandboxId: SandboxId, signal: AbortSignal, mustRun: false): Promise<Target | undefined>;
  async #target(sandboxId: SandboxId, signal: AbortSignal, mustRun: boolean): Promise<Target | undefined> {
    const conn = this.#o.domains.connection;
    if (conn === undefined) {
      throw new BackendError('libvirt', `${this.#o.domains.health().detail}`, { retryable: true });
    }
    try {
      const d = await conn.lookupByName(sandboxId, { timeoutMs: this.#o.callTimeoutMs, signal });
      if (mustRun && d.id === null) {
        throw new ConflictError(`domain ${sandboxId} is ${d.state}: a live attach needs a running domain`);
      }
      return { conn, uuid: d.uuid };
    } catch (err) {
      if (isLibvirt(err, 'LIBVIRT_NO_DOMAIN')) {
        if (mustRun) throw new NotFoundError('sandbox', sandboxId);
        return undefined;
      }
      throw failure('lookupByName', err);
    }
  }

  async #disks(t: Target, signal: AbortSignal): Promise<LiveDisk[]> {
    try {
      return parseDisks(await t.conn.getXMLDesc(t.uuid, 0, { timeoutMs: this.#o.callTimeoutMs, signal }));
    } catch (err) {
      throw failure('getXMLDesc', err);
    }
  }

  #confUsable(base: string): Promise<boolean> {
    this.#confCheck ??= (async (base: string) => {
      try {
        await mkdir(base, { recursive: true, mode: 0o755 });
        await access(base, constants.W_OK);
        // QEMU runs as libvirt's unprivileged user: every directory above the file must be
        // searchable by others.
        for (let d = base; ; d = dirname(d)) {
          if (((await stat(d)).mode & 0o001) === 0) throw new Error(`${d} is not searchable by QEMU's user`);
          if (dirname(d) === d) break;
        }
        return true;
      } catch (err) {
        this.#o.logger.warn(
          { dir: base, error: (err as Error).message },
          'libvirt: per-attach Ceph config files disabled (only the monitor check guards rbd attaches)',
        );
        return false;
      }
    })(base);
    return this.#confCheck;
  }

  /**
   * Converges the journal's libvirt records with the domains' live XML and libvirt's secrets:
   * half-done attaches are rolled back (or finished when the disk exists after attachDeviceFlags
   * returned), half-done detaches continued, records of vanished domains dropped with their
   * secrets, and vmplug's disks, secrets and conf files that no record explains removed.
   */
  async reconcile(opts: { signal?: AbortSignal; log?: OperationLogger } = {}): Promise<ReconcileSummary> {
    const signal = opts.signal ?? new AbortController().signal;
    const log = opts.log ?? this.#o.logger;
    const summary: ReconcileSummary = { sandboxes: 0, repairs: [], skipped: [], pending: [], failures: [] };
    // The start-up round waits (bounded) for the connection being opened in the background, so
    // that a restart after a crash converges at once rather than one interval later.
    if (this.#o.domains.connection === undefined && !this.#reconciledOnce) {
      await this.#o.domains.connected(this.#o.startupConnectWaitMs);
    }
    this.#reconciledOnce = true;
    const conn = this.#o.domains.connection;
    const confBase = this.#o.cephConfBase;
    const confHashes = confBase !== undefined ? await listConfHashes(confBase) : [];
    const records = (await this.#o.journal.list()).filter((r) => r.kind === 'libvirt');
    const ids = new Set<SandboxId>([
      ...records.map((r) => r.sandboxId),
      ...this.#o.domains.list().map((d) => d.name),
    ]);
    if (conn === undefined) {
      for (const id of ids) summary.skipped.push({ sandboxId: id, reason: this.#o.domains.health().detail });
      return summary;
    }
    const repair = (r: Repair): void => {
      summary.repairs.push(r);
      log.info({ repair: r.action, ...r, kind: 'libvirt' }, `reconcile: ${r.action}`);
    };
    for (const sandboxId of [...ids].sort()) {
      signal.throwIfAborted();
      summary.sandboxes++;
      try {
        await this.admit(sandboxId, signal, () =>
          this.#reconcileDomain(sandboxId, signal, log, summary, repair),
        );
      } catch (err) {
        if (signal.aborted) throw err;
        const e = failure('reconcile', err);
        summary.failures.push({ sandboxId, code: e.code, message: e.message });
        log.error(
          { sandboxId, code: e.code, error: e.message },
          'reconcile: domain not reconciled this round',
        );
      }
    }
    // Secrets and conf files no record explains (a crash between creating one and its record).
    // Both are listed before the records: an attach saves its record before it creates either,
    // so one created meanwhile by an attach in flight is always explained.
    let secrets: SecretRef[] = [];
    try {
      secrets = await conn.listSecrets({ timeoutMs: this.#o.callTimeoutMs, signal });
    } catch (err) {
      const e = failure('listSecrets', err);
      summary.failures.push({ sandboxId: '', code: e.code, message: e.message });
    }
    const explained = new Set((await this.#o.journal.list()).map((r) => r.names.hash));
    for (const q of await this.#o.journal.quarantined())
      explained.add(volumeNames(q.sandboxId, q.volumeId).hash);
    for (const s of secrets) {
      const name = s.usageType === 'ceph' ? secretOfUsage(s.usageId) : undefined;
      const hash = name === undefined ? undefined : parseVmplugName(name)?.hash;
      if (hash === undefined || explained.has(hash)) continue;
      try {
        await conn.secretUndefine(s.uuid, { timeoutMs: this.#o.callTimeoutMs, signal });
        repair({ action: 'removed-stray-secret', name: s.usageId });
      } catch (err) {
        if (isLibvirt(err, 'LIBVIRT_NO_SECRET')) continue;
        const e = failure('secretUndefine', err);
        summary.failures.push({ sandboxId: '', name: s.usageId, code: e.code, message: e.message });
      }
    }
    if (confBase !== undefined) {
      for (const hash of confHashes) {
        if (!explained.has(hash) && (await removeConfByHash(confBase, hash)))
          repair({ action: 'removed-stray-conf', name: hash });
      }
    }
    return summary;
  }

  async #reconcileDomain(
    sandboxId: SandboxId,
    signal: AbortSignal,
    log: OperationLogger,
    summary: ReconcileSummary,
    repair: (r: Repair) => void,
  ): Promise<void> {
    const t = await this.#target(sandboxId, signal, false);
    const records = (await this.#o.journal.list(sandboxId)).filter((r) => r.kind === 'libvirt');
    let disks = t === undefined ? [] : await this.#disks(t, signal);
    for (const r of records) {
      const rlog = log.child({ sandboxId, volumeId: r.volumeId, op: 'reconcile', kind: 'libvirt' });
      const present = disks.some((d) => d.alias === diskAlias(r.names));
      try {
        if (t === undefined) {
          await this.#teardown(
            undefined,
            isAttachState(r.state) ? transition(r, 'Detaching') : r,
            0,
            signal,
            rlog,
          );
          repair({ action: 'dropped-record', sandboxId, volumeId: r.volumeId });
        } else if (r.state === 'Attached') {
          if (present) continue;
          await this.#clear(t, r, 'DEVICE_LOST', 'the disk vanished from the domain', signal, rlog);
          repair({ action: 'cleared-lost-attachment', sandboxId, volumeId: r.volumeId });
        } else if (r.state === 'DeviceAdded' && present) {
          await this.#advance(r, ['Attached'], 0);
          repair({ action: 'finished-attach', sandboxId, volumeId: r.volumeId });
        } else if (isAttachState(r.state)) {
          await this.#clear(t, r, 'INTERRUPTED', 'attach interrupted', signal, rlog);
          repair({ action: 'rolled-back-attach', sandboxId, volumeId: r.volumeId });
        } else {
          await this.#teardown(t, r, this.#o.reconcileUnplugWaitMs, signal, rlog);
          repair({ action: 'finished-detach', sandboxId, volumeId: r.volumeId });
        }
      } catch (err) {
        if (err instanceof DetachPendingError) {
          summary.pending.push({ sandboxId, volumeId: r.volumeId });
          continue;
        }
        const e = failure('reconcile', err);
        summary.failures.push({ sandboxId, volumeId: r.volumeId, code: e.code, message: e.message });
        rlog.error({ code: e.code, error: e.message }, 'reconcile: repair failed; retried next round');
      }
    }
    if (t === undefined) return;
    // Strays: vmplug's disks (ua-vmpd-<hash>) that no record explains.
    const explained = new Set((await this.#o.journal.list(sandboxId)).map((r) => r.names.hash));
    disks = await this.#disks(t, signal);
    for (const d of disks) {
      const device = d.alias === undefined ? undefined : deviceOfAlias(d.alias);
      const hash = device === undefined ? undefined : parseVmplugName(device)?.hash;
      if (hash === undefined || explained.has(hash) || d.alias === undefined) continue;
      if (await this.#unplug(t, d.alias, this.#o.reconcileUnplugWaitMs, signal, true)) {
        repair({ action: 'removed-stray-device', sandboxId, name: d.alias });
      } else {
        summary.pending.push({ sandboxId, volumeId: d.alias });
      }
    }
  }
}
