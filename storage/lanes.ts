import { LanesFullError } from '../core/errors.js';
import type { CallOptions, QmpExecutor } from '../qmp/index.js';
import { knownLanes, lanesOf, memoMark, rememberLayout } from './lane-memo.js';
import { type FrontendBus, parseRootPortId, SCSI_BUS, SCSI_CONTROLLER_ID } from './naming.js';
import { type Lane, MAX_SCSI_ID } from './qemu-args.js';
import { listPeripherals, type PeripheralDevice, qomGet } from './qemu-view.js';
import type { Bus } from './volume-spec.js';

// vmplug's hot-plug lanes in one sandbox: the virtio-scsi controller vmplug-scsi0 (one scsi-hd per
// target id) and the pcie-root-ports vmplug-rp<N> (one virtio-blk-pci each), as bin/vmplug-qemu
// adds them. Kata's own scsi0 and pci-bridge-0 are never looked at, let alone used.

export const DEFAULT_SCSI_TARGETS = MAX_SCSI_ID + 1;

export interface SandboxLanes {
  /** vmplug-scsi0 exists. */
  scsi: boolean;
  /** vmplug-rp<N> ids, in N order. */
  rootPorts: string[];
  /**
   * Lanes taken, as QEMU reports them: by vmplug's disks, and by any other device someone put
   * there (vmplug's NICs from net/ share the root ports; an operator may have added one too).
   */
  used: Lane[];
}

export async function inspectLanes(qmp: QmpExecutor, opts?: CallOptions): Promise<SandboxLanes> {
  const mark = memoMark(qmp);
  const devices = await listPeripherals(qmp, opts);
  const rootPorts = devices
    .filter((d) => d.type === 'pcie-root-port' && parseRootPortId(d.id) !== undefined)
    .map((d) => d.id)
    .sort((a, b) => (parseRootPortId(a) as number) - (parseRootPortId(b) as number));
  // Every device that could sit on a lane, not only vmplug's disks: a port holding a NIC is as
  // full as one holding a disk, and choosing it would cost a refused device_add per NIC.
  const candidates = devices.filter((d) => d.type !== 'pcie-root-port' && d.id !== SCSI_CONTROLLER_ID);
  const used = (await lanesOf(qmp, candidates, (d) => laneOfDevice(qmp, d, opts))).filter(
    (l): l is Lane => l !== undefined,
  );
  const layout = { scsi: devices.some((d) => d.id === SCSI_CONTROLLER_ID), rootPorts };
  rememberLayout(qmp, layout, mark);
  return { ...layout, used };
}

/**
 * A lane for a fresh attach without asking QEMU, when the memo holds a whole view and the choice
 * is a scsi target (lane-memo.ts: only vmplug places devices on vmplug-scsi0); else undefined and
 * the caller inspects. Root ports are shared with NICs, which the memo does not see placed.
 */
export function knownScsiLane(
  qmp: QmpExecutor,
  requested: Bus,
  scsiTargets: number = DEFAULT_SCSI_TARGETS,
): LaneChoice | undefined {
  if (requested === 'virtio-blk') return undefined;
  const known = knownLanes(qmp);
  if (known === undefined || !known.scsi) return undefined;
  try {
    const choice = chooseLane(requested, known, scsiTargets);
    return choice.lane.bus === 'scsi' ? choice : undefined;
  } catch {
    // Full by the memo's count: QEMU's own listing decides (and names what is full).
    return undefined;
  }
}

/** Where a device sits, read back from QEMU (parent_bus, and scsi-id for scsi-hd). */
export async function laneOfDevice(
  qmp: QmpExecutor,
  device: PeripheralDevice,
  opts?: CallOptions,
): Promise<Lane | undefined> {
  const path = `/machine/peripheral/${device.id}`;
  const parent = await qomGet<string>(qmp, path, 'parent_bus', opts);
  // "/machine/peripheral/vmplug-scsi0/virtio-backend/vmplug-scsi0.0", ".../vmplug-rp0/vmplug-rp0"
  const bus = typeof parent === 'string' ? parent.slice(parent.lastIndexOf('/') + 1) : '';
  if (bus === SCSI_BUS) {
    const scsiId = await qomGet<number>(qmp, path, 'scsi-id', opts);
    return { bus: 'scsi', scsiId };
  }
  if (parseRootPortId(bus) !== undefined) return { bus: 'virtio-blk', port: bus };
  return undefined;
}

export interface LaneChoice {
  bus: FrontendBus;
  lane: Lane;
}

/**
 * The frontend and a free lane for a new attachment. 'auto' takes scsi when the sandbox has
 * vmplug-scsi0 with a free target (Kata's own default frontend, and far more lanes), else a free
 * vmplug root port. `taken` adds lanes known to be busy beyond what QEMU shows (a device_add
 * that just lost a race).
 */
export function chooseLane(
  requested: Bus,
  lanes: SandboxLanes,
  scsiTargets: number = DEFAULT_SCSI_TARGETS,
  taken: readonly Lane[] = [],
): LaneChoice {
  const busy = [...lanes.used, ...taken];
  const freeScsi = (): Lane | undefined => {
    if (!lanes.scsi) return undefined;
    const ids = new Set(busy.flatMap((l) => (l.bus === 'scsi' ? [l.scsiId] : [])));
    for (let id = 0; id < Math.min(scsiTargets, DEFAULT_SCSI_TARGETS); id++) {
      if (!ids.has(id)) return { bus: 'scsi', scsiId: id };
    }
    return undefined;
  };
  const freePort = (): Lane | undefined => {
    const ports = new Set(busy.flatMap((l) => (l.bus === 'virtio-blk' ? [l.port] : [])));
    const port = lanes.rootPorts.find((p) => !ports.has(p));
    return port === undefined ? undefined : { bus: 'virtio-blk', port };
  };
  if (requested === 'scsi' || requested === 'virtio-blk') {
    const lane = requested === 'scsi' ? freeScsi() : freePort();
    if (lane === undefined) {
      throw new LanesFullError(
        requested,
        requested === 'scsi'
          ? lanes.scsi
            ? Math.min(scsiTargets, DEFAULT_SCSI_TARGETS)
            : 0
          : lanes.rootPorts.length,
      );
    }
    return { bus: requested, lane };
  }
  const lane = freeScsi() ?? freePort();
  if (lane === undefined) {
    const scsiCapacity = lanes.scsi ? Math.min(scsiTargets, DEFAULT_SCSI_TARGETS) : 0;
    // Name the frontend the sandbox mainly offers, so the message points at what is full.
    throw scsiCapacity > 0
      ? new LanesFullError('scsi', scsiCapacity)
      : new LanesFullError('virtio-blk', lanes.rootPorts.length);
  }
  return { bus: lane.bus, lane };
}

export function sameLane(a: Lane, b: Lane): boolean {
  return a.bus === 'scsi'
    ? b.bus === 'scsi' && a.scsiId === b.scsiId
    : b.bus === 'virtio-blk' && a.port === b.port;
}
