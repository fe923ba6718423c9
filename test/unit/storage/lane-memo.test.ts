import { describe, expect, it } from 'vitest';
import { rememberLane } from '../../../storage/lane-memo.js';
import { inspectLanes, knownScsiLane } from '../../../storage/lanes.js';
import { FakeQemu } from '../fakes/qemu.js';

const qomGets = (q: FakeQemu): number => q.calls.filter((c) => c.command === 'qom-get').length;

async function addDisk(q: FakeQemu, id: string, lane: { scsiId: number } | { port: string }): Promise<void> {
  await q.execute('blockdev-add', { driver: 'null-co', 'node-name': `n-${id}` });
  await q.execute(
    'device_add',
    'scsiId' in lane
      ? { driver: 'scsi-hd', id, drive: `n-${id}`, bus: 'vmplug-scsi0.0', 'scsi-id': lane.scsiId }
      : { driver: 'virtio-blk-pci', id, drive: `n-${id}`, bus: lane.port, addr: '0' },
  );
}

describe('lane memo (inspectLanes)', () => {
  it('reads each device lane once, then only the listing', async () => {
    const q = new FakeQemu();
    await addDisk(q, 'd0', { scsiId: 0 });
    await addDisk(q, 'd1', { port: 'vmplug-rp0' });
    const first = await inspectLanes(q);
    const after = qomGets(q);
    const second = await inspectLanes(q);
    expect(second).toEqual(first);
    expect(qomGets(q)).toBe(after);
    expect(second.used).toEqual(
      expect.arrayContaining([
        { bus: 'scsi', scsiId: 0 },
        { bus: 'virtio-blk', port: 'vmplug-rp0' },
      ]),
    );
  });

  it('forgets a device on DEVICE_DELETED: the same id on another lane is read again', async () => {
    const q = new FakeQemu();
    await addDisk(q, 'd0', { scsiId: 0 });
    await inspectLanes(q);
    await q.execute('device_del', { id: 'd0' });
    await addDisk(q, 'd0b', { scsiId: 9 });
    await q.execute('blockdev-del', { 'node-name': 'n-d0' });
    await addDisk(q, 'd0', { scsiId: 5 });
    const lanes = await inspectLanes(q);
    expect(lanes.used).toEqual(
      expect.arrayContaining([
        { bus: 'scsi', scsiId: 5 },
        { bus: 'scsi', scsiId: 9 },
      ]),
    );
    expect(lanes.used).not.toContainEqual({ bus: 'scsi', scsiId: 0 });
  });

  it('forgets everything when the session reconnected (events may have been lost)', async () => {
    const q = new FakeQemu();
    let generation = 1;
    Object.defineProperty(q, 'generation', { get: () => generation });
    await addDisk(q, 'd0', { scsiId: 0 });
    await inspectLanes(q);
    // Behind the memo's back (no event): only a reconnect makes it read again.
    const dev = q.devices.get('d0');
    if (dev !== undefined) dev.scsiId = 3;
    expect((await inspectLanes(q)).used).toContainEqual({ bus: 'scsi', scsiId: 0 });
    generation = 2;
    expect((await inspectLanes(q)).used).toContainEqual({ bus: 'scsi', scsiId: 3 });
  });

  it('knows the lane of a device vmplug placed itself: the next inspection reads none back', async () => {
    const q = new FakeQemu();
    await addDisk(q, 'd0', { scsiId: 0 });
    await inspectLanes(q);
    await addDisk(q, 'd1', { scsiId: 1 });
    rememberLane(q, { id: 'd1', type: 'scsi-hd' }, { bus: 'scsi', scsiId: 1 });
    const before = qomGets(q);
    expect((await inspectLanes(q)).used).toContainEqual({ bus: 'scsi', scsiId: 1 });
    expect(qomGets(q)).toBe(before);
  });

  it('after a whole listing, knows the next free scsi target without QEMU; root ports are always listed', async () => {
    const q = new FakeQemu();
    expect(knownScsiLane(q, 'auto')).toBeUndefined();
    await addDisk(q, 'd0', { scsiId: 0 });
    await inspectLanes(q);
    const calls = q.calls.length;
    expect(knownScsiLane(q, 'auto')).toEqual({ bus: 'scsi', lane: { bus: 'scsi', scsiId: 1 } });
    expect(knownScsiLane(q, 'scsi')).toEqual({ bus: 'scsi', lane: { bus: 'scsi', scsiId: 1 } });
    expect(knownScsiLane(q, 'virtio-blk')).toBeUndefined();
    // Full by the memo's count: QEMU's listing decides.
    expect(knownScsiLane(q, 'scsi', 1)).toBeUndefined();
    expect(q.calls.length).toBe(calls);
  });

  it('drops that view on the event of a device it never saw, and on a reconnect', async () => {
    const q = new FakeQemu();
    let generation = 1;
    Object.defineProperty(q, 'generation', { get: () => generation });
    await inspectLanes(q);
    expect(knownScsiLane(q, 'auto')).toBeDefined();
    // A device placed and removed behind its back: what else changed is unknown.
    q.emit('DEVICE_DELETED', { device: 'someone-elses' });
    expect(knownScsiLane(q, 'auto')).toBeUndefined();
    await inspectLanes(q);
    expect(knownScsiLane(q, 'auto')).toBeDefined();
    generation = 2;
    expect(knownScsiLane(q, 'auto')).toBeUndefined();
  });
});
