import type {
  BlockdevAddOptions,
  BlockdevOptionsFile,
  BlockdevOptionsRbd,
  DeviceAddOptions,
  SecretObjectOptions,
} from '../qmp/types.js';
import { parseRootPortId, SCSI_BUS, type VolumeNames } from './naming.js';
import type { HostDeviceSource, RbdSource, Secret } from './volume-spec.js';

// Pure builders of the QMP arguments of each attach step, typed with qmp/types.ts so they go to
// qmp/commands.ts unchanged. No I/O here.

/**
 * `object-add` of the secret holding the cephx key. The result carries the key in clear (QEMU
 * needs it): hand it to the QMP client and nothing else; never log it.
 */
export function secretObject(names: Pick<VolumeNames, 'secret'>, key: Secret): SecretObjectOptions {
  return { 'qom-type': 'secret', id: names.secret, data: key.reveal(), format: 'base64' };
}

/**
 * A block device already on the host. O_DIRECT with native AIO: the guest's own page cache is the
 * cache, and a host cache in between would only double memory and hide flush errors.
 */
export function blockdevHostDevice(
  names: Pick<VolumeNames, 'node'>,
  source: HostDeviceSource,
  readOnly: boolean,
): BlockdevAddOptions & BlockdevOptionsFile {
  return {
    driver: 'host_device',
    'node-name': names.node,
    filename: source.path,
    'read-only': readOnly,
    cache: { direct: true, 'no-flush': false },
    aio: 'native',
    discard: 'unmap',
  };
}

export interface RbdBlockdevOptions {
  readOnly: boolean;
  /**
   * Path of the per-attach Ceph config written from rbdConf(). Strongly advised: without it
   * librbd waits up to its default client_mount_timeout (300 s) for unreachable monitors while
   * QEMU's main loop (every monitor, the guest's I/O completion) stands still.
   */
  confPath?: string;
}

/**
 * librbd through QEMU: monitors as `server` (QEMU turns them into mon_host), cephx required, the
 * key taken from the secret object by id so it never appears here.
 */
export function blockdevRbd(
  names: Pick<VolumeNames, 'node' | 'secret'>,
  source: Omit<RbdSource, 'key'>,
  opts: RbdBlockdevOptions,
): BlockdevAddOptions & BlockdevOptionsRbd {
  const node: BlockdevAddOptions & BlockdevOptionsRbd = {
    driver: 'rbd',
    'node-name': names.node,
    pool: source.pool,
    image: source.image,
    server: source.monitors.map((m) => ({ host: m.host, port: String(m.port) })),
    user: source.user,
    'auth-client-required': ['cephx'],
    'key-secret': names.secret,
    'read-only': opts.readOnly,
    discard: 'unmap',
  };
  if (source.namespace !== undefined) node.namespace = source.namespace;
  if (source.snapshot !== undefined) node.snapshot = source.snapshot;
  if (opts.confPath !== undefined) node.conf = opts.confPath;
  return node;
}

export interface RbdConfOptions {
  /** Bounds librados' connect (monitor session + auth). vmplug's default: 5 s. */
  clientMountTimeoutS?: number;
  /** Bounds monitor commands after connect. Left to librados (0 = no bound) when absent. */
  monOpTimeoutS?: number;
  /**
   * Bounds every OSD operation, *including the guest's I/O for the life of the attachment*
   * (a slow OSD then fails guest I/O with ETIMEDOUT). Off unless an operator asks for it; without
   * it, rbd_open() against a cluster whose monitors answer but whose OSDs do not can still block.
   */
  osdOpTimeoutS?: number;
}

export const DEFAULT_CLIENT_MOUNT_TIMEOUT_S = 5;

/**
 * The text of the per-attach Ceph config that blockdevRbd's `confPath` names.
 *
 * Found in QEMU 7.2 (block/rbd.c, QAPI BlockdevOptionsRbd): blockdev-add takes no free-form
 * librados options: the `=keyvalue-pairs` option exists only for the legacy `rbd:pool/img:k=v`
 * filename syntax, and QMP rejects it ("Parameter 'keyvalue-pairs' is unexpected", checked on
 * 7.2). The only way in is `conf`, a file path QEMU hands to rados_conf_read_file() before it
 * sets mon_host from `server` and the key from `key-secret`. Measured on QEMU 7.2 against a
 * closed port: with this file (client_mount_timeout = 3) blockdev-add fails after 3.06 s with
 * "error connecting: Connection timed out"; without it, it was still blocked after 8 s. A
 * missing file fails at once ("error reading conf file"). Given `conf`, librados reads only that
 * file, not /etc/ceph/ceph.conf; the file holds no secret (mon_host and key come from QMP).
 */
export function rbdConf(opts: RbdConfOptions = {}): string {
  const lines = [
    '[global]',
    `client_mount_timeout = ${seconds(opts.clientMountTimeoutS ?? DEFAULT_CLIENT_MOUNT_TIMEOUT_S)}`,
  ];
  if (opts.monOpTimeoutS !== undefined) lines.push(`rados_mon_op_timeout = ${seconds(opts.monOpTimeoutS)}`);
  if (opts.osdOpTimeoutS !== undefined) lines.push(`rados_osd_op_timeout = ${seconds(opts.osdOpTimeoutS)}`);
  return `${lines.join('\n')}\n`;
}

function seconds(s: number): string {
  if (!Number.isFinite(s) || s <= 0 || s > 3600)
    throw new RangeError(`timeout ${s} s out of range (0, 3600]`);
  return String(s);
}

export interface ScsiLane {
  bus: 'scsi';
  /** SCSI target id on vmplug-scsi0 (virtio-scsi: 0..255); lun is always 0. */
  scsiId: number;
}

export interface VirtioBlkLane {
  bus: 'virtio-blk';
  /** A reserved root port, vmplug-rp<N>. */
  port: string;
}

export type Lane = ScsiLane | VirtioBlkLane;

export const MAX_SCSI_ID = 255;

/**
 * The guest-visible device on a vmplug lane. scsi-hd gets the serial (VPD page 0x80 and, via
 * device_id, page 0x83) and deliberately no wwn (naming.ts guestHint). Read-only follows the
 * node's `read-only`: both devices refuse writes on a read-only node by themselves.
 */
export function deviceArgs(
  names: Pick<VolumeNames, 'node' | 'device' | 'serial'>,
  lane: Lane,
): DeviceAddOptions {
  if (lane.bus === 'scsi') {
    if (!Number.isInteger(lane.scsiId) || lane.scsiId < 0 || lane.scsiId > MAX_SCSI_ID) {
      throw new RangeError(`scsi-id ${lane.scsiId} out of range 0..${MAX_SCSI_ID}`);
    }
    return {
      driver: 'scsi-hd',
      id: names.device,
      drive: names.node,
      bus: SCSI_BUS,
      channel: 0,
      'scsi-id': lane.scsiId,
      lun: 0,
      serial: names.serial,
    };
  }
  if (parseRootPortId(lane.port) === undefined)
    throw new RangeError(`${lane.port} is not a vmplug root port`);
  // addr 0 explicitly: QEMU 7.2 otherwise accepts a second device on a root port's bus at slot 1
  // (checked: device_add succeeds), where the guest never looks; with addr 0 it refuses ("PCI: slot
  // 0 function 0 not available ...") so an occupied port can never swallow a disk.
  return {
    driver: 'virtio-blk-pci',
    id: names.device,
    drive: names.node,
    bus: lane.port,
    addr: '0',
    serial: names.serial,
  };
}
