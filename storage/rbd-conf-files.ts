import { readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../core/atomic-file.js';
import type { VolumeNames } from './naming.js';
import { type RbdConfOptions, rbdConf } from './qemu-args.js';

// The per-attach Ceph config files QEMU's rbd driver reads (qemu-args.ts rbdConf explains why they
// exist). One file per attachment, named by the attachment's hash so reconcile can match files to
// journal records: <stateDir>/rbd/<hash>.conf. They hold no secret (mon_host and the key come over
// QMP), so QEMU may read them whatever user it runs as.

export function confDir(stateDir: string): string {
  return join(stateDir, 'rbd');
}

export function confPath(stateDir: string, names: Pick<VolumeNames, 'hash'>): string {
  return join(confDir(stateDir), `${names.hash}.conf`);
}

/**
 * Written whole (core/atomic-file.ts): QEMU never reads half a file. Not fsync'd: only the running
 * QEMU reads it, during the blockdev-add that follows, from the page cache a vmplugd crash leaves
 * intact; a power cut that could lose it takes that QEMU down too (and reconcile sweeps a conf no
 * record explains). The journal record, not this file, is what must survive.
 */
export async function writeConfFile(
  stateDir: string,
  names: Pick<VolumeNames, 'hash'>,
  opts: RbdConfOptions = {},
): Promise<string> {
  const path = confPath(stateDir, names);
  const write = (dirMode?: number) =>
    writeFileAtomic(path, rbdConf(opts), {
      mode: 0o644,
      ...(dirMode !== undefined ? { dirMode } : {}),
      tempPath: `${path}.tmp`,
      durable: false,
    });
  try {
    // The directory is there after the first rbd attach: no mkdir (a round trip through libuv's
    // pool) on every one.
    await write();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    await write(0o755);
  }
  return path;
}

/** False when there was none. */
export async function removeConfFile(stateDir: string, names: Pick<VolumeNames, 'hash'>): Promise<boolean> {
  try {
    await unlink(confPath(stateDir, names));
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/** Hashes of every conf file present (for reconcile's sweep of orphans). */
export async function listConfHashes(stateDir: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(confDir(stateDir));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  return names.flatMap((n) => {
    const m = /^([0-9a-f]{16})\.conf(\.tmp)?$/.exec(n);
    return m?.[1] !== undefined ? [m[1]] : [];
  });
}

/** Removes the file and a leftover temp of it; false when neither was there. */
export async function removeConfByHash(stateDir: string, hash: string): Promise<boolean> {
  let removed = false;
  for (const p of [confPath(stateDir, { hash }), `${confPath(stateDir, { hash })}.tmp`]) {
    try {
      await unlink(p);
      removed = true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  return removed;
}
