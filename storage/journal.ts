import { randomBytes } from 'node:crypto';
import { link, mkdir, open, readdir, readFile, rename, rmdir, stat, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import {
  type ATTACH_STATES,
  type DETACH_STATES,
  type TimelineEntry,
  VOLUME_STATES,
  type VolumeState,
} from '../api/index.js';
import {
  fsyncDir as fsyncDirOf,
  readSmallFile,
  unlinkDurable,
  writeFileAtomic,
} from '../core/atomic-file.js';
import { InvalidTransitionError, JournalCorruptError, JournalIoError } from '../core/errors.js';
import {
  isSandboxId,
  isVolumeId,
  parseSandboxId,
  parseVolumeId,
  type SandboxId,
  type VolumeId,
} from '../core/ids.js';
import { type FrontendBus, parseRootPortId, type VolumeNames, volumeNames } from './naming.js';
import { type Lane, MAX_SCSI_ID } from './qemu-args.js';
import {
  type Bus,
  type Monitor,
  type PodRef,
  parseCephName,
  parseCephUser,
  parseHostDevicePath,
  parseMonitor,
  parsePodRef,
  type StoredSpec,
} from './volume-spec.js';

// The attach journal: one JSON file per (sandbox, volume), written before each side effect so a
// crash at any point leaves a record of what may exist in QEMU. Layout:
//   <stateDir>/journal/<sandboxId>/<volumeId>.json        the record (0600)
//   <stateDir>/journal/<sandboxId>/.<volumeId>.json.*.tmp  a write in flight, or torn by a crash
//   <stateDir>/journal/<sandboxId>/.<volumeId>.json.corrupt-<ms>  a quarantined unreadable record
// Ids never start with ".", so hidden names never collide with records. A record never holds
// the cephx key: the spec is stored without it, plus the keyed fingerprint.

export type { VolumeState };
export type AttachState = (typeof ATTACH_STATES)[number];
export type DetachState = (typeof DETACH_STATES)[number];

/** Every state, attach ones first, in the order an operation goes through them (api/volumes.ts). */
export { VOLUME_STATES };

// Any attach state may turn into Detaching: that is both a detach request and the rollback of a
// failed or interrupted attach. Detaching may skip steps that never happened (no device yet: go
// to BlockdevDeleted; nothing created: Detached). DetachPending repeats while the guest holds on.
const TRANSITIONS: Readonly<Record<VolumeState, readonly VolumeState[]>> = {
  Pending: ['SecretAdded', 'BlockdevAdded', 'Detaching'],
  SecretAdded: ['BlockdevAdded', 'Detaching'],
  BlockdevAdded: ['DeviceAdded', 'Detaching'],
  DeviceAdded: ['Attached', 'Detaching'],
  Attached: ['Detaching'],
  Detaching: ['DetachPending', 'DeviceDeleted', 'BlockdevDeleted', 'Detached'],
  DetachPending: ['DetachPending', 'DeviceDeleted'],
  DeviceDeleted: ['BlockdevDeleted'],
  BlockdevDeleted: ['Detached'],
  Detached: [],
};

export function isAttachState(s: VolumeState): s is AttachState {
  return VOLUME_STATES.indexOf(s) < VOLUME_STATES.indexOf('Detaching');
}

export type SandboxKind = 'kata' | 'libvirt';

export type { TimelineEntry };

export interface RecordedError {
  code: string;
  message: string;
  at: string;
}

export interface JournalRecord {
  version: 1;
  sandboxId: SandboxId;
  volumeId: VolumeId;
  kind: SandboxKind;
  spec: StoredSpec;
  fingerprint: string;
  names: VolumeNames;
  /** The frontend in use ('auto' resolved). */
  bus: FrontendBus;
  /** Chosen before device_add; required from DeviceAdded on. */
  lane?: Lane;
  state: VolumeState;
  timeline: TimelineEntry[];
  lastError?: RecordedError;
  /** The Pod the attach request named (Events go there); absent in records written before it. */
  pod?: PodRef;
}

export const TIMELINE_MAX = 64;

export interface NewRecord {
  sandboxId: SandboxId;
  volumeId: VolumeId;
  kind: SandboxKind;
  spec: StoredSpec;
  fingerprint: string;
  bus: FrontendBus;
  lane?: Lane;
  pod?: PodRef;
}

export function newRecord(init: NewRecord, at: Date = new Date()): JournalRecord {
  const record: JournalRecord = {
    version: 1,
    sandboxId: init.sandboxId,
    volumeId: init.volumeId,
    kind: init.kind,
    spec: init.spec,
    fingerprint: init.fingerprint,
    names: volumeNames(init.sandboxId, init.volumeId),
    bus: init.bus,
    state: 'Pending',
    timeline: [{ step: 'Pending', at: at.toISOString(), ms: 0 }],
  };
  if (init.lane !== undefined) record.lane = init.lane;
  if (init.pod !== undefined) record.pod = { ...init.pod };
  return record;
}

export function canTransition(
  record: Pick<JournalRecord, 'state' | 'spec' | 'lane'> & { kind?: SandboxKind },
  to: VolumeState,
): boolean {
  if (!TRANSITIONS[record.state].includes(to)) return false;
  // rbd in QEMU adds its secret first; block mode has no secret step at all, nor has rbd through a
  // storage daemon (the key goes to the daemon; the guest's QEMU gets a chardev).
  const qemuRbd = record.spec.mode === 'rbd' && record.spec.backend !== 'storage-daemon';
  if (record.state === 'Pending' && to === 'BlockdevAdded' && qemuRbd) return false;
  if (to === 'SecretAdded' && !qemuRbd) return false;
  // libvirt picks the slot of a domain's disk itself: its records carry no lane.
  if (to === 'DeviceAdded' && record.lane === undefined && record.kind !== 'libvirt') return false;
  return true;
}

export interface TransitionOptions {
  at?: Date;
  ms?: number;
  /** Recorded as lastError (a rollback's reason, a pending detach's cause). */
  error?: { code: string; message: string };
  /** The lane chosen for device_add, set together with the step that needs it. */
  lane?: Lane;
}

/** The record after one step; the input is left untouched. Throws on a step the model forbids. */
export function transition(
  record: JournalRecord,
  to: VolumeState,
  opts: TransitionOptions = {},
): JournalRecord {
  const next: JournalRecord = { ...record, timeline: [...record.timeline] };
  if (opts.lane !== undefined) next.lane = opts.lane;
  if (!canTransition(next, to)) throw new InvalidTransitionError(record.state, to);
  const at = (opts.at ?? new Date()).toISOString();
  next.state = to;
  next.timeline.push({ step: to, at, ms: Math.max(0, Math.round(opts.ms ?? 0)) });
  if (next.timeline.length > TIMELINE_MAX) next.timeline.splice(0, next.timeline.length - TIMELINE_MAX);
  if (opts.error !== undefined) next.lastError = { ...opts.error, at };
  return next;
}

/** pino-compatible subset. */
export interface JournalLogger {
  warn(obj: Record<string, unknown>, msg: string): void;
  error(obj: Record<string, unknown>, msg: string): void;
}

export interface IoOptions {
  signal?: AbortSignal;
}

export interface QuarantinedRecord {
  sandboxId: SandboxId;
  volumeId: VolumeId;
  path: string;
}

const MAX_RECORD_BYTES = 1 << 20;

export type JournalWriteHook = (record: JournalRecord, phase: 'before' | 'after') => void;

export class Journal {
  readonly root: string;
  readonly #logger: JournalLogger;
  readonly #onWrite: JournalWriteHook | undefined;
  /**
   * Sandbox directories this journal made or found (durable): a save there needs no mkdir, which
   * cost about as much of vmplugd's CPU as the write itself in the concurrency profile.
   */
  readonly #dirs = new Set<string>();
  /**
   * Writes and removals started by saveBehind()/removeBehind() and not yet durable, by record
   * path. Every later save, load, list and removal of the path waits for them, so a reader never
   * sees the record older than what its operation answered, and writes of one path stay in order.
   */
  readonly #behind = new Map<string, Promise<void>>();
  /**
   * The records of each sandbox directory this process has looked at, by volume id: read from the
   * directory once, then kept by this journal's own writes, removals and quarantines. A load of a
   * record the index does not hold answers "none" without touching the disk: in a burst of fresh
   * attaches that read waited 10-35 ms in libuv's pool behind other attaches' fsyncs. Only
   * vmplugd writes its journal (one process, its own 0700 directory); a record placed behind its
   * back is seen by list(), which reads the directory again, or after a restart. The index may
   * hold a record that is gone (the directory read raced a removal): that load reads the disk.
   */
  readonly #index = new Map<string, { volumes: Set<string>; ready: Promise<void> }>();

  /**
   * `onWrite` runs just before each record write starts and just after it is durable, and for a
   * state passed unwritten (passed()): the daemon's crash tests hang their failpoints there (die
   * between a side effect and the write that records it, or between the write and the next side
   * effect).
   */
  constructor(opts: { stateDir: string; logger: JournalLogger; onWrite?: JournalWriteHook }) {
    this.root = join(opts.stateDir, 'journal');
    this.#logger = opts.logger;
    this.#onWrite = opts.onWrite;
  }

  pathOf(sandboxId: SandboxId, volumeId: VolumeId): string {
    return join(this.root, sandboxId, `${volumeId}.json`);
  }

  /** Atomically replaces the record: temp file, fsync, rename, fsync of the directory. */
  async save(record: JournalRecord, opts: IoOptions = {}): Promise<void> {
    await this.#settledPath(this.pathOf(record.sandboxId, record.volumeId));
    await this.#write(record, opts);
  }

  /**
   * save() without waiting: for an operation's last write, whose answer need not wait for the
   * fsyncs because the record already on disk (an earlier state of the same operation) leads to
   * the same end after a crash: reconcile and a retried request finish an attach whose device
   * QEMU holds, and finish a teardown. Reads and writes of the record wait for it (see #behind);
   * a failed write is logged, and the record on disk, in its earlier state, is completed by the
   * volume's next operation or by reconcile.
   */
  saveBehind(record: JournalRecord): void {
    this.#behindOf(record.sandboxId, record.volumeId, 'write', () => this.#write(record));
  }

  /** remove() without waiting, for a detach's last step; as saveBehind(). */
  removeBehind(sandboxId: SandboxId, volumeId: VolumeId): void {
    this.#behindOf(sandboxId, volumeId, 'remove', async () => {
      await this.#remove(sandboxId, volumeId);
    });
  }

  /** Resolves when every write and removal started behind so far is durable (or has failed). */
  async settled(): Promise<void> {
    while (this.#behind.size > 0) await Promise.all([...this.#behind.values()]);
  }

  #behindOf(sandboxId: SandboxId, volumeId: VolumeId, what: string, fn: () => Promise<void>): void {
    const path = this.pathOf(sandboxId, volumeId);
    // After the one before it, which came after its own predecessor: the chain keeps the order.
    const done = (this.#behind.get(path) ?? Promise.resolve())
      .then(fn)
      .catch((err: unknown) => {
        this.#logger.error(
          {
            sandboxId,
            volumeId,
            path,
            error: (err as Error).message,
            decision:
              'the record on disk stays in its earlier state; the next operation or reconcile completes it',
          },
          `journal: a ${what} after the answer failed`,
        );
      })
      .finally(() => {
        if (this.#behind.get(path) === done) this.#behind.delete(path);
      });
    this.#behind.set(path, done);
  }

  /** Waits for the write or removal of `path` started behind, if any. */
  async #settledPath(path: string): Promise<void> {
    for (let p = this.#behind.get(path); p !== undefined; p = this.#behind.get(path)) await p;
  }

  /** Waits for every write or removal started behind under `sandboxId` (all when undefined). */
  async #settledUnder(sandboxId: SandboxId | undefined): Promise<void> {
    const prefix = sandboxId === undefined ? this.root : join(this.root, sandboxId);
    for (;;) {
      const waiting = [...this.#behind].filter(([path]) => path.startsWith(`${prefix}/`));
      if (waiting.length === 0) return;
      await Promise.all(waiting.map(([, p]) => p));
    }
  }

  async #write(record: JournalRecord, opts: IoOptions = {}): Promise<void> {
    const data = `${JSON.stringify(record, null, 2)}\n`;
    // Never write what load() would reject: a bug must fail here, not after a crash.
    parseRecord(JSON.parse(data), record.sandboxId, record.volumeId, 'save');
    this.#onWrite?.(record, 'before');
    const dir = join(this.root, record.sandboxId);
    opts.signal?.throwIfAborted();
    const write = () =>
      writeFileAtomic(join(dir, `${record.volumeId}.json`), data, {
        mode: 0o600,
        signal: opts.signal,
        step: io,
      });
    if (!this.#dirs.has(dir)) await this.#ensureDir(dir);
    try {
      await write();
    } catch (err) {
      // The directory went behind the journal's back (an operator, a test): made again, once.
      if (!(err instanceof JournalIoError && errno(err.cause) === 'ENOENT')) throw err;
      this.#dirs.delete(dir);
      await this.#ensureDir(dir);
      await write();
    }
    this.#index.get(dir)?.volumes.add(record.volumeId);
    this.#onWrite?.(record, 'after');
  }

  /**
   * A state the steps pass without writing it (the record on disk, in an earlier state of the same
   * operation, already covers what QEMU may hold, and every step looks at QEMU before acting): only
   * the write hook runs, so the crash tests still kill exactly at that step boundary.
   */
  passed(record: JournalRecord): void {
    this.#onWrite?.(record, 'before');
    this.#onWrite?.(record, 'after');
  }

  /**
   * The record, or undefined when there is none. An unreadable record is quarantined (renamed
   * aside, kept for forensics and for reconcile, which can still derive its QEMU names from the
   * ids) and logged with that decision, and then reads as absent: a record that cannot be parsed
   * cannot be acted on safely, and one bad file must not stop the daemon.
   */
  async load(
    sandboxId: SandboxId,
    volumeId: VolumeId,
    opts: IoOptions = {},
  ): Promise<JournalRecord | undefined> {
    const path = this.pathOf(sandboxId, volumeId);
    await this.#settledPath(path);
    const index = this.#indexOf(dirname(path));
    await index.ready;
    if (!index.volumes.has(volumeId)) return undefined;
    let text: string;
    try {
      // One trip through libuv's pool with the native addon (a fresh attach's is an ENOENT).
      text = (await readSmallFile(path, MAX_RECORD_BYTES, opts.signal)).toString('utf8');
    } catch (err) {
      const code = errno(err);
      if (code === 'ENOENT') return undefined;
      if (isAbort(err)) throw err;
      if (code === 'EISDIR' || code === 'EINVAL')
        return await this.#quarantine(path, sandboxId, volumeId, 'not a regular file');
      if (code === 'EFBIG')
        return await this.#quarantine(path, sandboxId, volumeId, `larger than ${MAX_RECORD_BYTES} bytes`);
      throw new JournalIoError('read', path, err);
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      return await this.#quarantine(path, sandboxId, volumeId, 'not valid JSON');
    }
    try {
      return parseRecord(json, sandboxId, volumeId, path);
    } catch (err) {
      return await this.#quarantine(path, sandboxId, volumeId, (err as Error).message);
    }
  }

  /** Every readable record, of one sandbox or all, sorted by sandbox then volume. */
  async list(sandboxId?: SandboxId, opts: IoOptions = {}): Promise<JournalRecord[]> {
    await this.#settledUnder(sandboxId);
    const sandboxes = sandboxId !== undefined ? [sandboxId] : await this.sandboxIds();
    const out: JournalRecord[] = [];
    for (const sb of sandboxes) {
      const dir = join(this.root, sb);
      for (const name of (await readNames(dir)).sort()) {
        opts.signal?.throwIfAborted();
        if (name.startsWith('.')) continue;
        const volumeId = name.endsWith('.json') ? name.slice(0, -'.json'.length) : undefined;
        if (volumeId === undefined || !isVolumeId(volumeId)) {
          this.#logger.warn({ path: join(dir, name), decision: 'ignored' }, 'journal: foreign file ignored');
          continue;
        }
        // Read from the directory just now: known to the index even if placed behind its back.
        const index = this.#indexOf(dir);
        await index.ready;
        index.volumes.add(volumeId);
        const record = await this.load(sb, volumeId, opts);
        if (record !== undefined) out.push(record);
      }
    }
    return out;
  }

  /** Sandboxes with a journal directory (possibly empty). */
  async sandboxIds(): Promise<SandboxId[]> {
    const out: SandboxId[] = [];
    for (const name of (await readNames(this.root)).sort()) {
      if (isSandboxId(name)) out.push(name);
      else
        this.#logger.warn(
          { path: join(this.root, name), decision: 'ignored' },
          'journal: foreign entry ignored',
        );
    }
    return out;
  }

  /** Records set aside by load() as unreadable; their objects in QEMU are still vmplug's. */
  async quarantined(sandboxId?: SandboxId): Promise<QuarantinedRecord[]> {
    const sandboxes = sandboxId !== undefined ? [sandboxId] : await this.sandboxIds();
    const out: QuarantinedRecord[] = [];
    for (const sb of sandboxes) {
      for (const name of (await readNames(join(this.root, sb))).sort()) {
        const m = /^\.(.+)\.json\.corrupt-[0-9]+$/.exec(name);
        if (m?.[1] !== undefined && isVolumeId(m[1])) {
          out.push({ sandboxId: sb, volumeId: m[1], path: join(this.root, sb, name) });
        }
      }
    }
    return out;
  }

  /** Deletes the record (unlink + fsync of the directory). False when there was none. */
  async remove(sandboxId: SandboxId, volumeId: VolumeId, opts: IoOptions = {}): Promise<boolean> {
    opts.signal?.throwIfAborted();
    await this.#settledPath(this.pathOf(sandboxId, volumeId));
    return await this.#remove(sandboxId, volumeId);
  }

  async #remove(sandboxId: SandboxId, volumeId: VolumeId): Promise<boolean> {
    const path = this.pathOf(sandboxId, volumeId);
    const removed = await io('unlink', path, () => unlinkDurable(path));
    this.#index.get(dirname(path))?.volumes.delete(volumeId);
    return removed;
  }

  /**
   * The index of `dir` (see #index), its directory read started on first use. Only ever added to
   * by that read: a record removed meanwhile may stay listed, which costs a read, never a miss.
   */
  #indexOf(dir: string): { volumes: Set<string>; ready: Promise<void> } {
    const known = this.#index.get(dir);
    if (known !== undefined) return known;
    const volumes = new Set<string>();
    const ready = readNames(dir).then((names) => {
      for (const name of names) {
        const volumeId = name.endsWith('.json') ? name.slice(0, -'.json'.length) : undefined;
        if (volumeId !== undefined && !name.startsWith('.')) volumes.add(volumeId);
      }
    });
    const entry = { volumes, ready };
    this.#index.set(dir, entry);
    // A failed read is not kept: the next load reads the directory again.
    ready.catch(() => {
      if (this.#index.get(dir) === entry) this.#index.delete(dir);
    });
    return entry;
  }

  /**
   * Removes temp files left by writes that a crash interrupted. Only safe while no save() runs
   * (at start-up, before serving), or with `olderThanMs` well above any write's duration.
   */
  async sweepTemp(opts: IoOptions & { olderThanMs?: number } = {}): Promise<number> {
    let removed = 0;
    const cutoff = Date.now() - (opts.olderThanMs ?? 0);
    for (const sb of await this.sandboxIds()) {
      const dir = join(this.root, sb);
      for (const name of await readNames(dir)) {
        opts.signal?.throwIfAborted();
        if (!(name.startsWith('.') && name.endsWith('.tmp'))) continue;
        const path = join(dir, name);
        try {
          if ((await stat(path)).mtimeMs > cutoff) continue;
          await unlink(path);
          removed++;
          this.#logger.warn(
            { path, decision: 'removed' },
            'journal: removed a temp file left by an interrupted write',
          );
        } catch (err) {
          if (errno(err) !== 'ENOENT') throw new JournalIoError('sweep', path, err);
        }
      }
      if (removed > 0) await fsyncDir(dir);
    }
    return removed;
  }

  /** Drops an empty sandbox directory (the sandbox is gone and all its records removed). */
  async pruneSandbox(sandboxId: SandboxId): Promise<boolean> {
    await this.#settledUnder(sandboxId);
    const dir = join(this.root, sandboxId);
    this.#dirs.delete(dir);
    this.#index.delete(dir);
    try {
      await rmdir(dir);
    } catch (err) {
      const code = errno(err);
      if (code === 'ENOENT' || code === 'ENOTEMPTY' || code === 'EEXIST') return false;
      throw new JournalIoError('rmdir', dir, err);
    }
    await fsyncDir(this.root);
    return true;
  }

  async #ensureDir(dir: string): Promise<void> {
    const created = await io('mkdir', dir, () => mkdir(dir, { recursive: true, mode: 0o700 }));
    if (created !== undefined) {
      // Make every new directory entry durable, from the first one created up.
      for (let d = dir; ; d = dirname(d)) {
        await fsyncDir(dirname(d));
        if (d === created || dirname(d) === d) break;
      }
    }
    this.#dirs.add(dir);
  }

  async #quarantine(
    path: string,
    sandboxId: SandboxId,
    volumeId: VolumeId,
    reason: string,
  ): Promise<undefined> {
    const aside = join(dirname(path), `.${volumeId}.json.corrupt-${Date.now()}`);
    try {
      await rename(path, aside);
      await fsyncDir(dirname(path));
    } catch (err) {
      if (errno(err) !== 'ENOENT') throw new JournalIoError('quarantine', path, err);
    }
    this.#index.get(dirname(path))?.volumes.delete(volumeId);
    this.#logger.error(
      { sandboxId, volumeId, path, quarantinedAs: aside, reason, decision: 'quarantined; treated as absent' },
      'journal: corrupt record set aside',
    );
    return undefined;
  }
}

