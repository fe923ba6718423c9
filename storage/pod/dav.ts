import { createHash } from 'node:crypto';
import { lstat, readdir, readFile, rmdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir, isAtomicTempName, unlinkDurable, writeFileAtomic } from '../../core/atomic-file.js';

// Kata's direct-assigned volume record (DAV; Kata's src/runtime/pkg/direct-volume): the hand-off a
// Kata pod's runtime reads at CreateContainer for each bind mount's source. Layout, exactly as
// Kata writes and reads it:
//   <root>/<enc(targetPath)>/mountInfo.json   0600, in a 0700 directory
//   <root>/<enc(targetPath)>/<sandboxId>      empty, dropped by Kata when it plugs the volume
// enc is Go's base64.URLEncoding: the URL-safe alphabet WITH "=" padding (Node's 'base64url'
// drops the padding, so it is built from plain base64).

export const DEFAULT_KATA_DIRECT_VOLUME_ROOT = '/run/kata-containers/shared/direct-volumes';
export const MOUNT_INFO_FILE = 'mountInfo.json';

/** Go's base64.URLEncoding.EncodeToString([]byte(path)). */
export function encodeVolumePath(path: string): string {
  return Buffer.from(path, 'utf8').toString('base64').replaceAll('+', '-').replaceAll('/', '_');
}

/** The inverse (for reading records back); undefined when `name` is not such an encoding. */
export function decodeVolumePath(name: string): string | undefined {
  if (!/^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2}==|[A-Za-z0-9_-]{3}=)?$/.test(name) || name === '') {
    return undefined;
  }
  const path = Buffer.from(name.replaceAll('-', '+').replaceAll('_', '/'), 'base64').toString('utf8');
  return encodeVolumePath(path) === name ? path : undefined;
}

export function recordDirOf(root: string, targetPath: string): string {
  return join(root, encodeVolumePath(targetPath));
}

export function recordPathOf(root: string, targetPath: string): string {
  return join(recordDirOf(root, targetPath), MOUNT_INFO_FILE);
}

/** Kata's MountInfo (direct-volume), field names as its JSON tags spell them. */
export interface MountInfo {
  'volume-type': 'directvol';
  device: string;
  fstype: string;
  metadata: Record<string, string>;
  options: string[];
}

/**
 * The record's exact bytes: the keys in Kata's struct order, `metadata` an empty object (never a
 * secret: Kata logs and copies these records), no trailing newline (as json.Marshal writes it).
 */
export function mountInfoJson(init: { device: string; fstype: string; options: readonly string[] }): string {
  const info: MountInfo = {
    'volume-type': 'directvol',
    device: init.device,
    fstype: init.fstype,
    metadata: {},
    options: [...init.options],
  };
  return JSON.stringify(info);
}

/** Reads a record as Kata's json.Unmarshal would (the fields it knows); undefined when malformed. */
export function parseMountInfo(text: string): MountInfo | undefined {
  let o: unknown;
  try {
    o = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof o !== 'object' || o === null || Array.isArray(o)) return undefined;
  const r = o as Record<string, unknown>;
  const metadata = r.metadata ?? {};
  const options = r.options ?? [];
  if (typeof r['volume-type'] !== 'string' || typeof r.device !== 'string' || typeof r.fstype !== 'string')
    return undefined;
  if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata)) return undefined;
  if (!Array.isArray(options) || !options.every((x) => typeof x === 'string')) return undefined;
  return {
    'volume-type': r['volume-type'] as 'directvol',
    device: r.device,
    fstype: r.fstype,
    metadata: metadata as Record<string, string>,
    options: options as string[],
  };
}

export function contentHash(text: string): string {
  return `sha256:${createHash('sha256').update(text).digest('hex')}`;
}

/** What is at a record path now: nothing, or a file with its content hash. */
export type RecordOnDisk = { kind: 'absent' } | { kind: 'file'; hash: string } | { kind: 'other' };

export async function readRecordState(recordPath: string): Promise<RecordOnDisk> {
  try {
    const st = await lstat(recordPath);
    if (!st.isFile() || st.size > 64 * 1024) return { kind: 'other' };
    return { kind: 'file', hash: contentHash(await readFile(recordPath, 'utf8')) };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR')
      return { kind: 'absent' };
    throw err;
  }
}

/** Writes the record atomically: directory 0700, file 0600, as Kata's own `direct-volume add`. */
export async function writeRecord(recordPath: string, text: string, signal?: AbortSignal): Promise<void> {
  await writeFileAtomic(recordPath, text, { mode: 0o600, dirMode: 0o700, ...(signal ? { signal } : {}) });
}

// Kata's sandbox ids (and vmplug's id rule): a file named so beside mountInfo.json is Kata's mark.
const SANDBOX_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/**
 * The sandbox that consumed the volume: Kata's GetSandboxIdForVolume takes the first entry of the
 * record's directory that is not mountInfo.json; vmplug's own temp files (hidden) are skipped.
 */
export async function consumerOf(recordDir: string): Promise<string | undefined> {
  let names: string[];
  try {
    names = await readdir(recordDir);
  } catch {
    return undefined;
  }
  return names
    .sort()
    .find((n) => n !== MOUNT_INFO_FILE && !n.startsWith('.') && SANDBOX_ID.test(n) && !n.includes('..'));
}

/**
 * Removes vmplug's record and, as Kata's `direct-volume delete` does, its directory with the
 * sandbox-id marks Kata left there. Anything else in the directory (not Kata's empty marks, not a
 * temp file of ours) keeps the directory. The caller has checked that the record is vmplug's.
 */
export async function removeRecord(recordDir: string): Promise<void> {
  await unlinkDurable(join(recordDir, MOUNT_INFO_FILE));
  let names: string[];
  try {
    names = await readdir(recordDir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  for (const n of names) {
    const p = join(recordDir, n);
    const st = await lstat(p).catch(() => undefined);
    if (st === undefined) continue;
    const kataMark = st.isFile() && st.size === 0 && SANDBOX_ID.test(n);
    if (kataMark || (st.isFile() && isAtomicTempName(n))) await unlink(p).catch(() => undefined);
  }
  try {
    await rmdir(recordDir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTEMPTY' || code === 'EEXIST') return;
    throw err;
  }
  await fsyncDir(join(recordDir, '..'));
}
