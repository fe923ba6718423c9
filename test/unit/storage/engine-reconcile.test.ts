import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { SandboxId, VolumeId } from '../../../core/ids.js';
import { type JournalRecord, newRecord, transition, type VolumeState } from '../../../storage/journal.js';
import { volumeNames } from '../../../storage/naming.js';
import { blockdevHostDevice, blockdevRbd, deviceArgs, type Lane } from '../../../storage/qemu-args.js';
import { confPath, writeConfFile } from '../../../storage/rbd-conf-files.js';
import { type AttachSpec, specFingerprint, toStoredSpec } from '../../../storage/volume-spec.js';
import { FakeQemu } from '../fakes/qemu.js';
import {
  type Bed,
  blockSpec,
  closedPort,
  fakeMonitor,
  KEY,
  makeBed,
  rbdSpec,
  sb,
  sb2,
  vol,
} from './engine-helpers.js';

// A crash of vmplugd at any point leaves a journal record in some state and some of its QEMU
// objects. Each case saves the record a crash at that point leaves, builds the objects that may
// exist then in the fake QEMU, and checks that reconcile converges: finished or fully gone.

const FP = Buffer.alloc(32, 3);
const scsi0: Lane = { bus: 'scsi', scsiId: 0 };
const rp0: Lane = { bus: 'virtio-blk', port: 'vmplug-rp0' };

const ATTACH_PATH: Record<'block' | 'rbd', VolumeState[]> = {
  block: ['BlockdevAdded', 'DeviceAdded', 'Attached'],
  rbd: ['SecretAdded', 'BlockdevAdded', 'DeviceAdded', 'Attached'],
};

/** A record walked through the model's transitions up to `state`. */
function recordAt(
  sandboxId: SandboxId,
  volumeId: VolumeId,
  spec: AttachSpec,
  state: VolumeState,
  lane: Lane,
): JournalRecord {
  let r = newRecord({
    sandboxId,
    volumeId,
    kind: 'kata',
    spec: toStoredSpec(spec),
    fingerprint: specFingerprint(spec, FP),
    bus: lane.bus,
    lane,
  });
  if (state === 'Pending') return r;
  const detach = ['Detaching', 'DetachPending', 'DeviceDeleted', 'BlockdevDeleted'];
  const attachTo = detach.includes(state) ? 'Attached' : state;
  for (const s of ATTACH_PATH[spec.mode]) {
    r = transition(r, s);
    if (s === attachTo) break;
  }
  if (!detach.includes(state)) return r;
  r = transition(r, 'Detaching');
  if (state === 'Detaching') return r;
  if (state === 'DetachPending') return transition(r, 'DetachPending');
  r = transition(r, 'DeviceDeleted');
  if (state === 'DeviceDeleted') return r;
  return transition(r, 'BlockdevDeleted');
}

interface Objects {
  secret?: boolean;
  node?: boolean;
  device?: boolean;
}

async function leave(
  bed: Bed,
  q: FakeQemu,
  sandboxId: SandboxId,
  volumeId: VolumeId,
  spec: AttachSpec,
  state: VolumeState,
  lane: Lane,
  objects: Objects,
): Promise<JournalRecord> {
  const record = recordAt(sandboxId, volumeId, spec, state, lane);
  await bed.journal.save(record);
  const names = volumeNames(sandboxId, volumeId);
  if (spec.mode === 'rbd') await writeConfFile(bed.stateDir, names);
  if (objects.secret) q.addSecret(names.secret);
  if (objects.node) {
    const node =
      spec.mode === 'block'
        ? blockdevHostDevice(names, spec.source, spec.readOnly)
        : blockdevRbd(names, spec.source, { readOnly: false, confPath: confPath(bed.stateDir, names) });
    q.addNode(names.node, node as unknown as Record<string, unknown>);
  }
  if (objects.device) q.addDevice(deviceArgs(names, lane) as unknown as Record<string, unknown>);
  return record;
}

