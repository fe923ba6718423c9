/**
 * Kata's plug of a direct-assigned volume as a test sees it: through to the guest's new disk.
 * `kata-runtime.ts` is only what Kata's runtime does on the host; a volume test passes only when
 * the guest sees the disk, so every caller paired it with the same watch on the guest: remember the
 * disks the guest has, plug, wait for one that was not there. Kept here, once, so each test states
 * only what differs (its filter, its timeout), and the bench and demo time the same interval.
 */
import type { QmpExecutor } from '../../qmp/index.js';
import type { GuestAgent, GuestDisk } from './guest.js';
import { type KataPlug, type KataPlugOptions, plugDirectVolume, unplugDirectVolume } from './kata-runtime.js';

/** The part of the guest this needs (a fake guest in a unit test can provide just this). */
export type DiskWatcher = Pick<GuestAgent, 'disks' | 'waitForDisk' | 'waitForDiskGone'>;

/** The guest names a disk after the bus the plug put it on: scsi-hd -> sdX, virtio (vhost-user-blk) -> vdX. */
const GUEST_DISK_PREFIX: Record<KataPlug['kind'], string> = { scsi: 'sd', 'vhost-user-blk': 'vd' };

export interface PlugUntilSeenOptions extends KataPlugOptions {
  /** Also require this size, for a caller that knows it (the disk's name alone follows from the plug's kind). */
  sizeBytes?: number;
  /** How long the guest may take to report the disk (the guest agent's default when absent). */
  guestTimeoutMs?: number;
}

export interface SeenPlug {
  plug: KataPlug;
  /** The guest's new disk; `disk.seenAt - startedAt` is plug-to-guest latency. */
  disk: GuestDisk;
  /** performance.now() as Kata's plug began (before it reads the record), after the guest's disks were noted. */
  startedAt: number;
}

/**
 * Kata's runtime at CreateContainer, until the guest reports the new disk. Only a disk the guest
 * did not have before the plug counts (the sandbox may hold others, or a previous round's disk on
 * its way out), and only one on the bus the plug used.
 */
export async function plugUntilGuestSees(guest: DiskWatcher, opts: PlugUntilSeenOptions): Promise<SeenPlug> {
  const { sizeBytes, guestTimeoutMs, ...plugOpts } = opts;
  const known = new Set(guest.disks().map((d) => d.name));
  const startedAt = performance.now();
  const plug = await plugDirectVolume(plugOpts);
  const prefix = GUEST_DISK_PREFIX[plug.kind];
  const disk = await guest.waitForDisk(
    (d) =>
      !known.has(d.name) &&
      d.name.startsWith(prefix) &&
      (sizeBytes === undefined || d.sizeBytes === sizeBytes),
    guestTimeoutMs !== undefined ? { timeoutMs: guestTimeoutMs } : {},
  );
  return { plug, disk, startedAt };
}

/**
 * Kata's runtime when the container goes, until the guest has dropped the disk: the next plug's
 * "new disk" and the test's later checks of the device must not race a disk still leaving.
 */
export async function unplugUntilGuestDrops(
  qmp: QmpExecutor,
  guest: DiskWatcher,
  seen: Pick<SeenPlug, 'plug' | 'disk'>,
  opts: { guestTimeoutMs?: number } = {},
): Promise<void> {
  await unplugDirectVolume(qmp, seen.plug);
  await guest.waitForDiskGone(
    seen.disk.name,
    opts.guestTimeoutMs !== undefined ? { timeoutMs: opts.guestTimeoutMs } : {},
  );
}
