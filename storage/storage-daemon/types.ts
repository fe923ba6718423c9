import type { VmplugError } from '../../core/errors.js';
import type { RbdSource } from '../volume-spec.js';

// The contract between the pod-volume engine (storage/pod/) and the qemu-storage-daemon backend
// (storage/storage-daemon/): one storage daemon per exported rbd volume, driven over its own QMP
// monitor, exporting vhost-user-blk into Kata's vhost-user store (DESIGN §5b, §5c; FACTS
// "qemu-storage-daemon"). Written first so both sides are built against the same shape.

/**
 * Names one export. `name` is the file name used under the store's `block/sockets/` and
 * `block/devices/` (vmplug-made, hash-derived, `[a-z0-9-]`, at most 40 characters), and the key
 * under which the daemon's own state is kept; it is stable for a (owner, volume) pair so a
 * restarted vmplugd finds the same daemon again.
 */
export interface ExportKey {
  readonly name: string;
}

export interface ExportRequest {
  readonly key: ExportKey;
  /** The image to open; the cephx key travels only as a QMP secret object. */
  readonly source: RbdSource;
  readonly readOnly: boolean;
  /**
   * When set, a blank image (no filesystem signature in its first blocks) is formatted with this
   * filesystem once, on the host, before the export is handed out; an image that already holds a
   * filesystem (or a partition table, or signatures blkid cannot settle) is never formatted.
   * Ignored when `readOnly` (nothing may write the image).
   */
  readonly formatIfBlank?: 'ext4' | 'xfs';
}

/** What the export looks like once it serves (also what `list()` returns for adopted daemons). */
export interface ExportInfo {
  readonly key: ExportKey;
  /** The vhost-user-blk socket: `<store>/block/sockets/<name>`. */
  readonly socketPath: string;
  /** The block device node Kata's runtime recognises (major 241): `<store>/block/devices/<name>`. */
  readonly devicePath: string;
  readonly minor: number;
  /** The storage daemon's pid and its start time (clock ticks since boot, /proc/<pid>/stat field 22). */
  readonly pid: number;
  readonly startTime: number;
  /** True when ensureExport formatted the image in this call. */
  readonly formatted: boolean;
  /** The image size in bytes as the storage daemon sees it. */
  readonly sizeBytes: number;
}

export interface BackendCallOptions {
  readonly signal?: AbortSignal;
  /** Bound for the whole call; a Ceph that cannot serve the image is an error in this time. */
  readonly timeoutMs?: number;
}

/**
 * An export supervision keeps serving. Either the whole request, or its key and a way to build the
 * request that is called only when the daemon must be (re)started: the cephx key is then fetched
 * from its custody (the kernel keyring) only when needed, and an export whose key is unknown
 * (`undefined`) is left as it is, never stopped for it.
 */
export type WantedExport =
  | ExportRequest
  | { readonly key: ExportKey; readonly request: () => Promise<ExportRequest | undefined> };

/**
 * What one supervision pass did. One export failing (a client still connected to an unwanted
 * export, Ceph down for a wanted one) does not stop the pass: it is listed in `failed`.
 */
export interface SuperviseResult {
  restarted: ExportKey[];
  stopped: ExportKey[];
  failed: Array<{ key: ExportKey; error: VmplugError }>;
}

/**
 * The storage-daemon backend. Every call is idempotent and safe to repeat after a crash of
 * vmplugd at any point: the daemons' state lives under the backend's own directory and in the
 * processes themselves (pid + start time + socket), never in vmplugd's memory alone.
 */
export interface StorageDaemonBackend {
  /**
   * Starts (or adopts) the storage daemon for `key`, opens the image, formats it if asked and
   * blank, exports it and makes the device node. Returns when the socket accepts connections.
   * Errors are core VmplugErrors with stable codes (CEPH_UNREACHABLE, BACKEND_FAILED, ...).
   */
  ensureExport(req: ExportRequest, opts?: BackendCallOptions): Promise<ExportInfo>;
  /**
   * Removes the export: device node, then (once no vhost-user client is connected, bounded by
   * `opts.timeoutMs`) the export, the image and the daemon. Unknown keys succeed.
   */
  stopExport(key: ExportKey, opts?: BackendCallOptions): Promise<void>;
  /**
   * Expand: grows the export's image node to `sizeBytes` (`block_resize` on the daemon's monitor)
   * and, when no vhost-user client is connected, makes the export again so the next plug sees the
   * new capacity (QEMU 7.2's export keeps the capacity it was made with and tells no client). A
   * size below the current one is a ValidationError on `sizeBytes`; the export must be serving.
   */
  resizeExport(key: ExportKey, sizeBytes: number, opts?: BackendCallOptions): Promise<ExportInfo>;
  /** The daemons found on this node (adopted at start-up, with their state). */
  list(): Promise<ExportInfo[]>;
  /**
   * Restarts daemons that died while their export is wanted and stops daemons nobody wants.
   * `wanted` comes from the pod journal plus the key custody (the cephx key is never on disk in
   * clear, so the caller supplies it: from memory, or the kernel keyring after a vmplugd restart).
   * Returns the keys it restarted and the ones it stopped.
   */
  supervise(wanted: readonly WantedExport[], opts?: BackendCallOptions): Promise<SuperviseResult>;
  /** Stops supervision timers; leaves the daemons running (they outlive vmplugd by design). */
  close(): Promise<void>;
}
