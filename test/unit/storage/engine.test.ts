import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  BackendError,
  CephUnreachableError,
  ConflictError,
  DetachPendingError,
  DeviceInUseError,
  LanesFullError,
  NotFoundError,
  ValidationError,
} from '../../../core/errors.js';
import { volumeNames } from '../../../storage/naming.js';
import { confPath } from '../../../storage/rbd-conf-files.js';
import { parseAttachRequest } from '../../../storage/volume-spec.js';
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

const OTHER_KEY = 'AQDuSQNrSIzGGhAAA42jGo01/mILR5NFi7XNZA==';
const MUTATIONS = new Set([
  'object-add',
  'object-del',
  'blockdev-add',
  'blockdev-del',
  'device_add',
  'device_del',
]);

async function allFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) out.push(join(e.parentPath, e.name));
  }
  return out;
}

describe('AttachEngine, block mode', () => {
  let bed: Bed;
  beforeEach(async () => {
    bed = await makeBed();
  });
  afterEach(async () => {
    await bed.cleanup();
  });

  it('takes a scsi target from the session memo without a listing; one taken behind its back costs one more try', async () => {
    const listings = () =>
      bed.qemu.calls.filter((c) => c.command === 'qom-list' && c.args.path === '/machine/peripheral').length;
    await bed.engine.attach(sb, vol('m1'), blockSpec('/dev/loop1'), bed.ctx);
    const afterFirst = listings();
    await bed.engine.attach(sb, vol('m2'), blockSpec('/dev/loop2'), bed.ctx);
    expect(listings()).toBe(afterFirst);
    await bed.journal.settled();
    expect((await bed.journal.load(sb, vol('m2')))?.lane).toEqual({ bus: 'scsi', scsiId: 1 });

    // An operator's disk on target 2, the memo's next free one (device_add sends no event).
    bed.qemu.addNode('operator-node');
    bed.qemu.addDevice({
      driver: 'scsi-hd',
      id: 'operator-disk',
      drive: 'operator-node',
      bus: 'vmplug-scsi0.0',
      'scsi-id': 2,
    });
    const third = await bed.engine.attach(sb, vol('m3'), blockSpec('/dev/loop3'), bed.ctx);
    expect(third.attachment.state).toBe('Attached');
    await bed.journal.settled();
    expect((await bed.journal.load(sb, vol('m3')))?.lane).toEqual({ bus: 'scsi', scsiId: 3 });
    expect(bed.log.lines.some((l) => l.includes('lane taken behind vmplug'))).toBe(true);
    // Listed again since, the memo knows the operator's disk: no more refusals.
    const adds = () => bed.qemu.calls.filter((c) => c.command === 'device_add').length;
    const addsBefore = adds();
    await bed.engine.attach(sb, vol('m4'), blockSpec('/dev/loop4'), bed.ctx);
    expect(adds()).toBe(addsBefore + 1);
  });

  it('checks the host device beside the journal read; a volume already attached calls that check off', async () => {
    await bed.cleanup();
    const events: string[] = [];
    const signals: AbortSignal[] = [];
    bed = await makeBed({
      engine: {
        checkHostDevice: async (path, { signal }) => {
          events.push('host check');
          signals.push(signal);
          return path;
        },
      },
    });
    const load = bed.journal.load.bind(bed.journal);
    bed.journal.load = async (...args) => {
      events.push('load asked');
      const r = await load(...args);
      events.push('load answered');
      return r;
    };
    await bed.engine.attach(sb, vol('h1'), blockSpec('/dev/loop1'), bed.ctx);
    expect(events.indexOf('host check')).toBeLessThan(events.indexOf('load answered'));
    expect(events.filter((e) => e === 'host check')).toHaveLength(1);
    expect(signals[0]?.aborted).toBe(false);
    // The same attach again: reused as it is, its early check called off.
    await bed.engine.attach(sb, vol('h1'), blockSpec('/dev/loop1'), bed.ctx);
    expect(signals[1]?.aborted).toBe(true);
  });

  it('journals Pending on a named bus before the lane is known, and Attached with the lane', async () => {
    const saved: { state: string; lane: unknown }[] = [];
    const save = bed.journal.save.bind(bed.journal);
    bed.journal.save = async (record, opts) => {
      saved.push({ state: record.state, lane: record.lane });
      await save(record, opts);
    };
    await bed.engine.attach(sb, vol('pvc-early'), blockSpec('/dev/loop7', { bus: 'virtio-blk' }), bed.ctx);
    await bed.journal.settled();
    expect(saved).toEqual([{ state: 'Pending', lane: undefined }]);
    const done = await bed.journal.load(sb, vol('pvc-early'));
    expect(done).toMatchObject({ state: 'Attached', bus: 'virtio-blk', lane: { bus: 'virtio-blk' } });
  });

  it('attaches a host device as scsi-hd on vmplug-scsi0 and journals every step', async () => {
    const { created, attachment } = await bed.engine.attach(sb, vol('pvc-1'), blockSpec(), bed.ctx);
    const names = volumeNames(sb, vol('pvc-1'));
    expect(created).toBe(true);
    expect(attachment).toMatchObject({
      sandboxId: sb,
      volumeId: 'pvc-1',
      mode: 'block',
      bus: 'scsi',
      state: 'Attached',
      nodeName: names.node,
      deviceId: names.device,
      serial: names.serial,
      readOnly: false,
    });
    expect(attachment.timeline.map((t) => t.step)).toEqual([
      'Pending',
      'BlockdevAdded',
      'DeviceAdded',
      'Attached',
    ]);
    const node = bed.qemu.nodes.get(names.node);
    expect(node?.args).toMatchObject({ driver: 'host_device', filename: '/dev/loop7', 'read-only': false });
    expect(bed.qemu.devices.get(names.device)).toMatchObject({
      type: 'scsi-hd',
      bus: 'vmplug-scsi0.0',
      scsiId: 0,
    });
    const rec = await bed.journal.load(sb, vol('pvc-1'));
    expect(rec?.state).toBe('Attached');
    expect(rec?.lane).toEqual({ bus: 'scsi', scsiId: 0 });
    // Kata's controller is never used.
    expect([...bed.qemu.devices.values()].filter((d) => d.bus === 'scsi0.0')).toEqual([]);
  });

  it('is idempotent for the same spec and refuses a different one with 409', async () => {
    await bed.engine.attach(sb, vol('pvc-1'), blockSpec(), bed.ctx);
    const before = bed.qemu.calls.filter((c) => MUTATIONS.has(c.command)).length;
    const again = await bed.engine.attach(sb, vol('pvc-1'), blockSpec(), bed.ctx);
    expect(again.created).toBe(false);
    expect(again.attachment.state).toBe('Attached');
    expect(bed.qemu.calls.filter((c) => MUTATIONS.has(c.command)).length).toBe(before);
    const err = await bed.engine.attach(sb, vol('pvc-1'), blockSpec('/dev/loop8'), bed.ctx).catch((e) => e);
    expect(err).toBeInstanceOf(ConflictError);
    expect(err.status).toBe(409);
    await expect(
      bed.engine.attach(sb, vol('pvc-1'), blockSpec('/dev/loop7', { readOnly: true }), bed.ctx),
    ).rejects.toBeInstanceOf(ConflictError);
  });

  it('puts virtio-blk on free vmplug root ports, read-only and with the serial', async () => {
    const a = await bed.engine.attach(
      sb,
      vol('v1'),
      blockSpec('/dev/loop1', { bus: 'virtio-blk', readOnly: true }),
      bed.ctx,
    );
    const b = await bed.engine.attach(sb, vol('v2'), blockSpec('/dev/loop2', { bus: 'virtio-blk' }), bed.ctx);
    expect(a.attachment.bus).toBe('virtio-blk');
    expect(a.attachment.readOnly).toBe(true);
    expect(a.attachment.guestHint).toBe(`/dev/disk/by-id/virtio-${a.attachment.serial}`);
    const da = bed.qemu.devices.get(a.attachment.deviceId);
    const db = bed.qemu.devices.get(b.attachment.deviceId);
    expect(da).toMatchObject({ type: 'virtio-blk-pci', bus: 'vmplug-rp0', serial: a.attachment.serial });
    expect(db).toMatchObject({ type: 'virtio-blk-pci', bus: 'vmplug-rp1' });
    expect(bed.qemu.nodes.get(a.attachment.nodeName)?.readOnly).toBe(true);
  });

  it('skips a root port that holds another device (a vmplug NIC) without a refused device_add', async () => {
    bed.qemu.devices.set('vmpnd-0123456789abcdef', {
      id: 'vmpnd-0123456789abcdef',
      type: 'virtio-net-pci',
      bus: 'vmplug-rp0',
    });
    const a = await bed.engine.attach(sb, vol('v1'), blockSpec('/dev/loop1', { bus: 'virtio-blk' }), bed.ctx);
    expect(bed.qemu.devices.get(a.attachment.deviceId)).toMatchObject({ bus: 'vmplug-rp1' });
    expect(bed.qemu.calls.filter((c) => c.command === 'device_add')).toHaveLength(1);
  });

  it("'auto' takes scsi when vmplug-scsi0 exists, virtio-blk when only root ports do", async () => {
    const a = await bed.engine.attach(sb, vol('a1'), blockSpec('/dev/loop1'), bed.ctx);
    expect(a.attachment.bus).toBe('scsi');
    const q2 = new FakeQemu();
    q2.devices.delete('vmplug-scsi0');
    bed.dir.addQemu(sb2, q2);
    const b = await bed.engine.attach(sb2, vol('a1'), blockSpec('/dev/loop1'), bed.ctx);
    expect(b.attachment.bus).toBe('virtio-blk');
    expect(q2.devices.get(b.attachment.deviceId)?.bus).toBe('vmplug-rp0');
  });

  it('answers LANES_FULL when the lanes are taken and leaves nothing behind', async () => {
    const q = new FakeQemu({ rootPorts: 1 });
    bed.dir.addQemu(sb2, q);
    await bed.engine.attach(sb2, vol('v1'), blockSpec('/dev/loop1', { bus: 'virtio-blk' }), bed.ctx);
    const err = await bed.engine
      .attach(sb2, vol('v2'), blockSpec('/dev/loop2', { bus: 'virtio-blk' }), bed.ctx)
      .catch((e) => e);
    expect(err).toBeInstanceOf(LanesFullError);
    expect(err.code).toBe('LANES_FULL');
    expect(q.vmplugState().nodes).toHaveLength(1);
    expect(await bed.journal.load(sb2, vol('v2'))).toBeUndefined();
  });

  it('a sandbox without vmplug lanes is told apart from a full one', async () => {
    const q = new FakeQemu({ rootPorts: 0 });
    q.devices.delete('vmplug-scsi0');
    bed.dir.addQemu(sb2, q);
    const err = await bed.engine.attach(sb2, vol('v1'), blockSpec(), bed.ctx).catch((e) => e);
    expect(err).toBeInstanceOf(LanesFullError);
    expect(err.message).toMatch(/no vmplug virtio-blk lanes/);
    expect(q.calls.map((c) => c.command)).not.toContain('blockdev-add');
  });

  it('honours scsiTargets as the scsi lane capacity', async () => {
    await bed.cleanup();
    bed = await makeBed({ engine: { scsiTargets: 2 } });
    await bed.engine.attach(sb, vol('s1'), blockSpec('/dev/loop1', { bus: 'scsi' }), bed.ctx);
    await bed.engine.attach(sb, vol('s2'), blockSpec('/dev/loop2', { bus: 'scsi' }), bed.ctx);
    await expect(
      bed.engine.attach(sb, vol('s3'), blockSpec('/dev/loop3', { bus: 'scsi' }), bed.ctx),
    ).rejects.toThrow(LanesFullError);
    // auto falls back to a root port when scsi is full.
    const auto = await bed.engine.attach(sb, vol('s4'), blockSpec('/dev/loop4'), bed.ctx);
    expect(auto.attachment.bus).toBe('virtio-blk');
  });

  it('moves to another root port when a device vmplug did not place holds the first one', async () => {
    bed.qemu.addNode('foreign-node', { driver: 'host_device', filename: '/dev/sdz' });
    bed.qemu.addDevice({
      driver: 'virtio-blk-pci',
      id: 'foreign',
      drive: 'foreign-node',
      bus: 'vmplug-rp0',
      addr: '0',
    });
    const a = await bed.engine.attach(sb, vol('v1'), blockSpec('/dev/loop1', { bus: 'virtio-blk' }), bed.ctx);
    expect(bed.qemu.devices.get(a.attachment.deviceId)?.bus).toBe('vmplug-rp1');
  });

  it('rolls back everything when device_add fails, with a typed error', async () => {
    bed.qemu.failOnce('device_add', 'GenericError', "Property 'scsi-hd.drive' can't find value 'x'");
    const err = await bed.engine.attach(sb, vol('pvc-1'), blockSpec(), bed.ctx).catch((e) => e);
    expect(err).toBeInstanceOf(BackendError);
    expect(err.code).toBe('BACKEND_FAILED');
    expect(err.message).toContain('device_add failed: GenericError');
    expect(bed.qemu.vmplugState()).toEqual({ devices: [], nodes: [], secrets: [] });
    expect(await bed.journal.load(sb, vol('pvc-1'))).toBeUndefined();
    // A retry then succeeds from scratch.
    expect((await bed.engine.attach(sb, vol('pvc-1'), blockSpec(), bed.ctx)).created).toBe(true);
  });

  it('a QMP timeout on blockdev-add is retryable and leaves nothing', async () => {
    await bed.cleanup();
    bed = await makeBed({ engine: { qmpTimeoutMs: 50 } });
    bed.qemu.hang('blockdev-add');
    const err = await bed.engine.attach(sb, vol('pvc-1'), blockSpec(), bed.ctx).catch((e) => e);
    expect(err).toMatchObject({ code: 'BACKEND_FAILED', retryable: true });
    expect(await bed.journal.load(sb, vol('pvc-1'))).toBeUndefined();
  });

  it('refuses unknown sandboxes (404) and unreachable ones (retryable)', async () => {
    await expect(bed.engine.attach(sb2, vol('x'), blockSpec(), bed.ctx)).rejects.toBeInstanceOf(
      NotFoundError,
    );
    bed.dir.presence.set(sb2, { state: 'unreachable', reason: 'QMP_BUSY' });
    await expect(bed.engine.attach(sb2, vol('x'), blockSpec(), bed.ctx)).rejects.toMatchObject({
      code: 'BACKEND_FAILED',
      retryable: true,
    });
  });

  it('a fresh attach sends device_add right after blockdev-add; a detach sends only the deletions', async () => {
    await bed.engine.attach(sb, vol('pvc-1'), blockSpec(), bed.ctx);
    const commands = bed.qemu.calls.map((c) => c.command);
    // The lanes were read under the sandbox's lock before Pending: no second look for the device.
    expect(commands.slice(commands.indexOf('blockdev-add'))).toEqual(['blockdev-add', 'device_add']);
    bed.qemu.calls.length = 0;
    await bed.engine.detach(sb, vol('pvc-1'), bed.ctx);
    // Nothing looked up first: a deletion of what is gone answers "not found", taken as done.
    expect(bed.qemu.calls.map((c) => c.command)).toEqual(['device_del', 'blockdev-del']);
    bed.qemu.calls.length = 0;
    await bed.engine.detach(sb, vol('pvc-1'), bed.ctx);
    expect(bed.qemu.calls).toEqual([]);
  });

  it('a fresh attach finding its device already in QEMU (record quarantined) takes it over, never tears it down', async () => {
    const names = volumeNames(sb, vol('pvc-q'));
    bed.qemu.addNode(names.node);
    bed.qemu.addDevice({
      driver: 'scsi-hd',
      id: names.device,
      drive: names.node,
      bus: 'vmplug-scsi0.0',
      'scsi-id': 3,
    });
    const { attachment } = await bed.engine.attach(sb, vol('pvc-q'), blockSpec(), bed.ctx);
    expect(attachment.state).toBe('Attached');
    expect((await bed.journal.load(sb, vol('pvc-q')))?.lane).toEqual({ bus: 'scsi', scsiId: 3 });
    expect(bed.qemu.calls.map((c) => c.command)).not.toContain('device_del');
    expect(bed.qemu.vmplugState().devices).toEqual([names.device]);
  });

  it('detaches: device, node, record; detach again and of unknown volumes succeeds', async () => {
    await bed.engine.attach(sb, vol('pvc-1'), blockSpec(), bed.ctx);
    await bed.engine.detach(sb, vol('pvc-1'), bed.ctx);
    expect(bed.qemu.vmplugState()).toEqual({ devices: [], nodes: [], secrets: [] });
    expect(await bed.journal.load(sb, vol('pvc-1'))).toBeUndefined();
    await bed.engine.detach(sb, vol('pvc-1'), bed.ctx);
    await bed.engine.detach(sb, vol('never'), bed.ctx);
    await bed.engine.detach(sb2, vol('never'), bed.ctx);
  });

  it('waits for the DEVICE_DELETED naming the virtio-blk device, not its backend', async () => {
    await bed.engine.attach(sb, vol('v1'), blockSpec('/dev/loop1', { bus: 'virtio-blk' }), bed.ctx);
    const seen: string[] = [];
    bed.qemu.subscribe('DEVICE_DELETED', (e) => seen.push(String(e.data?.device ?? e.data?.path)));
    bed.qemu.onCommand((c) => {
      // blockdev-del must never come while the device still exists.
      if (c === 'blockdev-del') expect(bed.qemu.vmplugState().devices).toEqual([]);
    });
    await bed.engine.detach(sb, vol('v1'), bed.ctx);
    expect(seen).toHaveLength(2);
    expect(bed.qemu.vmplugState()).toEqual({ devices: [], nodes: [], secrets: [] });
  });

  it('answers DetachPending while the guest holds the device, and a retry continues', async () => {
    await bed.cleanup();
    bed = await makeBed({ qemu: { guestUnplug: 'never' }, engine: { detachTimeoutMs: 50 } });
    const { attachment } = await bed.engine.attach(
      sb,
      vol('v1'),
      blockSpec('/dev/loop1', { bus: 'virtio-blk' }),
      bed.ctx,
    );
    const err = await bed.engine.detach(sb, vol('v1'), bed.ctx).catch((e) => e);
    expect(err).toBeInstanceOf(DetachPendingError);
    expect(err.code).toBe('DETACH_PENDING');
    expect((await bed.journal.load(sb, vol('v1')))?.state).toBe('DetachPending');
    // The node stays under the device.
    expect(bed.qemu.nodes.has(attachment.nodeName)).toBe(true);
    expect((await bed.engine.get(sb, vol('v1'), bed.ctx)).lastError?.code).toBe('DETACH_PENDING');
    // A retry while still pending: QEMU refuses the second device_del; still pending.
    await expect(bed.engine.detach(sb, vol('v1'), bed.ctx)).rejects.toBeInstanceOf(DetachPendingError);
    // The same attach meanwhile is a retryable 503 (issue 10), never a 409 nor a second disk;
    // another spec is still a conflict.
    const same = await bed.engine
      .attach(sb, vol('v1'), blockSpec('/dev/loop1', { bus: 'virtio-blk' }), bed.ctx)
      .catch((e) => e);
    expect(same.code).toBe('DETACH_PENDING');
    expect(same.retryable).toBe(true);
    await expect(
      bed.engine.attach(sb, vol('v1'), blockSpec('/dev/loop2', { bus: 'virtio-blk' }), bed.ctx),
    ).rejects.toBeInstanceOf(ConflictError);
    expect(bed.qemu.vmplugState().devices).toHaveLength(1);
    bed.qemu.guestReleases(attachment.deviceId);
    // Once the guest lets go, the same attach finishes the detach at once and attaches afresh.
    const again = await bed.engine.attach(
      sb,
      vol('v1'),
      blockSpec('/dev/loop1', { bus: 'virtio-blk' }),
      bed.ctx,
    );
    expect(again.created).toBe(true);
    expect(again.attachment.state).toBe('Attached');
    await bed.engine
      .detach(sb, vol('v1'), bed.ctx)
      .catch(() => bed.qemu.guestReleases(again.attachment.deviceId));
    await bed.engine.detach(sb, vol('v1'), bed.ctx);
    expect(bed.qemu.vmplugState()).toEqual({ devices: [], nodes: [], secrets: [] });
    expect(await bed.journal.load(sb, vol('v1'))).toBeUndefined();
  });

  it('drops the record when the sandbox is gone', async () => {
    await bed.engine.attach(sb, vol('pvc-1'), blockSpec(), bed.ctx);
    bed.dir.presence.delete(sb);
    await bed.engine.detach(sb, vol('pvc-1'), bed.ctx);
    expect(await bed.journal.list()).toEqual([]);
    expect(await bed.journal.sandboxIds()).toEqual([]);
  });

  it('get: record plus query-blockstats; 404 for unknown volumes and sandboxes', async () => {
    await bed.engine.attach(sb, vol('pvc-1'), blockSpec(), bed.ctx);
    const a = await bed.engine.get(sb, vol('pvc-1'), bed.ctx);
    expect(a.stats).toMatchObject({ rd_bytes: 4096, wr_bytes: 8192, size_bytes: 64 * 1024 * 1024 });
    await expect(bed.engine.get(sb, vol('nope'), bed.ctx)).rejects.toMatchObject({ what: 'volume' });
    await expect(bed.engine.get(sb2, vol('nope'), bed.ctx)).rejects.toMatchObject({ what: 'sandbox' });
    expect((await bed.engine.list(sb)).map((x) => x.volumeId)).toEqual(['pvc-1']);
  });

  it('resize: grows with block_resize; refuses shrinking, odd sizes and volumes not attached', async () => {
    const { attachment } = await bed.engine.attach(sb, vol('pvc-1'), blockSpec(), bed.ctx);
    const grown = await bed.engine.resize(sb, vol('pvc-1'), 128 * 1024 * 1024, bed.ctx);
    expect(grown.stats?.size_bytes).toBe(128 * 1024 * 1024);
    expect(bed.qemu.nodes.get(attachment.nodeName)?.size).toBe(128 * 1024 * 1024);
    await expect(bed.engine.resize(sb, vol('pvc-1'), 64 * 1024 * 1024, bed.ctx)).rejects.toBeInstanceOf(
      ValidationError,
    );
    await expect(bed.engine.resize(sb, vol('pvc-1'), 1000, bed.ctx)).rejects.toMatchObject({
      field: 'sizeBytes',
    });
    await expect(bed.engine.resize(sb, vol('nope'), 512, bed.ctx)).rejects.toBeInstanceOf(NotFoundError);
    // The device gone behind vmplug's back: refused, not sent (QEMU 7.2 would crash).
    bed.qemu.devices.delete(attachment.deviceId);
    await expect(bed.engine.resize(sb, vol('pvc-1'), 256 * 1024 * 1024, bed.ctx)).rejects.toBeInstanceOf(
      BackendError,
    );
    expect(bed.qemu.dead).toBe(false);
  });

  it('serializes one sandbox and bounds operations across the node', async () => {
    await bed.cleanup();
    bed = await makeBed({ engine: { maxConcurrentOps: 2 } });
    const qemus = [bed.qemu];
    for (let i = 0; i < 3; i++) {
      const q = new FakeQemu();
      qemus.push(q);
      bed.dir.addQemu(`s${i}` as typeof sb, q);
    }
    let inSandbox = 0;
    let maxInSandbox = 0;
    let inNode = 0;
    let maxInNode = 0;
    for (const q of qemus) {
      q.onCommand(async (c) => {
        if (c !== 'blockdev-add') return;
        const mine = q === bed.qemu;
        if (mine) inSandbox++;
        inNode++;
        maxInSandbox = Math.max(maxInSandbox, inSandbox);
        maxInNode = Math.max(maxInNode, inNode);
        await new Promise((r) => setTimeout(r, 5));
        if (mine) inSandbox--;
        inNode--;
      });
    }
    const sandboxes = [sb, 's0', 's1', 's2'] as (typeof sb)[];
    const results = await Promise.all(
      sandboxes.flatMap((s) =>
        [1, 2, 3].map((i) => bed.engine.attach(s, vol(`v${i}`), blockSpec(`/dev/loop${i}`), bed.ctx)),
      ),
    );
    expect(results.every((r) => r.created)).toBe(true);
    expect(maxInNode).toBeLessThanOrEqual(2);
    expect(maxInSandbox).toBe(1);
    // Distinct lanes in one sandbox.
    const ids = [1, 2, 3].map((i) => bed.qemu.devices.get(volumeNames(sb, vol(`v${i}`)).device)?.scsiId);
    expect(new Set(ids).size).toBe(3);
  });
});

