import type { QmpExecutor } from '../qmp/index.js';
import type { Lane } from './qemu-args.js';
import { generationOf, type PeripheralDevice } from './qemu-view.js';

// Where each device of a sandbox sits, remembered between lane inspections. An attach reads every
// peripheral's lane (qom-get parent_bus, and scsi-id on the scsi bus): 1 + 2N round trips on a
// monitor with N devices, each queued behind the guest's own QMP traffic. A device's lane cannot
// change while it exists, and QEMU tells every monitor when one goes (DEVICE_DELETED, in wire order
// before any later reply), so a lane read once stays true until that event: only the listing
// (qom-list) is read on every attach. Forgotten whole when the session reconnects (events sent
// while it was away are lost; a restarted QEMU starts afresh), and per id when a listing no longer
// shows it or shows it with another type.
//
// After a whole listing, the memo also keeps the sandbox's lanes themselves (whether vmplug-scsi0
// exists, the root ports): with the devices vmplug places remembered as it places them
// (rememberLane) and those that go forgotten on their event, it then knows every scsi lane taken,
// since only vmplug puts devices on vmplug-scsi0 (NICs go on root ports, Kata uses its own scsi0).
// A scsi lane is then chosen without asking QEMU (knownLanes); one that someone took behind
// vmplug's back is refused by device_add, which drops this knowledge (forgetLanes) and tries once
// more on a lane read afresh (steps.ts). The event of a device the memo never saw drops it too.

/** What a whole listing told beside the devices' lanes (lanes.ts SandboxLanes without `used`). */
export interface LaneLayout {
  scsi: boolean;
  rootPorts: string[];
}

interface Memo {
  generation: number | undefined;
  lanes: Map<string, { type: string; lane: Lane | undefined }>;
  /** DEVICE_DELETED events seen: a lane read while one came in may be of a device gone since. */
  deletions: number;
  /** Set by a whole listing whose every lane is in `lanes`; dropped when that may no longer hold. */
  layout: LaneLayout | undefined;
}

const memos = new WeakMap<QmpExecutor, Memo>();

function memoOf(qmp: QmpExecutor): Memo {
  let memo = memos.get(qmp);
  if (memo === undefined) {
    const created: Memo = {
      generation: generationOf(qmp),
      lanes: new Map(),
      deletions: 0,
      layout: undefined,
    };
    qmp.subscribe('DEVICE_DELETED', (event) => {
      const id = (event.data as { device?: unknown } | undefined)?.device;
      created.deletions++;
      if (typeof id !== 'string' || !created.lanes.delete(id)) created.layout = undefined;
    });
    memos.set(qmp, created);
    memo = created;
  }
  const generation = generationOf(qmp);
  if (memo.generation !== generation) {
    memo.generation = generation;
    memo.lanes.clear();
    memo.layout = undefined;
  }
  return memo;
}

/**
 * The lanes of `devices` (one listing of the sandbox), reading from QEMU only those not known yet.
 * `read` is laneOfDevice; a failed read is not remembered.
 */
export async function lanesOf(
  qmp: QmpExecutor,
  devices: readonly PeripheralDevice[],
  read: (device: PeripheralDevice) => Promise<Lane | undefined>,
): Promise<Array<Lane | undefined>> {
  const memo = memoOf(qmp);
  const listed = new Set(devices.map((d) => d.id));
  for (const id of memo.lanes.keys()) if (!listed.has(id)) memo.lanes.delete(id);
  const generation = memo.generation;
  const deletions = memo.deletions;
  // Until this listing's lanes are all in, the memo is no whole view.
  memo.layout = undefined;
  return Promise.all(
    devices.map(async (d) => {
      const known = memo.lanes.get(d.id);
      if (known !== undefined && known.type === d.type) return known.lane;
      const lane = await read(d);
      // Not remembered when a reconnect or a deletion happened while it was read.
      if (generationOf(qmp) === generation && memo.deletions === deletions) {
        memo.lanes.set(d.id, { type: d.type, lane });
      }
      return lane;
    }),
  );
}

/**
 * After lanesOf() of a whole listing: keeps its layout, so the memo is a whole view of the lanes,
 * unless a reconnect or a deletion came while the lanes were read (then the next attach lists).
 */
export function rememberLayout(
  qmp: QmpExecutor,
  layout: LaneLayout,
  seen: { generation: number | undefined; deletions: number },
): void {
  const memo = memoOf(qmp);
  if (memo.generation === seen.generation && memo.deletions === seen.deletions) memo.layout = layout;
}

/** The memo's generation and deletion count now, for rememberLayout() after a listing. */
export function memoMark(qmp: QmpExecutor): { generation: number | undefined; deletions: number } {
  const memo = memoOf(qmp);
  return { generation: memo.generation, deletions: memo.deletions };
}

/** The layout and every known lane, when the memo holds a whole view; else undefined. */
export function knownLanes(qmp: QmpExecutor): (LaneLayout & { used: Lane[] }) | undefined {
  const memo = memoOf(qmp);
  if (memo.layout === undefined) return undefined;
  const used = [...memo.lanes.values()].flatMap((e) => (e.lane !== undefined ? [e.lane] : []));
  return { ...memo.layout, used };
}

/** A device_add found a lane taken that the memo thought free: the next attach lists again. */
export function forgetLanes(qmp: QmpExecutor): void {
  memoOf(qmp).layout = undefined;
}

/**
 * Remembers the lane of a device vmplug itself just placed (its device_add answered), so the next
 * attach's inspection of this sandbox need not read it back: under concurrency those two qom-gets
 * per attach, queued behind the guest's own QMP traffic, were most of the lane listing's time.
 * Called under the sandbox's lock, which every vmplug device_del also takes, so no DEVICE_DELETED
 * of this id can be in flight.
 */
export function rememberLane(qmp: QmpExecutor, device: PeripheralDevice, lane: Lane): void {
  memoOf(qmp).lanes.set(device.id, { type: device.type, lane });
}
