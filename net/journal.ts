import { readdir, readFile, rmdir, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fsyncDir, writeFileAtomic } from '../core/atomic-file.js';
import { VmplugError } from '../core/errors.js';
import { isNicId, isSandboxId, type NicId, type SandboxId } from '../core/ids.js';
import { type NicNames, nicNames } from './naming.js';
import { type NicSpec, nicSpecFingerprint } from './spec.js';

// The NIC journal: one JSON file per (sandbox, nic), replaced atomically (temp file, fsync,
// rename, fsync of the directory) before each side effect, so after a crash reconcile knows what
// may exist on the host and in QEMU. Layout:
//   <stateDir>/nics/<sandboxId>/<nicId>.json            the record (0600)
//   <stateDir>/nics/<sandboxId>/.<nicId>.json.<rand>.tmp  a write in flight or torn by a crash
// Ids never start with ".", so temp files never look like records. Kept apart from storage's
// journal (<stateDir>/journal): net/ may not import storage/, and neither reads the other's files.

export type NicAttachState = 'Pending' | 'TapCreated' | 'NetdevAdded' | 'Attached';
export type NicDetachState = 'Detaching' | 'DeviceDeleted' | 'NetdevDeleted';
export type NicState = NicAttachState | NicDetachState;

const ATTACH_STATES: readonly NicState[] = ['Pending', 'TapCreated', 'NetdevAdded', 'Attached'];
const ALL_STATES: readonly NicState[] = [...ATTACH_STATES, 'Detaching', 'DeviceDeleted', 'NetdevDeleted'];

export function isNicAttachState(s: NicState): s is NicAttachState {
  return ATTACH_STATES.includes(s);
}

export interface NicTimelineEntry {
  step: NicState;
  at: string;
  ms: number;
}

export interface NicRecord {
  version: 1;
  sandboxId: SandboxId;
  nicId: NicId;
  spec: NicSpec;
  fingerprint: string;
  names: NicNames;
  /** The host tap QEMU opens: vmplug's own (bridge mode) or the operator's (existing). */
  tap: string;
  /** True when vmplug created the tap and so deletes it. */
  tapOwned: boolean;
  /** The vmplug root port the device sits on, once Attached. */
  port?: string;
  state: NicState;
  timeline: NicTimelineEntry[];
  lastError?: { code: string; message: string; at: string };
}

export const NIC_TIMELINE_MAX = 32;

export function newNicRecord(
  sandboxId: SandboxId,
  nicId: NicId,
  spec: NicSpec,
  at: Date = new Date(),
): NicRecord {
  const names = nicNames(sandboxId, nicId);
  const owned = spec.hostInterface.mode === 'bridge';
  return {
    version: 1,
    sandboxId,
    nicId,
    spec,
    fingerprint: nicSpecFingerprint(spec),
    names,
    tap: spec.hostInterface.mode === 'existing' ? spec.hostInterface.name : names.tap,
    tapOwned: owned,
    state: 'Pending',
    timeline: [{ step: 'Pending', at: at.toISOString(), ms: 0 }],
  };
}

/** The record one step on; `ms` is the time since the previous step. */
export function advance(
  r: NicRecord,
  to: NicState,
  extra: { port?: string; error?: { code: string; message: string } } = {},
  at: Date = new Date(),
): NicRecord {
  const last = r.timeline[r.timeline.length - 1];
  const ms = last ? Math.max(0, at.getTime() - Date.parse(last.at)) : 0;
  const next: NicRecord = {
    ...r,
    state: to,
    timeline: [...r.timeline, { step: to, at: at.toISOString(), ms }].slice(-NIC_TIMELINE_MAX),
  };
  if (extra.port !== undefined) next.port = extra.port;
  if (extra.error !== undefined) next.lastError = { ...extra.error, at: at.toISOString() };
  return next;
}

function check(cond: boolean, path: string, what: string): void {
  if (!cond) throw new VmplugError('JOURNAL_CORRUPT', `NIC record ${path}: ${what}`);
}

function parseRecord(raw: unknown, sandboxId: string, nicId: string, path: string): NicRecord {
  check(typeof raw === 'object' && raw !== null, path, 'not an object');
  const r = raw as Partial<NicRecord>;
  check(r.version === 1, path, 'unknown version');
  check(r.sandboxId === sandboxId && r.nicId === nicId, path, 'ids do not match the file name');
  check(typeof r.state === 'string' && ALL_STATES.includes(r.state as NicState), path, 'bad state');
  check(typeof r.spec === 'object' && r.spec !== null, path, 'no spec');
  check(typeof r.tap === 'string' && typeof r.tapOwned === 'boolean', path, 'no tap');
  check(Array.isArray(r.timeline), path, 'no timeline');
  // Names are recomputed, never trusted from the file: reconcile deletes by them.
  const names = nicNames(r.sandboxId as SandboxId, r.nicId as NicId);
  check(!r.tapOwned || r.tap === names.tap, path, 'owned tap is not vmplug-named');
  return { ...(r as NicRecord), names };
}

export class NicJournal {
  readonly root: string;

  constructor(stateDir: string) {
    this.root = join(stateDir, 'nics');
  }

  pathOf(sandboxId: SandboxId, nicId: NicId): string {
    return join(this.root, sandboxId, `${nicId}.json`);
  }

  async save(record: NicRecord): Promise<void> {
    const path = this.pathOf(record.sandboxId, record.nicId);
    try {
      await writeFileAtomic(path, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600, dirMode: 0o700 });
    } catch (err) {
      throw new VmplugError('JOURNAL_IO', `cannot write NIC record ${path}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  async load(sandboxId: SandboxId, nicId: NicId): Promise<NicRecord | undefined> {
    const path = this.pathOf(sandboxId, nicId);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new VmplugError('JOURNAL_IO', `cannot read NIC record ${path}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw new VmplugError('JOURNAL_CORRUPT', `NIC record ${path} is not JSON`, { cause: err });
    }
    return parseRecord(raw, sandboxId, nicId, path);
  }

  async remove(sandboxId: SandboxId, nicId: NicId): Promise<void> {
    const path = this.pathOf(sandboxId, nicId);
    try {
      await unlink(path);
      await fsyncDir(dirname(path));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw new VmplugError('JOURNAL_IO', `cannot remove NIC record ${path}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    // The sandbox directory goes with its last record (ENOTEMPTY: others remain).
    await rmdir(dirname(path)).catch(() => undefined);
  }

  async sandboxes(): Promise<SandboxId[]> {
    try {
      return (await readdir(this.root)).filter(isSandboxId);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw new VmplugError('JOURNAL_IO', `cannot list ${this.root}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  /** The records of one sandbox; temp files are skipped (a torn write is one that never happened). */
  async list(sandboxId: SandboxId): Promise<NicRecord[]> {
    let names: string[];
    try {
      names = await readdir(join(this.root, sandboxId));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw new VmplugError('JOURNAL_IO', `cannot list NIC records: ${(err as Error).message}`, {
        cause: err,
      });
    }
    const out: NicRecord[] = [];
    for (const n of names.sort()) {
      if (!n.endsWith('.json')) continue;
      const nicId = n.slice(0, -'.json'.length);
      if (!isNicId(nicId)) continue;
      const r = await this.load(sandboxId, nicId);
      if (r !== undefined) out.push(r);
    }
    return out;
  }
}