describe('AttachEngine, block mode host-device check', () => {
  it('a refused device leaves no journal record and sends QEMU nothing', async () => {
    const bed = await makeBed({
      engine: {
        checkHostDevice: async () => {
          throw new DeviceInUseError('source.path', '/dev/loop7 is mounted on /mnt');
        },
      },
    });
    try {
      await expect(bed.engine.attach(sb, vol('pvc-in-use'), blockSpec(), bed.ctx)).rejects.toMatchObject({
        code: 'DEVICE_IN_USE',
        status: 409,
        field: 'source.path',
      });
      expect(await bed.journal.list(sb)).toEqual([]);
      expect(bed.qemu.calls.filter((c) => MUTATIONS.has(c.command))).toEqual([]);
    } finally {
      await bed.cleanup();
    }
  });

  it('a refusal that comes after the Pending record was written removes it before answering', async () => {
    let written: () => void = () => {};
    const pendingWritten = new Promise<void>((r) => {
      written = r;
    });
    const bed = await makeBed({
      engine: {
        // The host check answers only once the Pending write (made meanwhile) is durable.
        checkHostDevice: async () => {
          await pendingWritten;
          throw new DeviceInUseError('source.path', '/dev/loop7 is mounted on /mnt');
        },
      },
    });
    const saved: string[] = [];
    const save = bed.journal.save.bind(bed.journal);
    bed.journal.save = async (record, opts) => {
      await save(record, opts);
      saved.push(record.state);
      written();
    };
    try {
      await expect(bed.engine.attach(sb, vol('pvc-late'), blockSpec(), bed.ctx)).rejects.toMatchObject({
        code: 'DEVICE_IN_USE',
      });
      expect(saved).toEqual(['Pending']);
      expect(await bed.journal.list(sb)).toEqual([]);
      expect(bed.qemu.calls.filter((c) => MUTATIONS.has(c.command))).toEqual([]);
    } finally {
      await bed.cleanup();
    }
  });

  it('QEMU and the record get the resolved path; a retry through the same link is idempotent', async () => {
    const bed = await makeBed({ engine: { checkHostDevice: async () => '/dev/rbd4' } });
    try {
      const spec = blockSpec('/dev/disk/by-id/wwn-1');
      const first = await bed.engine.attach(sb, vol('pvc-link'), spec, bed.ctx);
      expect(first.attachment.source).toEqual({ type: 'hostDevice', path: '/dev/rbd4' });
      const add = bed.qemu.calls.find((c) => c.command === 'blockdev-add');
      expect(add?.args.filename).toBe('/dev/rbd4');
      // Pending was written with the requested path, alongside the check; Attached holds the resolved one.
      const stored = (await bed.journal.load(sb, vol('pvc-link')))?.spec;
      expect(stored?.mode === 'block' && stored.source.path).toBe('/dev/rbd4');
      const again = await bed.engine.attach(sb, vol('pvc-link'), spec, bed.ctx);
      expect(again.created).toBe(false);
    } finally {
      await bed.cleanup();
    }
  });
});

