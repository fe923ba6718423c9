import { BackendError } from '../core/errors.js';
import type { SandboxId, VolumeId } from '../core/ids.js';
import type { CallOptions, DeviceAddOptions, QmpExecutor } from '../qmp/index.js';
import { qomList } from '../qmp/index.js';
import type { JournalRecord } from './journal.js';
import { parseRootPortId, type VolumeNames } from './naming.js';
import type { Lane } from './qemu-args.js';
import { generationOf } from './qemu-view.js';
import { backendFailure, isAbsent, isDuplicate } from './qmp-failure.js';
import { type ExportKey, exportNameOf, type StorageDaemonBackend } from './storage-daemon/index.js';
import { type AttachSpec, type ResolvedRbdBackend, storedBackend } from './volume-spec.js';

// The storage-daemon backend of an rbd hot-attach (DESIGN §5c): a qemu-storage-daemon opens the
// image and exports vhost-user-blk; the guest's QEMU gets a socket chardev (client) to the export
// and a vhost-user-blk-pci on a vmplug root port. A Ceph stall then stays in the storage daemon.
// The journal states are the usual ones: Pending covers "the export and the chardev may exist",
// BlockdevAdded means both do (there is no block node in the guest's QEMU), then the device.

/** What the steps need to reach the backend; absent when vmplugd runs without one. */
export interface VhostUserContext {
  backend: StorageDaemonBackend;
  /** Bound of ensureExport / stopExport (a stalled OSD fails the export in this time). */
  timeoutMs: number;
}

export function isVhostUser(r: Pick<JournalRecord, 'spec'>): boolean {
  return storedBackend(r.spec) === 'storage-daemon';
}

/** The chardev id in the guest's QEMU; made from the volume hash like every other vmplug name. */
export function chardevId(names: Pick<VolumeNames, 'hash'>): string {
  return `vmpc-${names.hash}`;
}

/**
 * Where the guest finds a vhost-user-blk disk: by PCI path, since QEMU 7.2 gives every such disk
 * the serial "vhost_user_blk" (no /dev/disk/by-id link of its own).
 */
export function vhostUserGuestHint(port: string): string {
  return `by PCI path: the virtio disk behind root port ${port} (/sys/block/vd*/device -> the PCI function on that port's bus; its serial reads "vhost_user_blk")`;
}

/** The storage daemon's export for a hot-attached volume: one per (sandbox, volume). */
export function hotAttachExportKey(sandboxId: SandboxId, volumeId: VolumeId): ExportKey {
  return exportNameOf(`sandbox:${sandboxId}`, volumeId);
}

export function vhostUserDeviceArgs(
  names: Pick<VolumeNames, 'device' | 'hash'>,
  lane: Lane,
): DeviceAddOptions {
  if (lane.bus !== 'virtio-blk' || parseRootPortId(lane.port) === undefined) {
    throw new RangeError('vhost-user-blk-pci goes on a vmplug root port');
  }
  // addr 0 for the same reason as virtio-blk-pci (qemu-args.ts deviceArgs). No serial: QEMU 7.2's
  // vhost-user-blk has none (the guest reads "vhost_user_blk"), so guests find it by PCI path.
  return {
    driver: 'vhost-user-blk-pci',
    id: names.device,
    chardev: chardevId(names),
    bus: lane.port,
    addr: '0',
  };
}

/**
 * True when a memory backend of the guest has share=on (what vhost-user needs: the storage
 * daemon maps the guest's RAM). Memory backends are children of /objects (`-object
 * memory-backend-*,id=...`, Kata's and libvirt's spelling).
 */
export async function guestRamShared(qmp: QmpExecutor, q: CallOptions): Promise<boolean> {
  const objects = await qomList(qmp, '/objects', q);
  for (const o of objects) {
    if (!/^child<memory-backend-[a-z]+>$/.test(o.type)) continue;
    const share = await qmp.execute<unknown>('qom-get', { path: `/objects/${o.name}`, property: 'share' }, q);
    if (share === true) return true;
  }
  return false;
}

