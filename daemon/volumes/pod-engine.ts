import { join } from 'node:path';
import { hostDeviceCheck, hostDevicePolicy } from '../../storage/host-device.js';
import { loadFingerprintKey } from '../../storage/journal.js';
import { type KeyCustody, openKeyCustody } from '../../storage/key-custody.js';
import { PodVolumeEngine } from '../../storage/pod/engine.js';
import { PodJournal, type PodWriteHook } from '../../storage/pod/journal.js';
import { createStorageDaemonBackend } from '../../storage/storage-daemon/backend.js';
import type { StorageDaemonBackend } from '../../storage/storage-daemon/types.js';
import type { DaemonConfig } from '../config.js';
import type { Logger } from '../logger.js';
import { launcherOptions } from './qsd-launcher.js';

// The one place that builds the pod-volume engine (DESIGN §5b): its journal under
// <stateDir>/pods, the node's fingerprint key (shared with the attach journal), Kata's
// direct-volume root, and the storage-daemon backend for rbd mode when there is one.

export interface PodEngineOptions {
  config: Pick<
    DaemonConfig,
    | 'stateDir'
    | 'kataDirectVolumeRoot'
    | 'kataVhostUserStore'
    | 'maxConcurrentOps'
    | 'allowedDevices'
    | 'storageDaemonLauncher'
    | 'storageDaemonCgroupRoot'
  >;
  logger: Logger;
  onWrite?: PodWriteHook;
  /** rbd mode's backend; default: qemu-storage-daemons under <stateDir>/qsd exporting into the store. */
  storageDaemon?: StorageDaemonBackend;
  /** Where rbd publishes' cephx keys are kept; default: the kernel keyring of <stateDir>. */
  keys?: KeyCustody;
}

const STARTUP_RECONCILE_MS = 30_000;

// The node's block-device policy (allow-list, host-use checks), as the attach engines get it.
const HOST_CHECK_BOUND_MS = 10_000;

export async function createPodEngine(opts: PodEngineOptions): Promise<PodVolumeEngine> {
  const logger = opts.logger.child({ component: 'pods' });
  const journal = new PodJournal({
    stateDir: opts.config.stateDir,
    logger,
    ...(opts.onWrite !== undefined ? { onWrite: opts.onWrite } : {}),
  });
  const removed = await journal.sweepTemp();
  if (removed > 0) logger.warn({ removed }, 'pod journal: removed temp files of interrupted writes');
  const checkHostDevice = hostDeviceCheck(hostDevicePolicy(opts.config.allowedDevices));
  const engine = new PodVolumeEngine({
    journal,
    fingerprintKey: await loadFingerprintKey(opts.config.stateDir),
    directVolumeRoot: opts.config.kataDirectVolumeRoot,
    logger,
    maxConcurrentOps: opts.config.maxConcurrentOps,
    checkBlockDevice: (path, field) =>
      checkHostDevice(path, { signal: AbortSignal.timeout(HOST_CHECK_BOUND_MS), field }),
    ...(await storageDaemonOf(opts, logger)),
    keys: opts.keys ?? keyCustodyOf(opts.config.stateDir, logger),
  });
  // Before anything is served: a publish or unpublish cut short by a crash is settled first.
  try {
    await engine.reconcile(AbortSignal.timeout(STARTUP_RECONCILE_MS));
  } catch (err) {
    logger.error({ err }, 'pod volume start-up reconcile failed; the periodic one retries');
  }
  return engine;
}

/** The configured backend; none (rbd publishes answer 502) when its paths cannot work here. */
async function storageDaemonOf(
  opts: PodEngineOptions,
  logger: Logger,
): Promise<{ storageDaemon?: StorageDaemonBackend }> {
  if (opts.storageDaemon !== undefined) return { storageDaemon: opts.storageDaemon };
  const launcher = await launcherOptions(opts.config, 'pods', logger);
  if (launcher === undefined) return {};
  try {
    return {
      storageDaemon: createStorageDaemonBackend({
        stateDir: join(opts.config.stateDir, 'qsd'),
        store: opts.config.kataVhostUserStore,
        ...launcher,
      }),
    };
  } catch (err) {
    logger.error(
      { err: (err as Error).message },
      'rbd pod volumes disabled: the storage-daemon backend cannot run here',
    );
    return {};
  }
}

/**
 * The kernel keyring (storage/key-custody.ts); memory when the addon is missing or the keyring
 * syscalls are blocked: rbd publishes still work, but a storage daemon that dies after a vmplugd
 * restart then waits for the volume to be published again.
 */
function keyCustodyOf(stateDir: string, logger: Logger): KeyCustody {
  const { custody, fallback } = openKeyCustody(stateDir);
  if (fallback !== undefined) {
    logger.warn(
      { reason: fallback },
      'cephx keys of rbd pod volumes kept in memory only: a storage daemon that dies after a vmplugd restart is restarted only once its volume is published again',
    );
  } else {
    logger.info({ keys: custody.where }, 'cephx keys of rbd pod volumes kept in the kernel keyring');
  }
  return custody;
}
