import type { PodState, PodVolume } from '../../api/index.js';
import {
  BackendError,
  ConflictError,
  ForeignRecordError,
  NotFoundError,
  VmplugError,
} from '../../core/errors.js';
import { KeyedMutex, OperationGate } from '../../core/gate.js';
import type { PodUid, VolumeId } from '../../core/ids.js';
import { hostDeviceCheck } from '../host-device.js';
import { type KeyCustody, MemoryKeyCustody } from '../key-custody.js';
import type { ExportRequest, StorageDaemonBackend, WantedExport } from '../storage-daemon/types.js';
import type { RbdSource, Secret } from '../volume-spec.js';
import {
  consumerOf,
  contentHash,
  mountInfoJson,
  readRecordState,
  recordDirOf,
  recordPathOf,
  removeRecord,
  writeRecord,
} from './dav.js';
import { newPodRecord, type PodJournal, type PodRecord, podTransition } from './journal.js';
import { exportKeyOf } from './naming.js';
import { type PublishSpec, publishFingerprint, recordOptions, toStoredPublishSpec } from './spec.js';
import { podVolumeView } from './view.js';

// The pod-volume engine (DESIGN §5b): publish a volume for a pod that has no sandbox yet, by
// preparing its backend and writing the Kata direct-volume record Kata's runtime reads at
// CreateContainer; unpublish it again. Every step is journalled before it is taken, each step
// first looks at what exists (record file, storage daemon), and one operation runs at a time per
// pod volume (and per target path), so a CSI retry, a crash and the reconcile all converge.

export interface PodEngineLogger {
  info(obj: Record<string, unknown>, msg: string): void;
  warn(obj: Record<string, unknown>, msg: string): void;
  error(obj: Record<string, unknown>, msg: string): void;
}

export interface PodEngineDeps {
  journal: PodJournal;
  /** Per-node key of the spec fingerprints (the attach journal's, so the cephx key never shows). */
  fingerprintKey: Uint8Array;
  /** Kata's direct-volume root (`--kata-direct-volume-root`). */
  directVolumeRoot: string;
  /** rbd mode; without it an rbd publish is refused before anything is journalled. */
  storageDaemon?: StorageDaemonBackend;
  /**
   * Where the cephx keys of rbd publishes are kept while published (storage/key-custody.ts): the
   * kernel keyring in vmplugd, so a storage daemon that dies after a vmplugd restart can be
   * started again. Default: memory only (lost with the process).
   */
  keys?: KeyCustody;
  logger: PodEngineLogger;
  /**
   * Block mode's check of source.path, answering the resolved device (or nothing: unchanged);
   * default: the default allow-list and host-use checks (storage/host-device.ts). The daemon
   * passes the node's configured one.
   */
  checkBlockDevice?: (path: string, field: string) => Promise<unknown>;
  /** Bound of a storage daemon start/stop (Ceph may be slow or away). */
  backendTimeoutMs?: number;
  maxConcurrentOps?: number;
}

export interface PodOperationContext {
  signal?: AbortSignal;
}

export interface PublishResult {
  created: boolean;
  volume: PodVolume;
}

export interface PodReconcileResult {
  repairs: string[];
}

const DEFAULT_BACKEND_TIMEOUT_MS = 30_000;

export class PodVolumeEngine {
  readonly #d: PodEngineDeps;
  readonly #gate: OperationGate<string>;
  readonly #paths = new KeyedMutex<string>();
  /**
   * cephx keys of rbd publishes (never on disk in clear): what lets the reconcile restart a
   * storage daemon that died. Stored after the intent is journalled (so a key never exists that
   * no journal record explains, see `reconcile`), removed when the intent ends.
   */
  readonly #keys: KeyCustody;

  constructor(deps: PodEngineDeps) {
    this.#d = deps;
    this.#keys = deps.keys ?? new MemoryKeyCustody();
    this.#gate = new OperationGate(deps.maxConcurrentOps ?? 8);
  }

