import { readFile, rename, rmdir, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import {
  FS_TYPES,
  type FsType,
  POD_STATES,
  type PodState,
  type PodVolumeTimelineEntry as PodTimelineEntry,
} from '../../api/index.js';
import { fsyncDir, isAtomicTempName, unlinkDurable, writeFileAtomic } from '../../core/atomic-file.js';
import { InvalidTransitionError, JournalCorruptError, JournalIoError } from '../../core/errors.js';
import { isPodUid, isVolumeId, type PodUid, parseVolumeId, type VolumeId } from '../../core/ids.js';
import { parseStoredSpec, readNames } from '../journal.js';
import { type PodRef, parsePodRef } from '../volume-spec.js';
import type { StoredPublishSpec } from './spec.js';

// The pod-volume journal: one record per (podUid, volumeId) under <stateDir>/pods/<podUid>/,
// written atomically BEFORE each side effect, so a crash anywhere leaves a record saying what may
// exist (a storage daemon, a Kata record). It also holds the ownership of the Kata record: its
// path and the hash of the content vmplug wrote; a record file with other content is not ours.
//
//   publish:   Publishing -> BackendReady -> Published
//   unpublish: Unpublishing -> RecordRemoved -> BackendStopped -> (journal record removed)
//   a failed publish is torn down the same way (rollback: true) and ends in Failed, which keeps
//   the problem for GET until the next PUT or a DELETE.

const TRANSITIONS: Readonly<Record<PodState, readonly PodState[]>> = {
  Publishing: ['BackendReady', 'Unpublishing'],
  BackendReady: ['Published', 'Unpublishing'],
  Published: ['Unpublishing'],
  Unpublishing: ['RecordRemoved'],
  RecordRemoved: ['BackendStopped'],
  BackendStopped: ['Failed'],
  Failed: ['Publishing', 'Unpublishing'],
};

export function canPodTransition(from: PodState, to: PodState): boolean {
  return TRANSITIONS[from].includes(to);
}

export interface PodRecord {
  version: 1;
  podUid: PodUid;
  volumeId: VolumeId;
  spec: StoredPublishSpec;
  fingerprint: string;
  pod?: PodRef;
  state: PodState;
  /** The Kata record (mountInfo.json) this publish writes. */
  recordPath: string;
  /** From BackendReady on: the device the record names and the hash of the record's content. */
  device?: string;
  recordHash?: string;
  /** rbd: the storage daemon's export name. */
  exportName?: string;
  /** A teardown of a failed publish: it ends in Failed, not in removal. */
  rollback?: boolean;
  timeline: PodTimelineEntry[];
  lastError?: { code: string; message: string; at: string };
}

const TIMELINE_MAX = 32;
const MAX_RECORD_BYTES = 256 * 1024;

export function newPodRecord(
  init: Pick<PodRecord, 'podUid' | 'volumeId' | 'spec' | 'fingerprint' | 'recordPath'> & {
    pod?: PodRef;
    exportName?: string;
  },
  at = new Date(),
): PodRecord {
  const r: PodRecord = {
    version: 1,
    podUid: init.podUid,
    volumeId: init.volumeId,
    spec: init.spec,
    fingerprint: init.fingerprint,
    state: 'Publishing',
    recordPath: init.recordPath,
    timeline: [{ step: 'Publishing', at: at.toISOString(), ms: 0 }],
  };
  if (init.pod !== undefined) r.pod = { ...init.pod };
  if (init.exportName !== undefined) r.exportName = init.exportName;
  return r;
}

export interface PodTransitionOptions {
  ms?: number;
  at?: Date;
  error?: { code: string; message: string };
  set?: Partial<Pick<PodRecord, 'device' | 'recordHash' | 'rollback'>>;
}

/** The record after one step (input untouched); throws on a step the model forbids. */
export function podTransition(record: PodRecord, to: PodState, opts: PodTransitionOptions = {}): PodRecord {
  if (!canPodTransition(record.state, to)) throw new InvalidTransitionError(record.state, to);
  const at = (opts.at ?? new Date()).toISOString();
  const next: PodRecord = { ...record, ...opts.set, state: to, timeline: [...record.timeline] };
  next.timeline.push({ step: to, at, ms: Math.max(0, Math.round(opts.ms ?? 0)) });
  if (next.timeline.length > TIMELINE_MAX) next.timeline.splice(0, next.timeline.length - TIMELINE_MAX);
  if (opts.error !== undefined) next.lastError = { ...opts.error, at };
  return next;
}

export type PodWriteHook = (record: { readonly state: string }, phase: 'before' | 'after') => void;

export interface PodJournalLogger {
  warn(obj: Record<string, unknown>, msg: string): void;
  error(obj: Record<string, unknown>, msg: string): void;
}

export class PodJournal {
  readonly root: string;
  readonly #logger: PodJournalLogger;
  readonly #onWrite: PodWriteHook | undefined;

  constructor(opts: { stateDir: string; logger: PodJournalLogger; onWrite?: PodWriteHook }) {
    this.root = join(opts.stateDir, 'pods');
    this.#logger = opts.logger;
    this.#onWrite = opts.onWrite;
  }

  pathOf(podUid: PodUid, volumeId: VolumeId): string {
    return join(this.root, podUid, `${volumeId}.json`);
  }

  async save(record: PodRecord, signal?: AbortSignal): Promise<void> {
    const data = `${JSON.stringify(record, null, 2)}\n`;
    // Never write what load() would reject.
    parsePodRecord(JSON.parse(data), record.podUid, record.volumeId, 'save');
    this.#onWrite?.(record, 'before');
    const path = this.pathOf(record.podUid, record.volumeId);
    try {
      await writeFileAtomic(path, data, { mode: 0o600, dirMode: 0o700, ...(signal ? { signal } : {}) });
    } catch (err) {
      if ((err as Error).name === 'AbortError') throw err;
      throw new JournalIoError('write', path, err);
    }
    this.#onWrite?.(record, 'after');
  }

  async load(podUid: PodUid, volumeId: VolumeId): Promise<PodRecord | undefined> {
    const path = this.pathOf(podUid, volumeId);
    let text: string;
    try {
      const st = await stat(path);
      if (!st.isFile() || st.size > MAX_RECORD_BYTES)
        return await this.#quarantine(path, 'not a small regular file');
      text = await readFile(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new JournalIoError('read', path, err);
    }
    try {
      return parsePodRecord(JSON.parse(text), podUid, volumeId, path);
    } catch (err) {
      return await this.#quarantine(path, (err as Error).message);
    }
  }

  async list(podUid?: PodUid): Promise<PodRecord[]> {
    const pods = podUid !== undefined ? [podUid] : (await readNames(this.root)).filter(isPodUid).sort();
    const out: PodRecord[] = [];
    for (const p of pods) {
      for (const n of (await readNames(join(this.root, p))).sort()) {
        if (n.startsWith('.') || !n.endsWith('.json')) continue;
        const v = n.slice(0, -'.json'.length);
        if (!isVolumeId(v)) continue;
        const r = await this.load(p, v);
        if (r !== undefined) out.push(r);
      }
    }
    return out;
  }

  /** Removes the record and, when it was the pod's last, the pod's directory. */
  async remove(podUid: PodUid, volumeId: VolumeId): Promise<void> {
    const path = this.pathOf(podUid, volumeId);
    try {
      await unlinkDurable(path);
    } catch (err) {
      throw new JournalIoError('unlink', path, err);
    }
    try {
      await rmdir(join(this.root, podUid));
      await fsyncDir(this.root);
    } catch {
      // not empty, or already gone
    }
  }

  /** Temp files of writes a crash cut short (start-up only, before anything is served). */
  async sweepTemp(): Promise<number> {
    let removed = 0;
    for (const p of (await readNames(this.root)).filter(isPodUid)) {
      for (const n of await readNames(join(this.root, p))) {
        if (!isAtomicTempName(n)) continue;
        await unlink(join(this.root, p, n)).catch(() => undefined);
        removed++;
      }
    }
    return removed;
  }

  async #quarantine(path: string, reason: string): Promise<undefined> {
    const aside = `${join(path, '..')}/.${path.split('/').pop()}.corrupt-${Date.now()}`;
    await rename(path, aside).catch(() => undefined);
    this.#logger.error({ path, quarantinedAs: aside, reason }, 'pod journal: corrupt record set aside');
    return undefined;
  }
}

export function parsePodRecord(json: unknown, podUid: PodUid, volumeId: VolumeId, path: string): PodRecord {
  const bad = (why: string): never => {
    throw new JournalCorruptError(path, why);
  };
  const o = obj(json) ?? bad('not an object');
  if (o.version !== 1) bad('unknown version');
  if (o.podUid !== podUid || o.volumeId !== volumeId) bad('ids do not match the file name');
  parseVolumeId(o.volumeId);
  const s = obj(o.spec) ?? bad('bad spec');
  let volume: ReturnType<typeof parseStoredSpec> | undefined;
  try {
    volume = parseStoredSpec(s.volume);
  } catch (err) {
    bad(`bad spec.volume: ${(err as Error).message}`);
  }
  if (typeof s.targetPath !== 'string' || !s.targetPath.startsWith('/')) bad('bad spec.targetPath');
  if (!(FS_TYPES as readonly unknown[]).includes(s.fsType)) bad('bad spec.fsType');
  if (!Array.isArray(s.mountOptions) || !s.mountOptions.every((x) => typeof x === 'string'))
    bad('bad spec.mountOptions');
  if (typeof o.fingerprint !== 'string' || !/^v1:[0-9a-f]{64}$/.test(o.fingerprint)) bad('bad fingerprint');
  if (!POD_STATES.includes(o.state as PodState)) bad('bad state');
  if (typeof o.recordPath !== 'string' || !o.recordPath.startsWith('/')) bad('bad recordPath');
  for (const k of ['device', 'recordHash', 'exportName'] as const) {
    if (o[k] !== undefined && typeof o[k] !== 'string') bad(`bad ${k}`);
  }
  if (o.rollback !== undefined && typeof o.rollback !== 'boolean') bad('bad rollback');
  if (!Array.isArray(o.timeline) || o.timeline.length === 0) bad('bad timeline');
  const timeline = (o.timeline as unknown[]).map((e) => {
    const t = obj(e);
    if (
      !t ||
      !POD_STATES.includes(t.step as PodState) ||
      typeof t.at !== 'string' ||
      typeof t.ms !== 'number'
    )
      return bad('bad timeline entry');
    return { step: t.step as PodState, at: t.at, ms: t.ms };
  });
  const r: PodRecord = {
    version: 1,
    podUid,
    volumeId,
    spec: {
      volume: volume as ReturnType<typeof parseStoredSpec>,
      targetPath: s.targetPath as string,
      fsType: s.fsType as FsType,
      mountOptions: [...(s.mountOptions as string[])],
    },
    fingerprint: o.fingerprint as string,
    state: o.state as PodState,
    recordPath: o.recordPath as string,
    timeline,
  };
  if (o.pod !== undefined) r.pod = parsePodRef(o.pod);
  if (typeof o.device === 'string') r.device = o.device;
  if (typeof o.recordHash === 'string') r.recordHash = o.recordHash;
  if (typeof o.exportName === 'string') r.exportName = o.exportName;
  if (o.rollback === true) r.rollback = true;
  if (o.lastError !== undefined) {
    const e = obj(o.lastError);
    if (!e || typeof e.code !== 'string' || typeof e.message !== 'string' || typeof e.at !== 'string')
      return bad('bad lastError');
    r.lastError = { code: e.code, message: e.message, at: e.at };
  }
  return r;
}

function obj(v: unknown): Record<string, unknown> | undefined {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
    ? (v as Record<string, unknown>)
    : undefined;
}
