import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { ValidationError } from '../../core/errors.js';
import type { ExportKey } from './types.js';

// Names and paths of one storage-daemon export. The export name is the file name Kata's runtime
// finds under its vhost-user store, and the directory of the daemon's own state; the objects
// inside a daemon have fixed ids because each daemon serves exactly one export.

/** `[a-z0-9-]`, starting with a letter or digit, at most 40 characters (types.ts ExportKey). */
const EXPORT_NAME = /^[a-z0-9][a-z0-9-]{0,39}$/;

/** Validates a name handed in by a caller; the field is named in the caller's spelling. */
export function exportKey(name: string, field = 'key.name'): ExportKey {
  if (!EXPORT_NAME.test(name)) {
    throw new ValidationError(field, 'must be 1-40 characters of [a-z0-9-], not starting with "-"');
  }
  return { name };
}

export function isExportName(name: string): boolean {
  return EXPORT_NAME.test(name);
}

/**
 * The stable export name of a (owner, volume) pair: `vmp-` and 16 hex digits of
 * sha256(owner NUL volume). Owner is whatever scopes the volume (a pod UID, a sandbox id).
 */
export function exportNameOf(owner: string, volumeId: string): ExportKey {
  const hash = createHash('sha256').update(`${owner}\0${volumeId}`).digest('hex').slice(0, 16);
  return { name: `vmp-${hash}` };
}

/** Ids of the objects inside one storage daemon (one export per daemon, so fixed). */
export const QSD_IDS = {
  secret: 'vmp-key',
  node: 'vmp-vol',
  export: 'vmp-exp',
  /** The temporary FUSE export formatIfBlank reads and formats through. */
  fuseExport: 'vmp-fmt',
} as const;

/** Kata's vhost-user block device nodes use this major (Kata's config.VhostUserBlkMajor). */
export const VHOST_USER_BLK_MAJOR = 241;

export interface ExportPaths {
  /** `<stateDir>/<name>`: everything of this daemon that is not in Kata's store. */
  dir: string;
  qmpSocket: string;
  stateFile: string;
  logFile: string;
  /** The per-export Ceph config (no secret in it). */
  confFile: string;
  /** The regular file a temporary FUSE export is mounted on while formatting. */
  fuseFile: string;
  /** `<store>/block/sockets/<name>` */
  socketPath: string;
  /** `<store>/block/devices/<name>` */
  devicePath: string;
}

export function storeSocketsDir(store: string): string {
  return join(store, 'block', 'sockets');
}

export function storeDevicesDir(store: string): string {
  return join(store, 'block', 'devices');
}

export function exportPaths(stateDir: string, store: string, key: ExportKey): ExportPaths {
  const dir = join(stateDir, key.name);
  return {
    dir,
    qmpSocket: join(dir, 'qmp.sock'),
    stateFile: join(dir, 'state.json'),
    logFile: join(dir, 'daemon.log'),
    confFile: join(dir, 'rbd.conf'),
    fuseFile: join(dir, 'format.img'),
    socketPath: join(storeSocketsDir(store), key.name),
    devicePath: join(storeDevicesDir(store), key.name),
  };
}

/** Linux caps unix socket paths at 107 bytes (108 with the NUL). */
export const MAX_UNIX_SOCKET_PATH_BYTES = 107;

/** The longest socket path a directory layout can produce (names are at most 40 characters). */
export function longestSocketPath(stateDir: string, store: string): number {
  const name = 'x'.repeat(40);
  const p = exportPaths(stateDir, store, { name });
  return Math.max(Buffer.byteLength(p.qmpSocket), Buffer.byteLength(p.socketPath));
}