/** The backend of an rbd spec when it can be told without asking the guest's QEMU, else undefined. */
export function backendWithoutQemu(
  spec: Extract<AttachSpec, { mode: 'rbd' }>,
  available: boolean,
): ResolvedRbdBackend | undefined {
  if (spec.backend !== 'auto') return spec.backend;
  // vhost-user-blk-pci is a PCI device: a request for scsi keeps QEMU's own librbd.
  if (!available || spec.bus === 'scsi') return 'qemu';
  return undefined;
}

// Whether the guest's RAM is shared cannot change while its QEMU runs: asked once per QMP session
// (every rbd attach with backend auto asked again, two or more round trips behind the guest's own
// QMP traffic). A failed answer is not kept.
const ramShared = new WeakMap<QmpExecutor, { generation: number | undefined; shared: Promise<boolean> }>();

function guestRamSharedOnce(qmp: QmpExecutor, q: CallOptions): Promise<boolean> {
  const generation = generationOf(qmp);
  const known = ramShared.get(qmp);
  if (known !== undefined && known.generation === generation) return known.shared;
  // Shared by callers with their own signals: bounded by the timeout only.
  const shared = guestRamShared(qmp, q.timeoutMs === undefined ? {} : { timeoutMs: q.timeoutMs });
  ramShared.set(qmp, { generation, shared });
  shared.catch(() => {
    if (ramShared.get(qmp)?.shared === shared) ramShared.delete(qmp);
  });
  return shared;
}

/** The backend an rbd attach uses: the request's, or for `auto` by the guest's RAM and the bus. */
export async function resolveBackend(
  spec: AttachSpec,
  qmp: QmpExecutor,
  q: CallOptions,
  available: boolean,
): Promise<ResolvedRbdBackend | undefined> {
  if (spec.mode !== 'rbd') return undefined;
  const known = backendWithoutQemu(spec, available);
  if (known !== undefined) return known;
  try {
    return (await guestRamSharedOnce(qmp, q)) ? 'storage-daemon' : 'qemu';
  } catch (err) {
    throw backendFailure('qom-list /objects', err);
  }
}

export function requireVhostUser(ctx: VhostUserContext | undefined): VhostUserContext {
  if (ctx === undefined) {
    throw new BackendError(
      'storage-daemon',
      'this vmplugd runs without the storage-daemon backend (config storageDaemon)',
    );
  }
  return ctx;
}

/** Pending -> the export serves and the guest's QEMU has a chardev connected to it. */
export async function exportAndConnect(
  qmp: QmpExecutor,
  vu: VhostUserContext,
  r: JournalRecord,
  spec: Extract<AttachSpec, { mode: 'rbd' }>,
  q: CallOptions,
): Promise<void> {
  const info = await vu.backend.ensureExport(
    { key: hotAttachExportKey(r.sandboxId, r.volumeId), source: spec.source, readOnly: spec.readOnly },
    { timeoutMs: vu.timeoutMs, ...(q.signal === undefined ? {} : { signal: q.signal }) },
  );
  try {
    await qmp.execute(
      'chardev-add',
      {
        id: chardevId(r.names),
        backend: {
          type: 'socket',
          data: { addr: { type: 'unix', data: { path: info.socketPath } }, server: false },
        },
      },
      q,
    );
  } catch (err) {
    // A resumed attach finds its own chardev (same id, same export).
    if (!isDuplicate(err) && !/already exists/i.test((err as Error).message))
      throw backendFailure('chardev-add', err);
  }
}

/** After the device is gone: the chardev, then the export (which waits for its client to go). */
export async function disconnectAndStop(
  qmp: QmpExecutor,
  vu: VhostUserContext,
  r: JournalRecord,
  q: CallOptions,
): Promise<void> {
  try {
    await qmp.execute('chardev-remove', { id: chardevId(r.names) }, q);
  } catch (err) {
    if (!isAbsent(err) && !/not found/i.test((err as Error).message))
      throw backendFailure('chardev-remove', err);
  }
  await stopHotAttachExport(vu, r, q.signal);
}

export async function stopHotAttachExport(
  vu: VhostUserContext,
  r: Pick<JournalRecord, 'sandboxId' | 'volumeId'>,
  signal?: AbortSignal,
): Promise<void> {
  await vu.backend.stopExport(hotAttachExportKey(r.sandboxId, r.volumeId), {
    timeoutMs: vu.timeoutMs,
    ...(signal === undefined ? {} : { signal }),
  });
}