/**
 * The per-node key of specFingerprint(): 32 random bytes in <stateDir>/fingerprint.key (0600),
 * created once. Concurrent first calls agree on one key (link() does not replace).
 */
export async function loadFingerprintKey(stateDir: string, opts: IoOptions = {}): Promise<Buffer> {
  const path = join(stateDir, 'fingerprint.key');
  for (let attempt = 0; attempt < 2; attempt++) {
    opts.signal?.throwIfAborted();
    try {
      const key = await readFile(path);
      if (key.length !== 32) throw new JournalCorruptError(path, `holds ${key.length} bytes, expected 32`);
      return key;
    } catch (err) {
      if (errno(err) !== 'ENOENT') {
        if (err instanceof JournalCorruptError) throw err;
        throw new JournalIoError('read', path, err);
      }
    }
    await io('mkdir', stateDir, () => mkdir(stateDir, { recursive: true, mode: 0o700 }));
    const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
    try {
      const fh = await io('create', tmp, () => open(tmp, 'wx', 0o600));
      try {
        await fh.writeFile(randomBytes(32));
        await fh.sync();
      } finally {
        await fh.close();
      }
      try {
        await link(tmp, path);
        await fsyncDir(stateDir);
      } catch (err) {
        if (errno(err) !== 'EEXIST') throw new JournalIoError('link', path, err);
      }
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
  }
  throw new JournalIoError('create', path, new Error('key vanished while being created'));
}

function fsyncDir(dir: string): Promise<void> {
  return fsyncDirOf(dir, io);
}

/** The names in a journal directory; none when it does not exist (yet). */
export async function readNames(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if (errno(err) === 'ENOENT') return [];
    throw new JournalIoError('readdir', dir, err);
  }
}

