import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';
import { BackendError } from '../../core/errors.js';
import { blockExportAdd, type QmpExecutor } from '../../qmp/index.js';
import type { Budget } from './budget.js';
import { removeExport } from './monitor.js';
import { QSD_IDS } from './naming.js';

// Formatting a blank image on the host before anyone else sees it, without nbd or rbd kernel
// modules: the same storage daemon exports the opened image once more, over FUSE, onto a
// regular file (QEMU's fuse export mounts on a file, not a directory); blkid and mkfs then work
// on that file as on a disk image, and the FUSE export is deleted before the vhost-user export
// is made. Only root's vmplugd reads the file (allow-other off).

const run = promisify(execFile);

export type FsType = 'ext4' | 'xfs';

export type Probe = { kind: 'blank' } | { kind: 'signature'; type: string };

/**
 * blkid -p -o export: exit 0 with TYPE= (a filesystem, swap, RAID member...) or PTTYPE= (a
 * partition table); exit 2 when nothing was found; exit 8 when several signatures disagree,
 * which is not blank either. Anything else is an error: never format on a doubt.
 */
export function parseBlkid(exitCode: number, stdout: string): Probe {
  if (exitCode === 2) return { kind: 'blank' };
  if (exitCode === 8) return { kind: 'signature', type: 'ambivalent' };
  if (exitCode === 0) {
    const vars = new Map(
      stdout
        .split('\n')
        .map((l) => l.split('='))
        .filter((kv) => kv.length >= 2)
        .map(([k, ...v]) => [k as string, v.join('=')]),
    );
    const type =
      vars.get('TYPE') ?? (vars.has('PTTYPE') ? `partition table ${vars.get('PTTYPE')}` : undefined);
    if (type !== undefined) return { kind: 'signature', type };
  }
  throw new Error(`blkid exited ${exitCode} without a verdict`);
}

export function mkfsCommand(fs: FsType, file: string): [string, string[]] {
  // No discard: a regular file over FUSE, and a blank image has nothing to discard anyway.
  return fs === 'ext4'
    ? ['mkfs.ext4', ['-F', '-q', '-E', 'nodiscard', '--', file]]
    : ['mkfs.xfs', ['-f', '-q', '-K', '--', file]];
}

export async function probeFile(file: string, budget: Budget): Promise<Probe> {
  try {
    const { stdout } = await run('blkid', ['-p', '-o', 'export', '--', file], {
      timeout: budget.left(),
      signal: budget.signal,
    });
    return parseBlkid(0, stdout);
  } catch (err) {
    const e = err as { code?: unknown; stdout?: string };
    if (typeof e.code === 'number') return parseBlkid(e.code, e.stdout ?? '');
    throw err;
  }
}

/**
 * Formats the image behind the daemon's node with `fs` when it holds no signature. Returns true
 * when it formatted. The FUSE export is always deleted before returning.
 */
export async function formatIfBlank(
  qmp: QmpExecutor,
  fuseFile: string,
  fs: FsType,
  budget: Budget,
): Promise<boolean> {
  await writeFile(fuseFile, '', { mode: 0o600 });
  await blockExportAdd(
    qmp,
    {
      type: 'fuse',
      id: QSD_IDS.fuseExport,
      'node-name': QSD_IDS.node,
      mountpoint: fuseFile,
      writable: true,
      'allow-other': 'off',
    },
    budget.call(),
  );
  try {
    const before = await probeFile(fuseFile, budget);
    if (before.kind === 'signature') return false;
    const [cmd, args] = mkfsCommand(fs, fuseFile);
    await run(cmd, args, { timeout: budget.left(), signal: budget.signal });
    const after = await probeFile(fuseFile, budget);
    if (after.kind !== 'signature' || after.type !== fs) {
      throw new BackendError('format', `${cmd} finished but blkid finds no ${fs} signature`);
    }
    return true;
  } finally {
    await removeExport(qmp, QSD_IDS.fuseExport, budget);
  }
}
