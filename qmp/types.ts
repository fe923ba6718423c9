// QAPI shapes of the commands the product uses, checked against QEMU 7.2's query-qmp-schema.
// Names keep QAPI's spelling (mixed kebab and snake case) so values go to QEMU untranslated.
// QAPI ints are 64-bit; JSON.parse keeps them exact up to 2^53, ample for sizes and counters.

export type RunState =
  | 'debug'
  | 'inmigrate'
  | 'internal-error'
  | 'io-error'
  | 'paused'
  | 'postmigrate'
  | 'prelaunch'
  | 'finish-migrate'
  | 'restore-vm'
  | 'running'
  | 'save-vm'
  | 'shutdown'
  | 'suspended'
  | 'watchdog'
  | 'guest-panicked'
  | 'colo';

export interface StatusInfo {
  running: boolean;
  singlestep: boolean;
  status: RunState;
}

export type DetectZeroes = 'off' | 'on' | 'unmap';

export interface ImageInfo {
  filename: string;
  format: string;
  'dirty-flag'?: boolean;
  'actual-size'?: number;
  'virtual-size': number;
  'cluster-size'?: number;
  encrypted?: boolean;
  compressed?: boolean;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  snapshots?: unknown[];
  'backing-image'?: ImageInfo;
  'format-specific'?: Record<string, unknown>;
}

/** One element of `query-named-block-nodes` (QAPI BlockDeviceInfo). */
export interface BlockDeviceInfo {
  file: string;
  'node-name'?: string;
  ro: boolean;
  drv: string;
  backing_file?: string;
  backing_file_depth: number;
  encrypted: boolean;
  detect_zeroes: DetectZeroes;
  bps: number;
  bps_rd: number;
  bps_wr: number;
  iops: number;
  iops_rd: number;
  iops_wr: number;
  image: ImageInfo;
  cache: { writeback: boolean; direct: boolean; 'no-flush': boolean };
  write_threshold: number;
  group?: string;
  'dirty-bitmaps'?: unknown[];
}

/** One element of `query-block`: a BlockBackend, named by `device` or by `qdev`. */
export interface BlockInfo {
  /** Legacy drive name; '' for backends made by device_add drive=<node-name>. */
  device: string;
  qdev?: string;
  type: string;
  removable: boolean;
  locked: boolean;
  inserted?: BlockDeviceInfo;
  tray_open?: boolean;
  'io-status'?: 'ok' | 'failed' | 'nospace';
}

export interface BlockDeviceStats {
  rd_bytes: number;
  wr_bytes: number;
  unmap_bytes: number;
  rd_operations: number;
  wr_operations: number;
  flush_operations: number;
  unmap_operations: number;
  rd_total_time_ns: number;
  wr_total_time_ns: number;
  flush_total_time_ns: number;
  unmap_total_time_ns: number;
  wr_highest_offset: number;
  rd_merged: number;
  wr_merged: number;
  unmap_merged: number;
  idle_time_ns?: number;
  failed_rd_operations: number;
  failed_wr_operations: number;
  failed_flush_operations: number;
  failed_unmap_operations: number;
  invalid_rd_operations: number;
  invalid_wr_operations: number;
  invalid_flush_operations: number;
  invalid_unmap_operations: number;
  account_invalid: boolean;
  account_failed: boolean;
  timed_stats: unknown[];
}

/** One element of `query-blockstats`. */
export interface BlockStats {
  device?: string;
  qdev?: string;
  'node-name'?: string;
  stats: BlockDeviceStats;
  'driver-specific'?: { driver: string } & Record<string, unknown>;
  parent?: BlockStats;
  backing?: BlockStats;
}

export interface PciMemoryRegion {
  bar: number;
  type: string;
  address: number;
  size: number;
  prefetch?: boolean;
  mem_type_64?: boolean;
}

export interface PciMemoryRange {
  base: number;
  limit: number;
}

export interface PciBusInfo {
  number: number;
  secondary: number;
  subordinate: number;
  io_range: PciMemoryRange;
  memory_range: PciMemoryRange;
  prefetchable_range: PciMemoryRange;
}

export interface PciDeviceInfo {
  bus: number;
  slot: number;
  function: number;
  class_info: { desc?: string; class: number };
  id: { device: number; vendor: number; subsystem?: number; 'subsystem-vendor'?: number };
  irq?: number;
  irq_pin: number;
  /** '' when the device was created without an id. */
  qdev_id: string;
  /** Present on bridges and root ports: the bus behind them and its devices. */
  pci_bridge?: { bus: PciBusInfo; devices?: PciDeviceInfo[] };
  regions: PciMemoryRegion[];
}

export interface PciInfo {
  bus: number;
  devices: PciDeviceInfo[];
}