async function io<T>(operation: string, path: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (isAbort(err) || err instanceof JournalIoError) throw err;
    throw new JournalIoError(operation, path, err);
  }
}

function errno(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

function isAbort(err: unknown): boolean {
  return (err as { name?: unknown } | null)?.name === 'AbortError';
}

// ---- strict reading of a stored record ----

/** A stored record, checked field by field; throws JournalCorruptError naming what is wrong. */
export function parseRecord(
  json: unknown,
  sandboxId: SandboxId,
  volumeId: VolumeId,
  path: string,
): JournalRecord {
  const bad = (why: string): never => {
    throw new JournalCorruptError(path, why);
  };
  const o = obj(json) ?? bad('not an object');
  if (o.version !== 1) bad(`unknown version ${String(o.version)}`);
  const sb = guard(() => parseSandboxId(o.sandboxId), bad);
  const vol = guard(() => parseVolumeId(o.volumeId), bad);
  if (sb !== sandboxId || vol !== volumeId) bad('ids do not match the file name');
  if (o.kind !== 'kata' && o.kind !== 'libvirt') bad('bad kind');
  const spec = guard(() => parseStoredSpec(o.spec), bad);
  if (typeof o.fingerprint !== 'string' || !/^v1:[0-9a-f]{64}$/.test(o.fingerprint)) bad('bad fingerprint');
  const names = volumeNames(sb, vol);
  const n = obj(o.names) ?? bad('bad names');
  for (const k of Object.keys(names) as (keyof VolumeNames)[]) {
    if (n[k] !== names[k]) bad(`names.${k} does not match the ids`);
  }
  if (o.bus !== 'scsi' && o.bus !== 'virtio-blk') bad('bad bus');
  const bus = o.bus as FrontendBus;
  let lane: Lane | undefined;
  if (o.lane !== undefined) lane = parseLane(o.lane, bus) ?? bad('bad lane');
  if (typeof o.state !== 'string' || !VOLUME_STATES.includes(o.state as VolumeState)) bad('bad state');
  const state = o.state as VolumeState;
  if (!Array.isArray(o.timeline) || o.timeline.length === 0 || o.timeline.length > TIMELINE_MAX)
    bad('bad timeline');
  const timeline = (o.timeline as unknown[]).map((e) => parseTimelineEntry(e) ?? bad('bad timeline entry'));
  const record: JournalRecord = {
    version: 1,
    sandboxId: sb,
    volumeId: vol,
    kind: o.kind as SandboxKind,
    spec,
    fingerprint: o.fingerprint as string,
    names,
    bus,
    state,
    timeline,
  };
  if (lane !== undefined) record.lane = lane;
  if (o.lastError !== undefined) {
    const e = obj(o.lastError);
    if (!e || typeof e.code !== 'string' || typeof e.message !== 'string' || typeof e.at !== 'string') {
      bad('bad lastError');
    }
    record.lastError = { code: e?.code as string, message: e?.message as string, at: e?.at as string };
  }
  if (o.pod !== undefined) record.pod = guard(() => parsePodRef(o.pod), bad);
  return record;
}

export function parseStoredSpec(v: unknown): StoredSpec {
  const o = obj(v);
  if (!o) throw new Error('spec is not an object');
  const readOnly = o.readOnly;
  const bus = o.bus;
  if (typeof readOnly !== 'boolean') throw new Error('bad spec.readOnly');
  if (bus !== 'auto' && bus !== 'scsi' && bus !== 'virtio-blk') throw new Error('bad spec.bus');
  const s = obj(o.source);
  if (!s) throw new Error('bad spec.source');
  if ('key' in s) throw new Error('spec.source holds a key');
  if (o.mode === 'block' && s.type === 'hostDevice') {
    return {
      mode: 'block',
      source: { type: 'hostDevice', path: parseHostDevicePath(s.path, 'spec.source.path') },
      readOnly,
      bus: bus as Bus,
    };
  }
  if (o.mode !== 'rbd' || s.type !== 'rbd') throw new Error('bad spec.mode/source.type');
  if (!Array.isArray(s.monitors) || s.monitors.length === 0) throw new Error('bad spec.source.monitors');
  const monitors: Monitor[] = s.monitors.map((m: unknown, i) => {
    const mo = obj(m);
    if (!mo || typeof mo.host !== 'string' || typeof mo.port !== 'number') throw new Error('bad monitor');
    const host = mo.host.includes(':') ? `[${mo.host}]` : mo.host;
    return parseMonitor(`${host}:${mo.port}`, `spec.source.monitors[${i}]`);
  });
  const source: Extract<StoredSpec, { mode: 'rbd' }>['source'] = {
    type: 'rbd',
    pool: parseCephName(s.pool, 'spec.source.pool'),
    image: parseCephName(s.image, 'spec.source.image'),
    monitors,
    user: parseCephUser(s.user, 'spec.source.user'),
  };
  if (s.namespace !== undefined) source.namespace = parseCephName(s.namespace, 'spec.source.namespace');
  if (s.snapshot !== undefined) source.snapshot = parseCephName(s.snapshot, 'spec.source.snapshot');
  const backend = o.backend;
  if (backend !== undefined && backend !== 'qemu' && backend !== 'storage-daemon')
    throw new Error('bad spec.backend');
  return { mode: 'rbd', source, readOnly, bus: bus as Bus, ...(backend === undefined ? {} : { backend }) };
}

function parseLane(v: unknown, bus: FrontendBus): Lane | undefined {
  const o = obj(v);
  if (!o || o.bus !== bus) return undefined;
  if (o.bus === 'scsi') {
    const id = o.scsiId;
    return typeof id === 'number' && Number.isInteger(id) && id >= 0 && id <= MAX_SCSI_ID
      ? { bus: 'scsi', scsiId: id }
      : undefined;
  }
  return typeof o.port === 'string' && parseRootPortId(o.port) !== undefined
    ? { bus: 'virtio-blk', port: o.port }
    : undefined;
}

function parseTimelineEntry(v: unknown): TimelineEntry | undefined {
  const o = obj(v);
  if (!o || !VOLUME_STATES.includes(o.step as VolumeState)) return undefined;
  if (typeof o.at !== 'string' || Number.isNaN(Date.parse(o.at))) return undefined;
  if (typeof o.ms !== 'number' || !Number.isFinite(o.ms) || o.ms < 0) return undefined;
  return { step: o.step as VolumeState, at: o.at, ms: o.ms };
}

function obj(v: unknown): Record<string, unknown> | undefined {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
    ? (v as Record<string, unknown>)
    : undefined;
}

function guard<T>(fn: () => T, bad: (why: string) => never): T {
  try {
    return fn();
  } catch (err) {
    return bad((err as Error).message);
  }
}
