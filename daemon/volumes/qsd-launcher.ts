import { HostCgroups, type StorageDaemonBackendOptions } from '../../storage/storage-daemon/index.js';
import type { DaemonConfig } from '../config.js';
import type { Logger } from '../logger.js';

// How both storage-daemon backends (pod volumes, hot-attach) start their daemons, from the
// config; `group` keeps their host cgroups apart (each backend sweeps only its own).

export type LauncherOptions = Pick<StorageDaemonBackendOptions, 'launcher' | 'cgroupRoot' | 'cgroupGroup'>;

/**
 * The backend options of the configured launcher, or undefined (the error logged) when
 * `host-cgroup` cannot work here: no cgroup hierarchy under the root (the hostPath is missing).
 * Daemons that would die with vmplugd's container are not started then.
 */
export async function launcherOptions(
  config: Pick<DaemonConfig, 'storageDaemonLauncher' | 'storageDaemonCgroupRoot'>,
  group: string,
  logger: Logger,
): Promise<LauncherOptions | undefined> {
  const launcher = config.storageDaemonLauncher;
  if (launcher !== 'host-cgroup') return { launcher };
  const cgroupRoot = config.storageDaemonCgroupRoot;
  try {
    const hierarchies = await new HostCgroups({ root: cgroupRoot, group }).hierarchies();
    logger.info({ group, hierarchies: hierarchies.length }, 'storage daemons go into host cgroups');
  } catch (err) {
    logger.error(
      { err: (err as Error).message, storageDaemonCgroupRoot: cgroupRoot },
      'storage-daemon launcher host-cgroup cannot work: no storage daemon is started',
    );
    return undefined;
  }
  return { launcher, cgroupRoot, cgroupGroup: group };
}
