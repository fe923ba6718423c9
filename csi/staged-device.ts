// The host block device of a direct `block` volume. vmplug-csi stages such a volume through the
// real plugin with a block capability, so the driver maps it without mounting anything on the
// host; ceph-csi then bind-mounts the device node at `<staging_target_path>/<volume_id>`. That node
// is read here and named by its kernel name (/dev/rbd0) through sysfs, since vmplugd takes a
// device path and a bind-mounted node is not one.
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { failedPrecondition } from './status.js';

export type StagedDeviceOf = (stagingPath: string, volumeId: string) => Promise<string>;

export function stagedDeviceOf(sysRoot = '/sys', devRoot = '/dev'): StagedDeviceOf {
  return async (stagingPath, volumeId) => {
    const node = join(stagingPath, volumeId);
    const st = await stat(node, { bigint: true }).catch(() => undefined);
    if (!st?.isBlockDevice()) {
      throw failedPrecondition(
        `no block device staged at ${node} (did the real plugin stage volume ${volumeId}?)`,
      );
    }
    const { major, minor } = splitDev(st.rdev);
    const uevent = await readFile(join(sysRoot, 'dev/block', `${major}:${minor}`, 'uevent'), 'utf8').catch(
      () => '',
    );
    const name = /^DEVNAME=(.+)$/m.exec(uevent)?.[1];
    if (!name) throw failedPrecondition(`block device ${major}:${minor} staged at ${node} is not in sysfs`);
    return join(devRoot, name);
  };
}

/** glibc's major()/minor() of a dev_t. */
export function splitDev(dev: bigint): { major: number; minor: number } {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  return { major: Number(major), minor: Number(minor) };
}
