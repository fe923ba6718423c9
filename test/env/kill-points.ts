import type { VolumeState } from '../../api/index.js';

// Where the crash suites kill vmplugd (daemon/failpoints.ts: SIGKILL just before or just after a
// journal write), one table for both engines. Detach writes the same states in both; attach
// differs in which writes are merged.

export interface KillPoint {
  kind: 'kill-before' | 'kill-after';
  state: VolumeState;
  /** The VMPLUG_FAILPOINT value. */
  failpoint: string;
  /** A volume id of its own per point and operation, e.g. `a-kill-after-pending`. */
  volumeId: string;
  /** The test's title. */
  title: string;
}

function points(op: 'attach' | 'detach', table: [KillPoint['kind'], VolumeState][]): KillPoint[] {
  return table.map(([kind, state]) => ({
    kind,
    state,
    failpoint: `${kind}:${state}`,
    volumeId: `${op[0]}-${kind}-${state.toLowerCase()}`,
    title: `${op} killed ${kind.slice(5)} writing ${state}: restart leaves it attached or clean`,
  }));
}

export const ATTACH_KILL_POINTS = {
  // The QMP engine writes Pending, adds the secret, passes SecretAdded, adds the node, passes
  // BlockdevAdded (passed states are not written, Pending covers them; the failpoint still fires
  // there), adds the device, then writes DeviceAdded+Attached in one write.
  kata: points('attach', [
    ['kill-after', 'Pending'],
    ['kill-after', 'SecretAdded'],
    ['kill-after', 'BlockdevAdded'],
    ['kill-before', 'Attached'],
  ]),
  // The libvirt engine writes Pending, defines the secret, SecretAdded, attaches the disk, then
  // BlockdevAdded+DeviceAdded in one write, checks libvirt's XML, then Attached.
  libvirt: points('attach', [
    ['kill-after', 'Pending'],
    ['kill-after', 'SecretAdded'],
    ['kill-before', 'DeviceAdded'],
    ['kill-after', 'DeviceAdded'],
  ]),
};

// Both engines reach these states; the QMP engine writes only Detaching and passes DeviceDeleted and
// BlockdevDeleted unwritten (the failpoint fires there all the same).
export const DETACH_KILL_POINTS = points('detach', [
  ['kill-after', 'Detaching'],
  ['kill-before', 'DeviceDeleted'],
  ['kill-after', 'DeviceDeleted'],
  ['kill-after', 'BlockdevDeleted'],
]);
