import { afterEach, describe, expect, it, vi } from 'vitest';
import { ConflictError } from '../../../core/errors.js';
import { AttachEngine } from '../../../storage/engine.js';
import type { AttachSpec } from '../../../storage/volume-spec.js';
import { type Bed, blockSpec, fakeMonitor, makeBed, rbdSpec, sb, vol } from './engine-helpers.js';

// Issue 10, late answers: QEMU's main loop stalls (librbd waiting on an OSD, a stopped QEMU)
// during a step, vmplugd's QMP timeout runs out, and QEMU answers later. The fake QEMU queues
// every command while stalled and runs them in order at resume(), as QEMU does; the engine must
// then finish the rollback (or the detach) at once, with no further request and no reconcile.

const QMP_TIMEOUT_MS = 60;
const EMPTY = { devices: [], nodes: [], secrets: [] };

let bed: Bed;
let mon: Awaited<ReturnType<typeof fakeMonitor>> | undefined;

afterEach(async () => {
  bed.qemu.resume();
  await mon?.close();
  mon = undefined;
  await bed.cleanup();
});

async function lateBed(guestUnplugMs = 5): Promise<Bed> {
  bed = await makeBed({
    qemu: { guestUnplug: { ms: guestUnplugMs } },
    engine: { qmpTimeoutMs: QMP_TIMEOUT_MS },
  });
  return bed;
}

/** Until the settle has run and logged, and the volume's record is gone; bounded. */
async function settled(volumeId: string): Promise<void> {
  await vi.waitFor(
    async () => {
      expect(bed.log.lines.some((l) => l.includes('late QMP answer'))).toBe(true);
      expect(await bed.journal.load(sb, vol(volumeId))).toBeUndefined();
    },
    { timeout: 5_000, interval: 10 },
  );
}

const specs: [string, () => AttachSpec, string[]][] = [
  ['block scsi', () => blockSpec('/dev/loop1', { bus: 'scsi' }), ['blockdev-add', 'device_add']],
  ['block virtio-blk', () => blockSpec('/dev/loop1', { bus: 'virtio-blk' }), ['blockdev-add', 'device_add']],
  [
    'rbd scsi',
    () => rbdSpec(mon?.address ?? '', { bus: 'scsi' }),
    ['object-add', 'blockdev-add', 'device_add'],
  ],
];

describe('AttachEngine: an attach step QEMU answers after the QMP timeout', () => {
  for (const [name, spec, steps] of specs) {
    for (const step of steps) {
      it(`${name}, ${step}: rolled back the moment QEMU answers; meanwhile the same PUT is a 503, another spec a 409`, async () => {
        await lateBed();
        mon = await fakeMonitor();
        bed.qemu.stallOn(step);
        const err = await bed.engine.attach(sb, vol('v1'), spec(), bed.ctx).catch((e) => e);
        expect(err).toMatchObject({ code: 'BACKEND_FAILED', retryable: true });
        expect(err.message).toContain(`${step} timed out`);
        // The journal already says where it goes (kill -9 now: reconcile rolls it back).
        expect((await bed.journal.load(sb, vol('v1')))?.state).toBe('Detaching');

        // While in doubt: the same request is told to retry at once, and QEMU is sent nothing.
        const sent = bed.qemu.calls.length;
        const retry = await bed.engine.attach(sb, vol('v1'), spec(), bed.ctx).catch((e) => e);
        expect(retry).toMatchObject({ code: 'DETACH_PENDING', retryable: true });
        expect(retry.message).toContain(`QEMU has not answered ${step}`);
        const del = await bed.engine.detach(sb, vol('v1'), bed.ctx).catch((e) => e);
        expect(del).toMatchObject({ code: 'DETACH_PENDING', retryable: true });
        await expect(
          bed.engine.attach(sb, vol('v1'), blockSpec('/dev/loop2'), bed.ctx),
        ).rejects.toBeInstanceOf(ConflictError);
        expect(bed.qemu.calls.length).toBe(sent);

        // QEMU answers: the step's effect appears, and the rollback follows with no request.
        bed.qemu.resume();
        await settled('v1');
        expect(bed.qemu.vmplugState()).toEqual(EMPTY);
        const line = bed.log.lines.find((l) => l.includes('late QMP answer: rollback/detach finished'));
        expect(line).toContain(`"command":"${step}"`);
        expect(line).toContain('"answer":"return"');

        // The same request then attaches.
        const again = await bed.engine.attach(sb, vol('v1'), spec(), bed.ctx);
        expect(again).toMatchObject({ created: true, attachment: { state: 'Attached' } });
      });
    }
  }

  it('a step QEMU refuses late (an error answer) is rolled back all the same', async () => {
    await lateBed();
    bed.qemu.stallOn('device_add');
    await expect(bed.engine.attach(sb, vol('v1'), blockSpec(), bed.ctx)).rejects.toMatchObject({
      code: 'BACKEND_FAILED',
    });
    // A device hot-plugged behind vmplug's back takes the lane meanwhile: QEMU refuses the
    // queued device_add when it runs.
    const taken = { id: 'other-disk', type: 'scsi-hd', bus: 'vmplug-scsi0.0', scsiId: 0 };
    bed.qemu.devices.set(taken.id, taken);
    bed.qemu.resume();
    await settled('v1');
    expect(bed.log.lines.some((l) => l.includes('"answer":"error"'))).toBe(true);
    expect(bed.qemu.vmplugState()).toEqual(EMPTY);
  });

  it('kill -9 while in doubt: a new engine on the same journal rolls it back at its first reconcile', async () => {
    await lateBed();
    bed.qemu.stallOn('blockdev-add');
    await expect(bed.engine.attach(sb, vol('v1'), blockSpec(), bed.ctx)).rejects.toMatchObject({
      code: 'BACKEND_FAILED',
    });
    // The old engine is gone with its memory of what is in doubt (closed: it admits nothing more,
    // so its own settle cannot win the race); QEMU answers meanwhile.
    await bed.engine.close({ graceMs: 0 });
    const restarted = new AttachEngine({
      journal: bed.journal,
      sandboxes: bed.dir,
      fingerprintKey: Buffer.alloc(32, 3),
      stateDir: bed.stateDir,
      logger: bed.log,
      qmpTimeoutMs: 2_000,
      detachTimeoutMs: 500,
      checkHostDevice: async (path) => path,
    });
    const reconciling = restarted.reconcile();
    bed.qemu.resume();
    const summary = await reconciling;
    expect(summary.repairs).toContainEqual(expect.objectContaining({ action: 'finished-detach' }));
    expect(await bed.journal.load(sb, vol('v1'))).toBeUndefined();
    expect(bed.qemu.vmplugState()).toEqual(EMPTY);
  });
});