export interface ObjectPropertyInfo {
  name: string;
  /** QOM type, e.g. 'string', 'child<virtio-blk-pci>', 'link<...>'. */
  type: string;
  description?: string;
  'default-value'?: unknown;
}

export interface CpuInstanceProperties {
  'node-id'?: number;
  'socket-id'?: number;
  'die-id'?: number;
  'cluster-id'?: number;
  'core-id'?: number;
  'thread-id'?: number;
}

export interface HotpluggableCpu {
  type: string;
  'vcpus-count': number;
  props: CpuInstanceProperties;
  /** Present when the CPU is plugged. */
  'qom-path'?: string;
}

export interface MemorySizeSummary {
  'base-memory': number;
  'plugged-memory'?: number;
}

/** `object-add qom-type=secret`: the key travels as `data`, never on QEMU's command line. */
export interface SecretObjectOptions {
  'qom-type': 'secret';
  id: string;
  data: string;
  format?: 'raw' | 'base64';
  keyid?: string;
  iv?: string;
}

export type ObjectAddOptions = SecretObjectOptions;

interface BlockdevOptionsBase {
  'node-name'?: string;
  discard?: 'ignore' | 'unmap';
  cache?: { direct?: boolean; 'no-flush'?: boolean };
  'read-only'?: boolean;
  'auto-read-only'?: boolean;
  'force-share'?: boolean;
  'detect-zeroes'?: DetectZeroes;
}

export interface BlockdevOptionsFile extends BlockdevOptionsBase {
  driver: 'file' | 'host_device';
  filename: string;
  'pr-manager'?: string;
  locking?: 'auto' | 'on' | 'off';
  aio?: 'threads' | 'native' | 'io_uring';
  'aio-max-batch'?: number;
  'drop-cache'?: boolean;
}

/** A child given inline, or the node-name of an existing node. */
export type BlockdevRef = BlockdevOptions | string;

export interface BlockdevOptionsRaw extends BlockdevOptionsBase {
  driver: 'raw';
  file: BlockdevRef;
  offset?: number;
  size?: number;
}

export interface InetSocketAddressBase {
  host: string;
  /** A string in QAPI (service name or number), e.g. "6789". */
  port: string;
}

export interface BlockdevOptionsRbd extends BlockdevOptionsBase {
  driver: 'rbd';
  pool: string;
  namespace?: string;
  image: string;
  /** Path of a ceph.conf; also how to shorten client_mount_timeout per attach. */
  conf?: string;
  snapshot?: string;
  user?: string;
  'auth-client-required'?: Array<'cephx' | 'none'>;
  /** Id of a `secret` object holding the cephx key. */
  'key-secret'?: string;
  server?: InetSocketAddressBase[];
}

export type BlockdevOptions = BlockdevOptionsFile | BlockdevOptionsRaw | BlockdevOptionsRbd;

/** A top-level blockdev-add: the product always names its nodes. */
export type BlockdevAddOptions = BlockdevOptions & { 'node-name': string };

/** device_add: the driver, an id to delete it by, and any qdev properties (typed JSON values). */
export interface DeviceAddOptions {
  driver: string;
  id: string;
  bus?: string;
  [property: string]: string | number | boolean | undefined;
}

export interface BlockResizeOptions {
  'node-name': string;
  size: number;
}

export interface NetdevTapOptions {
  type: 'tap';
  id: string;
  ifname?: string;
  fd?: string;
  fds?: string;
  script?: string;
  downscript?: string;
  br?: string;
  helper?: string;
  sndbuf?: number;
  vnet_hdr?: boolean;
  vhost?: boolean;
  vhostfd?: string;
  vhostfds?: string;
  vhostforce?: boolean;
  queues?: number;
  'poll-us'?: number;
}

export interface NetdevUserOptions {
  type: 'user';
  id: string;
  [option: string]: string | number | boolean | undefined;
}

export type NetdevAddOptions = NetdevTapOptions | NetdevUserOptions;

/** `block-export-add` (QEMU 7.2 BlockExportOptions), the two export types the product uses. */
export type BlockExportAddOptions =
  | {
      type: 'vhost-user-blk';
      id: string;
      'node-name': string;
      writable?: boolean;
      addr: { type: 'unix'; path: string };
      'logical-block-size'?: number;
      'num-queues'?: number;
    }
  | {
      type: 'fuse';
      id: string;
      'node-name': string;
      writable?: boolean;
      /** A regular file FUSE mounts the export on. */
      mountpoint: string;
      growable?: boolean;
      'allow-other'?: 'on' | 'off' | 'auto';
    };

/** One element of `query-block-exports`. */
export interface BlockExportInfo {
  id: string;
  type: string;
  'node-name': string;
  'shutting-down': boolean;
}
