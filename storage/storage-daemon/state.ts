import { mkdir, readFile, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { writeFileAtomic } from '../../core/atomic-file.js';
import type { RbdSource } from '../volume-spec.js';
import { isExportName, VHOST_USER_BLK_MAJOR } from './naming.js';

// What the backend keeps on disk per storage daemon: enough to find the process again after a
// vmplugd restart (pid + start time: a recycled pid has another start time) and to tear the
// export down without vmplugd's memory. Never the cephx key: that lives only inside the daemon
// (a QMP secret object) and with the caller.

export type StoredRbdSource = Omit<RbdSource, 'key'>;

export interface DaemonState {
  readonly version: 1;
  readonly name: string;
  /** Null between reserving the export (minor taken) and the spawn. */
  readonly pid: number | null;
  /** /proc/<pid>/stat field 22 (clock ticks after boot). */
  readonly startTime: number | null;
  readonly minor: number;
  readonly qmpSocket: string;
  readonly socketPath: string;
  readonly devicePath: string;
  readonly source: StoredRbdSource;
  readonly readOnly: boolean;
  /** `serving` once the export and the device node exist. */
  readonly phase: 'starting' | 'serving';
  readonly sizeBytes: number | null;
}

export class StateParseError extends Error {
  override readonly name = 'StateParseError';
}

export function serializeState(s: DaemonState): string {
  const source: StoredRbdSource = {
    type: 'rbd',
    pool: s.source.pool,
    ...(s.source.namespace !== undefined ? { namespace: s.source.namespace } : {}),
    image: s.source.image,
    ...(s.source.snapshot !== undefined ? { snapshot: s.source.snapshot } : {}),
    monitors: s.source.monitors.map((m) => ({ host: m.host, port: m.port })),
    user: s.source.user,
  };
  // Rebuilt field by field: a Secret (or anything else) smuggled in by a caller never lands here.
  return `${JSON.stringify({ ...s, source }, null, 2)}\n`;
}

/** Strict: a state file vmplug did not write, or a torn one, is an error, never half-trusted. */
export function parseState(text: string): DaemonState {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new StateParseError('not JSON');
  }
  const o = obj(raw, '(state)');
  if (o.version !== 1) throw new StateParseError('version must be 1');
  const name = str(o.name, 'name');
  if (!isExportName(name)) throw new StateParseError('name is not an export name');
  const pid = o.pid === null ? null : posInt(o.pid, 'pid');
  const startTime = o.startTime === null ? null : nonNegInt(o.startTime, 'startTime');
  if ((pid === null) !== (startTime === null)) throw new StateParseError('pid and startTime go together');
  const minor = nonNegInt(o.minor, 'minor');
  if (minor > MAX_MINOR) throw new StateParseError('minor out of range');
  const phase = o.phase;
  if (phase !== 'starting' && phase !== 'serving') throw new StateParseError('phase');
  const readOnly = o.readOnly;
  if (typeof readOnly !== 'boolean') throw new StateParseError('readOnly must be a boolean');
  return {
    version: 1,
    name,
    pid,
    startTime,
    minor,
    qmpSocket: absPath(o.qmpSocket, 'qmpSocket'),
    socketPath: absPath(o.socketPath, 'socketPath'),
    devicePath: absPath(o.devicePath, 'devicePath'),
    source: parseSource(o.source),
    readOnly,
    phase,
    sizeBytes: o.sizeBytes === null ? null : nonNegInt(o.sizeBytes, 'sizeBytes'),
  };
}

/** Minors are 20 bits on Linux. */
export const MAX_MINOR = 2 ** 20 - 1;
export { VHOST_USER_BLK_MAJOR };

function parseSource(v: unknown): StoredRbdSource {
  const s = obj(v, 'source');
  if (s.type !== 'rbd') throw new StateParseError('source.type must be rbd');
  if (!Array.isArray(s.monitors) || s.monitors.length === 0) throw new StateParseError('source.monitors');
  if ('key' in s) throw new StateParseError('source must not hold a key');
  return {
    type: 'rbd',
    pool: str(s.pool, 'source.pool'),
    ...(s.namespace !== undefined ? { namespace: str(s.namespace, 'source.namespace') } : {}),
    image: str(s.image, 'source.image'),
    ...(s.snapshot !== undefined ? { snapshot: str(s.snapshot, 'source.snapshot') } : {}),
    monitors: s.monitors.map((m, i) => {
      const mo = obj(m, `source.monitors[${i}]`);
      const port = posInt(mo.port, `source.monitors[${i}].port`);
      if (port > 65535) throw new StateParseError(`source.monitors[${i}].port`);
      return { host: str(mo.host, `source.monitors[${i}].host`), port };
    }),
    user: str(s.user, 'source.user'),
  };
}

function obj(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new StateParseError(`${what} must be an object`);
  return v as Record<string, unknown>;
}

function str(v: unknown, what: string): string {
  if (typeof v !== 'string' || v.length === 0)
    throw new StateParseError(`${what} must be a non-empty string`);
  return v;
}

function absPath(v: unknown, what: string): string {
  const s = str(v, what);
  if (!s.startsWith('/') || s.includes('\0')) throw new StateParseError(`${what} must be an absolute path`);
  return s;
}

function nonNegInt(v: unknown, what: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
    throw new StateParseError(`${what} must be an integer >= 0`);
  return v;
}

function posInt(v: unknown, what: string): number {
  const n = nonNegInt(v, what);
  if (n === 0) throw new StateParseError(`${what} must be > 0`);
  return n;
}

/** Same image, same way: what decides whether an existing daemon serves a request. */
export function sameExport(
  a: { source: StoredRbdSource; readOnly: boolean },
  b: { source: StoredRbdSource; readOnly: boolean },
): boolean {
  const mon = (s: StoredRbdSource): string =>
    s.monitors
      .map((m) => `${m.host}:${m.port}`)
      .sort()
      .join(',');
  return (
    a.readOnly === b.readOnly &&
    a.source.pool === b.source.pool &&
    a.source.namespace === b.source.namespace &&
    a.source.image === b.source.image &&
    a.source.snapshot === b.source.snapshot &&
    a.source.user === b.source.user &&
    mon(a.source) === mon(b.source)
  );
}

/** Undefined when there is none; StateParseError when it is not ours or torn. */
export async function readState(path: string): Promise<DaemonState | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  return parseState(text);
}

/** Temp file, fsync, rename: a reader sees the old state or the new one, never half of one. */
export async function writeState(path: string, state: DaemonState): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  await writeFileAtomic(path, serializeState(state), { mode: 0o600 });
}

export async function removeFile(path: string): Promise<boolean> {
  try {
    await unlink(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}