describe('AttachEngine: a detach step QEMU answers after the QMP timeout', () => {
  const cases: [string, () => AttachSpec, string][] = [
    ['block virtio-blk', () => blockSpec('/dev/loop1', { bus: 'virtio-blk' }), 'device_del'],
    ['block scsi', () => blockSpec('/dev/loop1', { bus: 'scsi' }), 'device_del'],
    ['block scsi', () => blockSpec('/dev/loop1', { bus: 'scsi' }), 'blockdev-del'],
    ['rbd scsi', () => rbdSpec(mon?.address ?? '', { bus: 'scsi' }), 'blockdev-del'],
    ['rbd scsi', () => rbdSpec(mon?.address ?? '', { bus: 'scsi' }), 'object-del'],
  ];
  for (const [name, spec, step] of cases) {
    it(`${name}, ${step}: the detach finishes the moment QEMU answers; meanwhile DELETE and PUT are 503`, async () => {
      await lateBed();
      mon = await fakeMonitor();
      await bed.engine.attach(sb, vol('v1'), spec(), bed.ctx);
      bed.qemu.stallOn(step);
      const err = await bed.engine.detach(sb, vol('v1'), bed.ctx).catch((e) => e);
      expect(err).toMatchObject({ code: 'BACKEND_FAILED', retryable: true });
      expect(err.message).toContain(`${step} timed out`);
      const sent = bed.qemu.calls.length;
      await expect(bed.engine.detach(sb, vol('v1'), bed.ctx)).rejects.toMatchObject({
        code: 'DETACH_PENDING',
      });
      await expect(bed.engine.attach(sb, vol('v1'), spec(), bed.ctx)).rejects.toMatchObject({
        code: 'DETACH_PENDING',
      });
      expect(bed.qemu.calls.length).toBe(sent);
      bed.qemu.resume();
      await settled('v1');
      expect(bed.qemu.vmplugState()).toEqual(EMPTY);
      // And DELETE, retried, is done.
      await bed.engine.detach(sb, vol('v1'), bed.ctx);
    });
  }
});

describe('AttachEngine: a node its gone device still holds for a moment', () => {
  it('blockdev-del is asked again until QEMU releases the node, and the detach finishes', async () => {
    bed = await makeBed();
    const { attachment } = await bed.engine.attach(sb, vol('v1'), blockSpec(), bed.ctx);
    bed.qemu.heldNodes.add(attachment.nodeName);
    setTimeout(() => bed.qemu.heldNodes.delete(attachment.nodeName), 80);
    await bed.engine.detach(sb, vol('v1'), bed.ctx);
    expect(bed.qemu.calls.filter((c) => c.command === 'blockdev-del').length).toBeGreaterThan(1);
    expect(bed.qemu.vmplugState()).toEqual(EMPTY);
    expect(await bed.journal.load(sb, vol('v1'))).toBeUndefined();
  });

  it('a node that stays in use is refused retryable, never forced, and a retry finishes', async () => {
    bed = await makeBed();
    const { attachment } = await bed.engine.attach(sb, vol('v1'), blockSpec(), bed.ctx);
    bed.qemu.heldNodes.add(attachment.nodeName);
    await expect(bed.engine.detach(sb, vol('v1'), bed.ctx)).rejects.toMatchObject({
      code: 'BACKEND_FAILED',
      retryable: true,
    });
    expect(bed.qemu.nodes.has(attachment.nodeName)).toBe(true);
    bed.qemu.heldNodes.delete(attachment.nodeName);
    await bed.engine.detach(sb, vol('v1'), bed.ctx);
    expect(bed.qemu.vmplugState()).toEqual(EMPTY);
  });
});