describe('AttachEngine lifecycle', () => {
  it('close() waits for operations in flight and refuses new ones (retryable)', async () => {
    const bed = await makeBed();
    try {
      let release!: () => void;
      const held = new Promise<void>((r) => {
        release = r;
      });
      bed.qemu.onCommand(async (c) => {
        if (c === 'device_add') await held;
      });
      const attach = bed.engine.attach(sb, vol('pvc-1'), blockSpec(), bed.ctx);
      await new Promise((r) => setTimeout(r, 20));
      let closed = false;
      const closing = bed.engine.close().then(() => {
        closed = true;
      });
      await new Promise((r) => setTimeout(r, 20));
      expect(closed).toBe(false);
      await expect(
        bed.engine.attach(sb, vol('pvc-2'), blockSpec('/dev/loop2'), bed.ctx),
      ).rejects.toMatchObject({
        retryable: true,
      });
      release();
      expect((await attach).attachment.state).toBe('Attached');
      await closing;
      expect(closed).toBe(true);
    } finally {
      await bed.cleanup();
    }
  });
});

describe('AttachEngine, rbd mode', () => {
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

  it('adds the secret, a per-attach conf with a short mount timeout, then the rbd node', async () => {
    const { attachment } = await bed.engine.attach(sb, vol('pvc-r'), rbdSpec(mon.address), bed.ctx);
    const names = volumeNames(sb, vol('pvc-r'));
    expect(attachment.timeline.map((t) => t.step)).toEqual([
      'Pending',
      'SecretAdded',
      'BlockdevAdded',
      'DeviceAdded',
      'Attached',
    ]);
    expect(bed.qemu.objects.get(names.secret)).toEqual({ type: 'secret', data: KEY });
    const conf = confPath(bed.stateDir, names);
    expect(await readFile(conf, 'utf8')).toMatch(/client_mount_timeout = 5/);
    expect(bed.qemu.nodes.get(names.node)?.args).toMatchObject({
      driver: 'rbd',
      pool: 'rbd',
      image: 'vol1',
      user: 'vmplug',
      'key-secret': names.secret,
      conf,
      server: [{ host: '127.0.0.1', port: mon.address.split(':')[1] }],
    });
    // The key is nowhere but in QEMU's secret object.
    const add = bed.qemu.calls.filter((c) => JSON.stringify(c.args).includes(KEY)).map((c) => c.command);
    expect(add).toEqual(['object-add']);
    await bed.journal.settled();
    for (const f of await allFiles(bed.stateDir)) expect(await readFile(f, 'utf8')).not.toContain(KEY);
    expect(bed.log.lines.join('\n')).not.toContain(KEY);
    expect(JSON.stringify(attachment)).not.toContain(KEY);
    // Detach removes secret and conf too.
    await bed.engine.detach(sb, vol('pvc-r'), bed.ctx);
    expect(bed.qemu.vmplugState()).toEqual({ devices: [], nodes: [], secrets: [] });
    expect(await allFiles(bed.stateDir)).toEqual([]);
  });

  it('writes the record twice per attach and once plus its removal per detach; the hook sees every step', async () => {
    const written: string[] = [];
    const save = bed.journal.save.bind(bed.journal);
    bed.journal.save = async (record, opts) => {
      written.push(record.state);
      await save(record, opts);
    };
    const saveBehind = bed.journal.saveBehind.bind(bed.journal);
    bed.journal.saveBehind = (record) => {
      written.push(`${record.state} (behind)`);
      saveBehind(record);
    };
    const removed: string[] = [];
    const remove = bed.journal.remove.bind(bed.journal);
    bed.journal.remove = async (...args) => {
      removed.push('remove');
      return remove(...args);
    };
    const removeBehind = bed.journal.removeBehind.bind(bed.journal);
    bed.journal.removeBehind = (...args) => {
      removed.push('remove (behind)');
      removeBehind(...args);
    };
    const passed: string[] = [];
    bed.journal.passed = (record) => {
      passed.push(record.state);
    };
    await bed.engine.attach(sb, vol('pvc-r'), rbdSpec(mon.address), bed.ctx);
    // Pending covers the secret and the node (every step looks at QEMU first); one write at the
    // end, behind the answer.
    expect(written).toEqual(['Pending', 'Attached (behind)']);
    expect(passed).toEqual(['SecretAdded', 'BlockdevAdded']);
    written.length = 0;
    passed.length = 0;
    await bed.engine.detach(sb, vol('pvc-r'), bed.ctx);
    expect(written).toEqual(['Detaching']);
    expect(passed).toEqual(['DeviceDeleted', 'BlockdevDeleted']);
    expect(removed).toEqual(['remove (behind)']);
    expect(bed.qemu.vmplugState()).toEqual({ devices: [], nodes: [], secrets: [] });
  });

  it('runs the rbd preflight while the lanes are read, and calls it off when the attach is refused', async () => {
    const events: string[] = [];
    let releaseListing: () => void = () => {};
    const listing = new Promise<void>((r) => {
      releaseListing = r;
    });
    bed.qemu.onCommand(async (command, args) => {
      if (command === 'qom-list' && args.path === '/machine/peripheral' && events.length === 0) {
        events.push('lanes asked');
        await listing;
        events.push('lanes answered');
      }
    });
    let preflightSignal: AbortSignal | undefined;
    await bed.cleanup();
    const qemu = bed.qemu;
    bed = await makeBed({
      engine: {
        scsiTargets: 1,
        rbdPreflight: async (_source, signal) => {
          events.push('preflight');
          preflightSignal = signal;
          releaseListing();
        },
      },
    });
    bed.dir.addQemu(sb, qemu);
    bed.qemu = qemu;
    await bed.engine.attach(sb, vol('r1'), rbdSpec(mon.address, { bus: 'scsi' }), bed.ctx);
    // The preflight began before the lane listing answered (it released it).
    expect(events).toEqual(['lanes asked', 'preflight', 'lanes answered']);
    expect(preflightSignal?.aborted).toBe(false);

    // The only scsi target is taken: LANES_FULL once the listing answers, with the preflight
    // under way: its signal is aborted.
    let hung: AbortSignal | undefined;
    let started: () => void = () => {};
    const preflightStarted = new Promise<void>((r) => {
      started = r;
    });
    qemu.onCommand(async (command, args) => {
      if (command === 'qom-list' && args.path === '/machine/peripheral') await preflightStarted;
    });
    await bed.cleanup();
    bed = await makeBed({
      engine: {
        scsiTargets: 1,
        rbdPreflight: (_source, signal) => {
          hung = signal;
          started();
          return new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason)));
        },
      },
    });
    bed.dir.addQemu(sb, qemu);
    bed.qemu = qemu;
    const err = await bed.engine
      .attach(sb, vol('r2'), rbdSpec(mon.address, { bus: 'scsi' }, 'vol2'), bed.ctx)
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LanesFullError);
    expect(hung?.aborted).toBe(true);
    expect(await bed.journal.load(sb, vol('r2'))).toBeUndefined();
  });

  it('an rbd attach waiting for its sandbox opens the image meanwhile, and checks again once that is stale', async () => {
    for (const aheadFreshMs of [60_000, 0]) {
      await bed.cleanup();
      const opened: Array<{ image: string; whileBusy: boolean }> = [];
      let holding = true;
      bed = await makeBed({
        engine: {
          aheadFreshMs,
          rbdPreflight: async (source) => {
            opened.push({ image: source.image, whileBusy: holding });
          },
        },
      });
      // The first attach holds the sandbox's turn until its lane listing is let through.
      let release: () => void = () => {};
      const listing = new Promise<void>((r) => {
        release = r;
      });
      bed.qemu.onCommand(async (command, args) => {
        if (command === 'qom-list' && args.path === '/machine/peripheral' && holding) await listing;
      });
      const first = bed.engine.attach(sb, vol('r1'), rbdSpec(mon.address, { bus: 'scsi' }), bed.ctx);
      while (opened.length === 0) await new Promise((r) => setTimeout(r, 1));
      const second = bed.engine.attach(sb, vol('r2'), rbdSpec(mon.address, { bus: 'scsi' }, 'vol2'), bed.ctx);
      while (opened.length < 2) await new Promise((r) => setTimeout(r, 1));
      // vol2 was opened while vol1's attach still held the sandbox.
      expect(opened[1]).toEqual({ image: 'vol2', whileBusy: true });
      await new Promise((r) => setTimeout(r, 5));
      holding = false;
      release();
      await Promise.all([first, second]);
      // Fresh: taken as it was; stale (a 0 ms bound): opened again in the turn.
      expect(opened.map((o) => o.image)).toEqual(
        aheadFreshMs === 0 ? ['vol1', 'vol2', 'vol2'] : ['vol1', 'vol2'],
      );
      expect(bed.qemu.vmplugState().devices).toHaveLength(2);
    }
  });

  it('a different key is a different spec (409); the key never shows in the error', async () => {
    await bed.engine.attach(sb, vol('pvc-r'), rbdSpec(mon.address), bed.ctx);
    const other = parseAttachRequest({
      mode: 'rbd',
      source: {
        type: 'rbd',
        pool: 'rbd',
        image: 'vol1',
        monitors: [mon.address],
        user: 'vmplug',
        key: OTHER_KEY,
      },
    });
    const err = await bed.engine.attach(sb, vol('pvc-r'), other, bed.ctx).catch((e) => e);
    expect(err).toBeInstanceOf(ConflictError);
    expect(JSON.stringify({ m: err.message, p: err.toProblem() })).not.toContain('AQDuSQNr');
  });

  it('with Ceph down, fails fast with CEPH_UNREACHABLE and leaves nothing', async () => {
    const dead = await closedPort();
    const err = await bed.engine.attach(sb, vol('pvc-r'), rbdSpec(dead), bed.ctx).catch((e) => e);
    expect(err).toBeInstanceOf(CephUnreachableError);
    expect(err).toMatchObject({ code: 'CEPH_UNREACHABLE', status: 503, retryable: true });
    // Refused before QEMU was asked anything that could block its main loop.
    expect(bed.qemu.calls.map((c) => c.command)).not.toContain('blockdev-add');
    expect(bed.qemu.vmplugState()).toEqual({ devices: [], nodes: [], secrets: [] });
    expect(await bed.journal.list()).toEqual([]);
    expect(await readdir(bed.stateDir)).not.toContain('rbd');
  });

  it('a port that accepts but never sends the banner counts as down', async () => {
    const silent = await fakeMonitor('');
    try {
      const err = await bed.engine.attach(sb, vol('pvc-r'), rbdSpec(silent.address), bed.ctx).catch((e) => e);
      expect(err).toBeInstanceOf(CephUnreachableError);
    } finally {
      await silent.close();
    }
  });

  it("librbd's own connect failure is typed and rolled back", async () => {
    bed.qemu.opts.ceph = 'down';
    const err = await bed.engine.attach(sb, vol('pvc-r'), rbdSpec(mon.address), bed.ctx).catch((e) => e);
    // A monitor answered the check, so a connect timeout means the session never completed.
    expect(err).toBeInstanceOf(BackendError);
    expect(err).toMatchObject({ retryable: true });
    expect(err.message).toMatch(/although a monitor answered/);
    expect(bed.qemu.vmplugState()).toEqual({ devices: [], nodes: [], secrets: [] });
    expect(await bed.journal.list()).toEqual([]);
    expect(await readdir(join(bed.stateDir, 'rbd'))).toEqual([]);
    expect(bed.log.lines.join('\n')).not.toContain(KEY);
  });

  it('a monitor that refuses between the check and blockdev-add: CEPH_UNREACHABLE', async () => {
    bed.qemu.failOnce('blockdev-add', 'GenericError', 'error connecting: Connection refused');
    const err = await bed.engine.attach(sb, vol('pvc-r'), rbdSpec(mon.address), bed.ctx).catch((e) => e);
    expect(err).toBeInstanceOf(CephUnreachableError);
    expect(bed.qemu.vmplugState()).toEqual({ devices: [], nodes: [], secrets: [] });
  });

  it('a QEMU error that echoes the key is redacted', async () => {
    bed.qemu.failOnce('object-add', 'GenericError', `bad secret data '${KEY}'`);
    const err = await bed.engine.attach(sb, vol('pvc-r'), rbdSpec(mon.address), bed.ctx).catch((e) => e);
    expect(err).toBeInstanceOf(BackendError);
    expect(err.message).toContain('[redacted]');
    expect(err.message).not.toContain(KEY);
    expect(bed.log.lines.join('\n')).not.toContain(KEY);
    // The conf written while QEMU refused the secret is gone with the rollback, and so is the record.
    expect(await readdir(join(bed.stateDir, 'rbd')).catch(() => [])).toEqual([]);
    expect(await bed.journal.load(sb, vol('pvc-r'))).toBeUndefined();
  });
});
