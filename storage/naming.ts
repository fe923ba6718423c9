import { createHash } from 'node:crypto';
import type { SandboxId, VolumeId } from '../core/ids.js';

// Names vmplug gives the QEMU objects of one attachment. They derive from (sandbox, volume) alone,
// so reconcile can recompute them from a journal file name, and a fixed prefix plus a fixed-length
// hash lets it tell vmplug's objects from Kata's or an operator's. QEMU node-names and ids must
// start with a letter and stay within 31 characters; the longest here is 21.

const HASH_HEX = 16; // 64 bits: collisions within one sandbox are not a practical concern

export interface VolumeNames {
  /** The protocol node (host_device or rbd) the device's `drive` points at. */
  node: string;
  /** A format node, should one ever sit on top of `node` (raw with offset/size); unused today. */
  format: string;
  device: string;
  /** The `secret` object holding the cephx key (rbd mode only). */
  secret: string;
  /** Device serial: 20 bytes, virtio-blk's maximum; scsi-hd gets the same. */
  serial: string;
  hash: string;
}

export function volumeHash(sandboxId: SandboxId, volumeId: VolumeId): string {
  // Ids cannot contain NUL, so the pair is encoded unambiguously.
  return createHash('sha256').update(`${sandboxId}\0${volumeId}`).digest('hex').slice(0, HASH_HEX);
}

export function volumeNames(sandboxId: SandboxId, volumeId: VolumeId): VolumeNames {
  const hash = volumeHash(sandboxId, volumeId);
  return {
    node: `vmp-${hash}`,
    format: `vmpf-${hash}`,
    device: `vmpd-${hash}`,
    secret: `vmps-${hash}`,
    serial: `vmp-${hash}`,
    hash,
  };
}

const VMPLUG_NAME = /^vmp[dfs]?-[0-9a-f]{16}$/;

/** True for node-names, device ids and secret ids that vmplug made. */
export function isVmplugName(name: string): boolean {
  return VMPLUG_NAME.test(name);
}

export type VmplugObjectKind = 'node' | 'format' | 'device' | 'secret';

/** Which kind of object a vmplug name denotes, and its hash; undefined for a foreign name. */
export function parseVmplugName(name: string): { kind: VmplugObjectKind; hash: string } | undefined {
  if (!VMPLUG_NAME.test(name)) return undefined;
  const [prefix, hash] = name.split('-') as [string, string];
  const kind = ({ vmp: 'node', vmpf: 'format', vmpd: 'device', vmps: 'secret' } as const)[prefix as 'vmp'];
  return { kind, hash };
}

// Lanes: the hot-plug slots bin/vmplug-qemu reserves in every Kata sandbox.
export const SCSI_CONTROLLER_ID = 'vmplug-scsi0';
/** The bus a scsi-hd names: QEMU calls a virtio-scsi controller's bus "<id>.0". */
export const SCSI_BUS = `${SCSI_CONTROLLER_ID}.0`;
/** bin/vmplug-qemu adds at most 32 root ports, vmplug-rp0..vmplug-rp31. */
export const MAX_ROOT_PORTS = 32;

export function rootPortId(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n >= MAX_ROOT_PORTS)
    throw new RangeError(`root port ${n} out of range`);
  return `vmplug-rp${n}`;
}

/** The index of a vmplug root port id, or undefined for any other id (Kata's own ports). */
export function parseRootPortId(id: string): number | undefined {
  const m = /^vmplug-rp([0-9]|[12][0-9]|3[01])$/.exec(id);
  return m ? Number(m[1]) : undefined;
}

export type FrontendBus = 'scsi' | 'virtio-blk';

/**
 * Where udev (Debian 12's systemd 252, 60-persistent-storage.rules) links the disk in a real
 * guest. virtio-blk: `virtio-$attr{serial}`. scsi-hd: scsi_id reads VPD page 0x83, where QEMU puts
 * the serial as a vendor-specific ASCII designator; scsi_id prefixes its type ("0") and the
 * INQUIRY vendor and model ("QEMU", "QEMU HARDDISK") with blanks turned into "_". A wwn would win
 * over it (scsi-3<wwn>), which is why vmplug sets no wwn. Guests without udev (busybox) have no
 * such links: the hint is for real guests.
 */
export function guestHint(bus: FrontendBus, serial: string): string {
  return bus === 'virtio-blk'
    ? `/dev/disk/by-id/virtio-${serial}`
    : `/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_${serial}`;
}