describe('reconcile after a crash at each journal state', () => {
  let bed: Bed;
  let mon: Awaited<ReturnType<typeof fakeMonitor>>;
  beforeEach(async () => {
    bed = await makeBed();
    mon = await fakeMonitor();
  });
  afterEach(async () => {
    await mon.close();
    await bed.cleanup();
  });

  const clean = { devices: [], nodes: [], secrets: [] };

  const rollbacks: [string, VolumeState, Objects][] = [
    ['Pending, nothing created yet', 'Pending', {}],
    ['Pending, secret added before the crash', 'Pending', { secret: true }],
    // SecretAdded and BlockdevAdded are passed unwritten (steps.ts pass): a crash after
    // blockdev-add leaves a Pending record with both objects.
    ['Pending, secret and node added before the crash', 'Pending', { secret: true, node: true }],
    ['SecretAdded, node added before the crash', 'SecretAdded', { secret: true, node: true }],
    ['SecretAdded, node never added', 'SecretAdded', { secret: true }],
    ['BlockdevAdded, device never added', 'BlockdevAdded', { secret: true, node: true }],
  ];
  for (const [title, state, objects] of rollbacks) {
    it(`rbd ${title}: rolled back, secret, node and conf file gone`, async () => {
      const spec = rbdSpec(mon.address);
      await leave(bed, bed.qemu, sb, vol('v'), spec, state, scsi0, objects);
      const summary = await bed.engine.reconcile();
      expect(summary.repairs).toEqual([{ action: 'rolled-back-attach', sandboxId: sb, volumeId: 'v' }]);
      expect(bed.qemu.vmplugState()).toEqual(clean);
      expect(await bed.journal.list()).toEqual([]);
      expect(await readdir(join(bed.stateDir, 'rbd'))).toEqual([]);
    });
  }

  it('block BlockdevAdded with the device added before the crash: finished, lane read from QEMU', async () => {
    const spec = blockSpec('/dev/loop3', { bus: 'virtio-blk' });
    // The record holds the lane chosen before device_add; QEMU holds the truth.
    await leave(bed, bed.qemu, sb, vol('v'), spec, 'BlockdevAdded', rp0, { node: true, device: true });
    const summary = await bed.engine.reconcile();
    expect(summary.repairs).toEqual([{ action: 'finished-attach', sandboxId: sb, volumeId: 'v' }]);
    const r = await bed.journal.load(sb, vol('v'));
    expect(r?.state).toBe('Attached');
    expect(r?.lane).toEqual(rp0);
    expect(bed.qemu.vmplugState().devices).toHaveLength(1);
  });

  it('rbd DeviceAdded: finished', async () => {
    await leave(bed, bed.qemu, sb, vol('v'), rbdSpec(mon.address), 'DeviceAdded', scsi0, {
      secret: true,
      node: true,
      device: true,
    });
    const summary = await bed.engine.reconcile();
    expect(summary.repairs.map((x) => x.action)).toEqual(['finished-attach']);
    expect((await bed.journal.load(sb, vol('v')))?.state).toBe('Attached');
    // A retried attach with the same spec now answers 200.
    expect((await bed.engine.attach(sb, vol('v'), rbdSpec(mon.address), bed.ctx)).created).toBe(false);
  });

  it('an Attached record whose device vanished (QEMU restarted) is cleared, and a retry attaches anew', async () => {
    const spec = rbdSpec(mon.address);
    await leave(bed, bed.qemu, sb, vol('v'), spec, 'Attached', scsi0, { secret: true, node: true });
    const summary = await bed.engine.reconcile();
    expect(summary.repairs).toEqual([{ action: 'cleared-lost-attachment', sandboxId: sb, volumeId: 'v' }]);
    expect(bed.qemu.vmplugState()).toEqual(clean);
    expect(await bed.journal.list()).toEqual([]);

    // Without a reconcile in between, the retried attach notices by itself.
    await leave(bed, bed.qemu, sb, vol('w'), spec, 'Attached', scsi0, {});
    const res = await bed.engine.attach(sb, vol('w'), spec, bed.ctx);
    expect(res.created).toBe(true);
    expect(bed.qemu.vmplugState().devices).toEqual([volumeNames(sb, vol('w')).device]);
  });

  it('a retried attach resumes a half-done one itself (before any reconcile)', async () => {
    const spec = blockSpec('/dev/loop3');
    await leave(bed, bed.qemu, sb, vol('v'), spec, 'BlockdevAdded', scsi0, { node: true });
    const res = await bed.engine.attach(sb, vol('v'), spec, bed.ctx);
    expect(res.attachment.state).toBe('Attached');
    expect(bed.qemu.vmplugState().devices).toHaveLength(1);
    expect(bed.qemu.calls.filter((c) => c.command === 'blockdev-add')).toHaveLength(0);
  });

  it('rbd Pending with secret, node and device (crash before the one write after Pending): finished', async () => {
    await leave(bed, bed.qemu, sb, vol('v'), rbdSpec(mon.address), 'Pending', rp0, {
      secret: true,
      node: true,
      device: true,
    });
    const summary = await bed.engine.reconcile();
    expect(summary.repairs).toEqual([{ action: 'finished-attach', sandboxId: sb, volumeId: 'v' }]);
    const r = await bed.journal.load(sb, vol('v'));
    expect(r?.state).toBe('Attached');
    expect(r?.lane).toEqual(rp0);
  });

  it('a retried rbd attach resumes a Pending record whose secret and node QEMU already holds', async () => {
    const spec = rbdSpec(mon.address);
    await leave(bed, bed.qemu, sb, vol('v'), spec, 'Pending', scsi0, { secret: true, node: true });
    const res = await bed.engine.attach(sb, vol('v'), spec, bed.ctx);
    expect(res.attachment.state).toBe('Attached');
    expect(bed.qemu.vmplugState().devices).toEqual([volumeNames(sb, vol('v')).device]);
    expect(bed.qemu.vmplugState().secrets).toHaveLength(1);
    expect(bed.qemu.vmplugState().nodes).toHaveLength(1);
  });

  it('a retried rbd attach resumed before blockdev-add checks the monitors again', async () => {
    const spec = rbdSpec(await closedPort());
    await leave(bed, bed.qemu, sb, vol('v'), spec, 'SecretAdded', scsi0, { secret: true });
    await expect(bed.engine.attach(sb, vol('v'), spec, bed.ctx)).rejects.toMatchObject({
      code: 'CEPH_UNREACHABLE',
    });
    expect(bed.qemu.calls.map((c) => c.command)).not.toContain('blockdev-add');
    // Left for reconcile, which rolls it back.
    expect((await bed.engine.reconcile()).repairs.map((r) => r.action)).toEqual(['rolled-back-attach']);
    expect(bed.qemu.vmplugState()).toEqual(clean);
  });

  const detaches: [VolumeState, Objects, 'scsi' | 'virtio-blk'][] = [
    ['Detaching', { secret: true, node: true, device: true }, 'virtio-blk'],
    ['Detaching', { secret: true, node: true }, 'scsi'],
    // DeviceDeleted and BlockdevDeleted are passed unwritten: Detaching with less and less left.
    ['Detaching', { secret: true }, 'scsi'],
    ['Detaching', {}, 'virtio-blk'],
    ['DetachPending', { secret: true, node: true, device: true }, 'virtio-blk'],
    ['DeviceDeleted', { secret: true, node: true }, 'scsi'],
    ['DeviceDeleted', { secret: true }, 'scsi'],
    ['BlockdevDeleted', { secret: true }, 'scsi'],
    ['BlockdevDeleted', {}, 'scsi'],
  ];
  for (const [state, objects, bus] of detaches) {
    it(`rbd ${state} with ${Object.keys(objects).join('+') || 'nothing'} left: detach finished`, async () => {
      await leave(
        bed,
        bed.qemu,
        sb,
        vol('v'),
        rbdSpec(mon.address),
        state,
        bus === 'scsi' ? scsi0 : rp0,
        objects,
      );
      const summary = await bed.engine.reconcile();
      expect(summary.repairs).toEqual([{ action: 'finished-detach', sandboxId: sb, volumeId: 'v' }]);
      expect(bed.qemu.vmplugState()).toEqual(clean);
      expect(await bed.journal.list()).toEqual([]);
      expect(await readdir(join(bed.stateDir, 'rbd'))).toEqual([]);
    });
  }

  it('a detach the guest still holds stays pending, untouched, until it lets go', async () => {
    bed.qemu.opts.guestUnplug = 'never';
    await leave(bed, bed.qemu, sb, vol('v'), blockSpec('/dev/loop3'), 'DetachPending', rp0, {
      node: true,
      device: true,
    });
    const s1 = await bed.engine.reconcile();
    expect(s1.pending).toEqual([{ sandboxId: sb, volumeId: 'v' }]);
    expect(s1.repairs).toEqual([]);
    expect(bed.qemu.vmplugState().nodes).toHaveLength(1);
    expect((await bed.journal.load(sb, vol('v')))?.state).toBe('DetachPending');
    bed.qemu.guestReleases(volumeNames(sb, vol('v')).device);
    const s2 = await bed.engine.reconcile();
    expect(s2.repairs.map((r) => r.action)).toEqual(['finished-detach']);
    expect(bed.qemu.vmplugState()).toEqual(clean);
  });

  it('drops the records (and conf files) of sandboxes that are gone; skips unreachable ones', async () => {
    const gone = 'c'.repeat(64) as SandboxId;
    await leave(bed, new FakeQemu(), gone, vol('v1'), rbdSpec(mon.address), 'Attached', scsi0, {});
    await leave(bed, new FakeQemu(), gone, vol('v2'), blockSpec(), 'DetachPending', scsi0, {});
    const q2 = new FakeQemu();
    await leave(bed, q2, sb2, vol('v'), blockSpec(), 'BlockdevAdded', scsi0, { node: true });
    bed.dir.presence.set(sb2, { state: 'unreachable', reason: 'QMP_BUSY' });
    const summary = await bed.engine.reconcile();
    expect(summary.repairs).toEqual([
      { action: 'dropped-record', sandboxId: gone, volumeId: 'v1' },
      { action: 'dropped-record', sandboxId: gone, volumeId: 'v2' },
    ]);
    expect(summary.skipped).toEqual([{ sandboxId: sb2, reason: 'QMP_BUSY' }]);
    expect(await bed.journal.sandboxIds()).toEqual([sb2]);
    expect((await bed.journal.load(sb2, vol('v')))?.state).toBe('BlockdevAdded');
    expect(await readdir(join(bed.stateDir, 'rbd'))).toEqual([]);
  });

  it("removes vmplug objects no record explains, and leaves Kata's and quarantined ones", async () => {
    const spec = blockSpec('/dev/loop1');
    await bed.engine.attach(sb, vol('kept'), spec, bed.ctx);
    const stray = volumeNames(sb, vol('stray'));
    bed.qemu.addSecret(stray.secret);
    bed.qemu.addNode(stray.node);
    bed.qemu.addDevice(deviceArgs(stray, { bus: 'scsi', scsiId: 9 }) as unknown as Record<string, unknown>);
    const lone = volumeNames(sb, vol('lone'));
    bed.qemu.addNode(lone.node);
    // Kata's own node and device.
    bed.qemu.addNode('drive-kata-1');
    bed.qemu.addDevice({
      driver: 'scsi-hd',
      id: 'scsi-kata-1',
      drive: 'drive-kata-1',
      bus: 'scsi0.0',
      'scsi-id': 0,
    });
    // A record vmplug can no longer read: its objects stay.
    const q = volumeNames(sb, vol('unreadable'));
    bed.qemu.addNode(q.node);
    await writeFile(join(bed.journal.root, sb, '.unreadable.json.corrupt-1'), '{');
    // An orphaned conf file.
    await writeConfFile(bed.stateDir, volumeNames(sb2, vol('orphan')));

    const summary = await bed.engine.reconcile();
    expect(summary.repairs.map((r) => [r.action, r.name])).toEqual([
      ['removed-stray-device', stray.device],
      ['removed-stray-node', lone.node],
      ['removed-stray-node', stray.node],
      ['removed-stray-secret', stray.secret],
      ['removed-stray-conf', volumeNames(sb2, vol('orphan')).hash],
    ]);
    const kept = volumeNames(sb, vol('kept'));
    expect(bed.qemu.vmplugState()).toEqual({
      devices: [kept.device],
      nodes: [kept.node, q.node].sort(),
      secrets: [],
    });
    expect(bed.qemu.nodes.has('drive-kata-1')).toBe(true);
    expect(bed.qemu.devices.has('scsi-kata-1')).toBe(true);
    // Every repair is logged.
    const logged = bed.log.lines.filter((l) => l.includes('"repair"'));
    expect(logged).toHaveLength(summary.repairs.length);
    expect(bed.log.lines.join('\n')).not.toContain(KEY);
    // A second round finds nothing to do.
    expect((await bed.engine.reconcile()).repairs).toEqual([]);
  });
});