  async publish(
    podUid: PodUid,
    volumeId: VolumeId,
    spec: PublishSpec,
    ctx: PodOperationContext = {},
  ): Promise<PublishResult> {
    return this.#locked(podUid, volumeId, spec.targetPath, ctx.signal, async () => {
      const fingerprint = publishFingerprint(spec, this.#d.fingerprintKey);
      let existing = await this.#d.journal.load(podUid, volumeId);
      if (existing !== undefined && isLive(existing.state)) {
        if (existing.fingerprint !== fingerprint) {
          throw new ConflictError(
            `volume ${volumeId} of pod ${podUid} is published with another spec; unpublish it first`,
          );
        }
        if (spec.volume.mode === 'rbd' && existing.exportName !== undefined) {
          await this.#keys.put(existing.exportName, spec.volume.source.key);
        }
        if (existing.state === 'Published') {
          // Same spec: 200, after making sure the record is still there and ours.
          const whole = await this.#ensureRecord(existing);
          return { created: false, volume: await this.#view(whole) };
        }
        const done = await this.#forwardOrRollback(
          existing,
          spec.volume.mode === 'rbd' ? spec.volume.source : undefined,
          ctx.signal,
        );
        return { created: true, volume: await this.#view(done) };
      }
      if (existing !== undefined && isTearingDown(existing.state)) {
        existing = await this.#teardown(existing);
      }
      // Nothing is journalled until the request is known to be doable.
      await this.#admit(podUid, volumeId, spec);
      const key = exportKeyOf(podUid, volumeId);
      const init = {
        podUid,
        volumeId,
        spec: toStoredPublishSpec(spec),
        fingerprint,
        recordPath: recordPathOf(this.#d.directVolumeRoot, spec.targetPath),
        ...(spec.pod !== undefined ? { pod: spec.pod } : {}),
        ...(spec.volume.mode === 'rbd' ? { exportName: key.name } : {}),
      };
      let record: PodRecord;
      if (existing?.state === 'Failed') {
        record = { ...podTransition(existing, 'Publishing'), ...init };
        delete record.lastError;
        delete record.rollback;
        delete record.device;
        delete record.recordHash;
      } else {
        record = newPodRecord(init);
      }
      await this.#d.journal.save(record);
      // After the intent (which explains the key to the reconcile), before the daemon starts.
      if (spec.volume.mode === 'rbd') await this.#keys.put(key.name, spec.volume.source.key);
      const done = await this.#forwardOrRollback(
        record,
        spec.volume.mode === 'rbd' ? spec.volume.source : undefined,
        ctx.signal,
      );
      return { created: true, volume: await this.#view(done) };
    });
  }

  async unpublish(podUid: PodUid, volumeId: VolumeId, ctx: PodOperationContext = {}): Promise<void> {
    const record = await this.#d.journal.load(podUid, volumeId);
    if (record === undefined) return;
    await this.#locked(podUid, volumeId, record.spec.targetPath, ctx.signal, async () => {
      const r = await this.#d.journal.load(podUid, volumeId);
      if (r === undefined) return;
      if (r.state === 'Failed') {
        await this.#d.journal.remove(podUid, volumeId);
        if (r.exportName !== undefined) await this.#keys.remove(r.exportName);
        return;
      }
      const start = isTearingDown(r.state) ? r : stripRollback(r);
      await this.#teardown(start);
    });
  }

  /**
   * Expand of a published rbd volume (CSI NodeExpandVolume): its storage daemon's image node grows
   * (`block_resize`); with no guest plugged the export is made again so the next plug sees the new
   * size, a plugged guest sees it at the volume's next publish (QEMU 7.2's export tells no client).
   * Answers the volume with the size the daemon now sees. Block mode is refused: the guest's QEMU
   * is Kata's, and the host device is not vmplug's to grow.
   */
  async resize(
    podUid: PodUid,
    volumeId: VolumeId,
    sizeBytes: number,
    ctx: PodOperationContext = {},
  ): Promise<PodVolume> {
    const seen = await this.#d.journal.load(podUid, volumeId);
    if (seen === undefined) throw new NotFoundError('volume', `${podUid}/${volumeId}`);
    return this.#locked(podUid, volumeId, seen.spec.targetPath, ctx.signal, async () => {
      const r = await this.#d.journal.load(podUid, volumeId);
      if (r === undefined) throw new NotFoundError('volume', `${podUid}/${volumeId}`);
      if (r.state !== 'Published') {
        throw new ConflictError(`volume ${volumeId} of pod ${podUid} is ${r.state}, not Published`);
      }
      if (r.spec.volume.mode !== 'rbd' || r.exportName === undefined || this.#d.storageDaemon === undefined) {
        throw new ConflictError(
          `volume ${volumeId} of pod ${podUid} is a block-mode volume: Kata plugged the host device, grow it on the host`,
        );
      }
      const info = await this.#d.storageDaemon.resizeExport({ name: r.exportName }, sizeBytes, {
        ...(ctx.signal ? { signal: ctx.signal } : {}),
        timeoutMs: this.#backendTimeout(),
      });
      return { ...(await this.#view(r)), sizeBytes: info.sizeBytes };
    });
  }

  async get(podUid: PodUid, volumeId: VolumeId): Promise<PodVolume> {
    const r = await this.#d.journal.load(podUid, volumeId);
    if (r === undefined) throw new NotFoundError('volume', `${podUid}/${volumeId}`);
    return this.#view(r);
  }

  async list(podUid?: PodUid): Promise<PodVolume[]> {
    const out: PodVolume[] = [];
    for (const r of await this.#d.journal.list(podUid)) out.push(await this.#view(r));
    return out;
  }

  /**
   * Converges journal, Kata records and storage daemons (start-up and periodically):
   * - a publish cut short is finished where that needs nothing vmplugd lost (block mode; an rbd
   *   export whose daemon still runs, or whose key is still in memory), else rolled back to
   *   Failed, which a CSI retry of the publish takes up again;
   * - a Published intent whose record is gone gets it back; a record with other content is
   *   somebody else's and is left alone (GET shows Failed);
   * - an unpublish cut short is finished;
   * - storage daemons no intent explains are stopped; dead ones that are wanted are restarted
   *   with their key from the custody (read only then);
   * - kept keys no live intent explains are removed.
   */
  async reconcile(signal?: AbortSignal): Promise<PodReconcileResult> {
    const repairs: string[] = [];
    // Keys are listed before the journal: a key is stored after its record is saved, so any key
    // seen here whose intent is live shows up in the record list read next.
    const keptKeys = await this.#keys.names();
    const exports = this.#d.storageDaemon ? await this.#d.storageDaemon.list() : [];
    const running = new Set(exports.map((e) => e.key.name));
    const wanted: WantedExport[] = [];
    const explained = new Set<string>();
    for (const seen of await this.#d.journal.list()) {
      signal?.throwIfAborted();
      // Before anything can fail: a daemon some intent names is never taken for a stray.
      if (seen.exportName !== undefined && seen.state !== 'Failed') explained.add(seen.exportName);
      try {
        await this.#locked(seen.podUid, seen.volumeId, seen.spec.targetPath, signal, async () => {
          const r = await this.#d.journal.load(seen.podUid, seen.volumeId);
          if (r === undefined) return;
          const what = `${r.podUid}/${r.volumeId}`;
          if (r.exportName !== undefined && r.state !== 'Failed') explained.add(r.exportName);
          const rbd = r.spec.volume.mode === 'rbd' ? r.spec.volume.source : undefined;
          switch (r.state) {
            case 'Publishing':
            case 'BackendReady': {
              const source = await this.#sourceOf(r);
              const canFinish =
                rbd === undefined ||
                source !== undefined ||
                (r.state === 'BackendReady' && running.has(r.exportName ?? ''));
              if (canFinish) {
                await this.#forwardOrRollback(r, source, signal).catch(() => undefined);
                repairs.push(`${what}: finished an interrupted publish`);
              } else {
                await this.#rollback(
                  r,
                  new BackendError('publish', 'interrupted by a vmplugd restart; publish again'),
                );
                repairs.push(`${what}: rolled back an interrupted publish (no key to finish it)`);
              }
              break;
            }
            case 'Published': {
              const before = await readRecordState(r.recordPath);
              await this.#ensureRecord(r).catch((err) =>
                this.#d.logger.error(
                  { podUid: r.podUid, volumeId: r.volumeId, err: String(err) },
                  'pod volume: record not ours',
                ),
              );
              if (before.kind === 'absent') repairs.push(`${what}: rewrote the missing Kata record`);
              if (rbd !== undefined && r.exportName !== undefined) {
                // The key is read only if the daemon must be started again.
                wanted.push({
                  key: { name: r.exportName },
                  request: async () => {
                    const source = await this.#sourceOf(r);
                    return source === undefined ? undefined : exportRequest(r, source);
                  },
                });
              }
              break;
            }
            case 'Unpublishing':
            case 'RecordRemoved':
            case 'BackendStopped':
              await this.#teardown(r);
              repairs.push(`${what}: finished an interrupted unpublish`);
              break;
            case 'Failed':
              break;
          }
        });
      } catch (err) {
        if (signal?.aborted) throw err;
        // One volume that cannot converge now (a client still on its export...) does not stop the others.
        this.#d.logger.error(
          { podUid: seen.podUid, volumeId: seen.volumeId, err: String(err) },
          'pod volume reconcile: not converged yet',
        );
      }
    }
    if (this.#d.storageDaemon !== undefined) {
      for (const e of exports) {
        if (explained.has(e.key.name)) continue;
        await this.#d.storageDaemon.stopExport(e.key, { timeoutMs: this.#backendTimeout() });
        repairs.push(`${e.key.name}: stopped a storage daemon no publish explains`);
      }
      // A daemon an unfinished intent names is not supervision's to stop: listed as left alone.
      const named = new Set(wanted.map((w) => w.key.name));
      for (const name of explained) {
        if (wanted.length > 0 && !named.has(name))
          wanted.push({ key: { name }, request: async () => undefined });
      }
      if (wanted.length > 0) {
        const { restarted, failed } = await this.#d.storageDaemon.supervise(wanted, {
          timeoutMs: this.#backendTimeout(),
        });
        for (const k of restarted) repairs.push(`${k.name}: restarted a storage daemon that had died`);
        for (const f of failed)
          this.#d.logger.error(
            { export: f.key.name, code: f.error.code, err: f.error.message },
            'pod volume: storage daemon supervision failed',
          );
      }
    }
    for (const name of keptKeys) {
      if (explained.has(name)) continue;
      await this.#keys.remove(name);
      repairs.push(`${name}: removed a kept cephx key no publish explains`);
    }
    for (const msg of repairs) this.#d.logger.info({ repair: msg }, 'pod volume reconcile');
    return { repairs };
  }

  /** The rbd source of a record with its kept key, or undefined (block mode, or no key kept). */
  async #sourceOf(r: PodRecord): Promise<RbdSource | undefined> {
    if (r.spec.volume.mode !== 'rbd' || r.exportName === undefined) return undefined;
    let key: Secret | undefined;
    try {
      key = await this.#keys.get(r.exportName);
    } catch (err) {
      this.#d.logger.error(
        { podUid: r.podUid, volumeId: r.volumeId, err: String(err) },
        'pod volume: the kept cephx key cannot be read',
      );
      return undefined;
    }
    return key === undefined ? undefined : { ...r.spec.volume.source, key };
  }

  async close(): Promise<void> {
    await this.#d.storageDaemon?.close();
  }

  // ---- steps ----

  async #admit(podUid: PodUid, volumeId: VolumeId, spec: PublishSpec): Promise<void> {
    for (const other of await this.#d.journal.list(podUid)) {
      if (
        other.volumeId !== volumeId &&
        other.state !== 'Failed' &&
        other.spec.targetPath === spec.targetPath
      ) {
        throw new ConflictError(`targetPath is already published for volume ${other.volumeId}`, {
          field: 'targetPath',
        });
      }
    }
    const path = recordPathOf(this.#d.directVolumeRoot, spec.targetPath);
    const cur = await readRecordState(path);
    if (cur.kind !== 'absent') throw new ForeignRecordError(path);
    if (spec.volume.mode === 'block') {
      await this.#checkBlock(spec.volume.source.path);
    } else if (this.#d.storageDaemon === undefined) {
      throw new BackendError(
        'storage-daemon',
        'rbd pod volumes need the qemu-storage-daemon backend, which this vmplugd lacks',
      );
    }
  }

  async #forwardOrRollback(
    record: PodRecord,
    source: RbdSource | undefined,
    signal?: AbortSignal,
  ): Promise<PodRecord> {
    try {
      return await this.#forward(record, source, signal);
    } catch (err) {
      const current = (await this.#d.journal.load(record.podUid, record.volumeId)) ?? record;
      if (isLive(current.state) && current.state !== 'Published') {
        // The caller learns why the publish failed; a rollback cut short is the reconcile's to finish.
        await this.#rollback(current, err).catch((rollbackErr: unknown) =>
          this.#d.logger.error(
            { podUid: current.podUid, volumeId: current.volumeId, err: String(rollbackErr) },
            'pod volume: rollback of a failed publish did not finish; the reconcile retries it',
          ),
        );
      }
      throw err;
    }
  }

  /**
   * Block mode: the node's allow-list and host-use checks (storage/host-device.ts: 403
   * DEVICE_NOT_ALLOWED, 409 DEVICE_IN_USE on source.path); answers the resolved device.
   */
  async #checkBlock(path: string): Promise<string> {
    const check =
      this.#d.checkBlockDevice ??
      ((p: string, field: string) => this.#defaultCheck(p, { signal: AbortSignal.timeout(10_000), field }));
    const resolved = await check(path, 'source.path');
    return typeof resolved === 'string' && resolved !== '' ? resolved : path;
  }

  readonly #defaultCheck = hostDeviceCheck();

  async #forward(record: PodRecord, source: RbdSource | undefined, signal?: AbortSignal): Promise<PodRecord> {
    let r = record;
    if (r.state === 'Publishing') {
      const t0 = performance.now();
      let device: string;
      const vol = r.spec.volume;
      if (vol.mode === 'block') {
        // Checked again at the record step: the host may have taken the device since. The record
        // names the resolved device (a /dev/disk/by-* link followed), as QEMU would get it.
        device = await this.#checkBlock(vol.source.path);
      } else {
        if (this.#d.storageDaemon === undefined || source === undefined || r.exportName === undefined) {
          throw new BackendError('storage-daemon', 'no storage-daemon backend or no key to open the image');
        }
        const info = await this.#d.storageDaemon.ensureExport(exportRequest(r, source), {
          ...(signal ? { signal } : {}),
          timeoutMs: this.#backendTimeout(),
        });
        device = info.devicePath;
      }
      const text = this.#recordText(r, device);
      r = podTransition(r, 'BackendReady', {
        ms: performance.now() - t0,
        set: { device, recordHash: contentHash(text) },
      });
      await this.#d.journal.save(r);
    }
    if (r.state === 'BackendReady') {
      const t0 = performance.now();
      await this.#writeRecordIfAbsent(r, signal);
      r = podTransition(r, 'Published', { ms: performance.now() - t0 });
      await this.#d.journal.save(r);
    }
    return r;
  }

  #recordText(r: PodRecord, device: string): string {
    return mountInfoJson({
      device,
      fstype: r.spec.fsType,
      options: recordOptions({
        volume: { readOnly: r.spec.volume.readOnly } as PublishSpec['volume'],
        mountOptions: r.spec.mountOptions,
      }),
    });
  }

  /** Writes the record when absent; ours already there is fine; anything else is not ours. */
  async #writeRecordIfAbsent(r: PodRecord, signal?: AbortSignal): Promise<void> {
    if (r.device === undefined || r.recordHash === undefined)
      throw new Error('BackendReady without a device');
    const cur = await readRecordState(r.recordPath);
    if (cur.kind === 'file' && cur.hash === r.recordHash) return;
    if (cur.kind !== 'absent') throw new ForeignRecordError(r.recordPath);
    const text = this.#recordText(r, r.device);
    if (contentHash(text) !== r.recordHash) throw new Error('record content drifted from the journal');
    await writeRecord(r.recordPath, text, signal);
  }

  /** A Published intent: its record is rewritten if it went missing. */
  async #ensureRecord(r: PodRecord): Promise<PodRecord> {
    await this.#writeRecordIfAbsent(r);
    return r;
  }

  async #rollback(record: PodRecord, cause: unknown): Promise<PodRecord> {
    const error =
      cause instanceof VmplugError
        ? { code: cause.code, message: cause.message }
        : { code: 'BACKEND_FAILED', message: (cause as Error)?.message ?? String(cause) };
    const r = podTransition(record, 'Unpublishing', { error, set: { rollback: true } });
    await this.#d.journal.save(r);
    this.#d.logger.warn(
      { podUid: r.podUid, volumeId: r.volumeId, error },
      'pod volume: publish failed, rolled back',
    );
    return this.#teardown(r);
  }

  /** Unpublishing -> RecordRemoved -> BackendStopped -> removed (or Failed for a rollback). */
  async #teardown(record: PodRecord): Promise<PodRecord> {
    let r = record;
    if (isLive(r.state)) {
      r = podTransition(r, 'Unpublishing');
      await this.#d.journal.save(r);
    }
    if (r.state === 'Unpublishing') {
      const t0 = performance.now();
      const cur = await readRecordState(r.recordPath);
      if (cur.kind === 'file' && r.recordHash !== undefined && cur.hash === r.recordHash) {
        await removeRecord(recordDirOf(this.#d.directVolumeRoot, r.spec.targetPath));
      } else if (cur.kind !== 'absent') {
        this.#d.logger.warn(
          { recordPath: r.recordPath },
          "pod volume: the record there is not vmplug's; left untouched",
        );
      }
      r = podTransition(r, 'RecordRemoved', { ms: performance.now() - t0 });
      await this.#d.journal.save(r);
    }
    if (r.state === 'RecordRemoved') {
      const t0 = performance.now();
      if (r.exportName !== undefined && this.#d.storageDaemon !== undefined) {
        await this.#d.storageDaemon.stopExport({ name: r.exportName }, { timeoutMs: this.#backendTimeout() });
      }
      r = podTransition(r, 'BackendStopped', { ms: performance.now() - t0 });
      await this.#d.journal.save(r);
    }
    if (r.state === 'BackendStopped') {
      if (r.rollback) {
        r = podTransition(r, 'Failed');
        await this.#d.journal.save(r);
      } else {
        await this.#d.journal.remove(r.podUid, r.volumeId);
      }
      // The daemon is gone and the intent ended: its key goes (a retry of the publish brings it).
      if (r.exportName !== undefined) await this.#keys.remove(r.exportName);
    }
    return r;
  }

  async #view(r: PodRecord): Promise<PodVolume> {
    const onDisk = r.state === 'Published' ? await readRecordState(r.recordPath) : undefined;
    const sandboxId =
      r.state === 'Published'
        ? await consumerOf(recordDirOf(this.#d.directVolumeRoot, r.spec.targetPath))
        : undefined;
    return podVolumeView(r, { onDisk, sandboxId });
  }

  #backendTimeout(): number {
    return this.#d.backendTimeoutMs ?? DEFAULT_BACKEND_TIMEOUT_MS;
  }

  async #locked<T>(
    podUid: PodUid,
    volumeId: VolumeId,
    targetPath: string,
    signal: AbortSignal | undefined,
    fn: () => Promise<T>,
  ): Promise<T> {
    return this.#gate.run(`${podUid}/${volumeId}`, signal, async () => {
      const release = await this.#paths.acquire(targetPath, signal);
      try {
        return await fn();
      } finally {
        release();
      }
    });
  }
}

function exportRequest(r: PodRecord, source: RbdSource): ExportRequest {
  return {
    key: { name: r.exportName ?? '' },
    source,
    readOnly: r.spec.volume.readOnly,
    formatIfBlank: r.spec.fsType,
  };
}

function isLive(s: PodState): boolean {
  return s === 'Publishing' || s === 'BackendReady' || s === 'Published';
}

function isTearingDown(s: PodState): boolean {
  return s === 'Unpublishing' || s === 'RecordRemoved' || s === 'BackendStopped';
}

function stripRollback(r: PodRecord): PodRecord {
  const out = { ...r };
  delete out.rollback;
  return out;
}
