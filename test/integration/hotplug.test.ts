// Hot-plug end to end on a real Kata-shaped sandbox, through vmplug's private monitor only (Kata's
// own monitor stays held by the launcher, as the Kata shim holds it): each backend QEMU opens for
// vmplug (a plain file, a host block device = `block` mode, an RBD image through librbd = `rbd`
// mode) on each frontend (scsi-hd on vmplug-scsi0, virtio-blk-pci on a vmplug-rp<N> root port).
// Each case: the guest sees the disk with its serial and size, a pattern the guest writes is on the
// host side, and after device_del / blockdev-del / object-del neither the guest nor QEMU has it.
import { randomBytes } from 'node:crypto';
import { open, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { parseSandboxId, parseVolumeId } from '../../core/ids.js';
import { QmpBusyError, QmpClient, qomList, queryNamedBlockNodes } from '../../qmp/index.js';
import { rootPortId, volumeNames } from '../../storage/naming.js';
import { type Lane, rbdConf } from '../../storage/qemu-args.js';
import { parseMonitors, Secret } from '../../storage/volume-spec.js';
import { attachCeph, type CephCluster } from '../env/ceph.js';
import {
  type DiskBackend,
  type HotplugDisk,
  hotAdd,
  hotRemove,
  readInGuest,
  removeLeftovers,
  writeInGuest,
} from '../env/hotplug.js';
import { createLoopDevice, readRegion } from '../env/loop.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../env/sandbox.js';

type BackendKind = DiskBackend['kind'];
type Bus = Lane['bus'];

const MiB = 1024 * 1024;
const timeoutMs = 30_000;

interface Case {
  backend: BackendKind;
  bus: Bus;
  /** Distinct per case, so a size mix-up would show. */
  sizeBytes: number;
  lane: Lane;
}

const cases: Case[] = (['file', 'hostDevice', 'rbd'] as const).flatMap((backend, i) => [
  { backend, bus: 'scsi' as const, sizeBytes: (16 + 8 * i) * MiB, lane: { bus: 'scsi' as const, scsiId: i } },
  {
    backend,
    bus: 'virtio-blk' as const,
    sizeBytes: (20 + 8 * i) * MiB,
    lane: { bus: 'virtio-blk' as const, port: rootPortId(i) },
  },
]);

describe('hot-plug through the private monitor', () => {
  let root: TestRoot;
  let sandbox: KataSandbox;
  let qmp: QmpClient;
  let ceph: CephCluster;
  let confPath: string;
  /** Undo steps of the running case, run in reverse by afterEach whatever happened. */
  let undo: Array<() => Promise<unknown>> = [];

  beforeAll(async () => {
    ceph = attachCeph(inject('ceph'));
    root = await createTestRoot();
    confPath = join(root.dir, 'rbd.conf');
    // Short client_mount_timeout: a Ceph that stops answering fails blockdev-add in seconds
    // instead of freezing QEMU's main loop for librbd's default 300 s.
    await writeFile(confPath, rbdConf({ clientMountTimeoutS: 5 }), { mode: 0o600 });
    sandbox = await startKataSandbox(root);
    qmp = await QmpClient.connect(sandbox.vmplugQmpPath, { timeoutMs: 10_000 });
  });

  afterEach(async () => {
    const steps = undo.reverse();
    undo = [];
    const errors: unknown[] = [];
    for (const step of steps) await step().catch((e: unknown) => errors.push(e));
    if (errors.length > 0) throw errors[0];
  });

  afterAll(async () => {
    qmp?.destroy();
    await sandbox?.stop();
    await root?.cleanup();
  });

  it("leaves Kata's own monitor to Kata: it stays held, vmplug's answers", async () => {
    const err = await QmpClient.connect(sandbox.kataQmpPath, { greetingTimeoutMs: 500 }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(QmpBusyError);
    const peripherals = (await qomList(qmp, '/machine/peripheral')).map((p) => p.name);
    expect(peripherals).toEqual(expect.arrayContaining(['vmplug-scsi0', 'vmplug-rp0', 'scsi0']));
    expect(sandbox.guest.disks()).toEqual([]);
  });

  it.each(cases.map((c) => [`${c.backend} on ${c.bus}`, c] as const))(
    '%s: the guest sees it, its data lands on the host, unplug leaves nothing',
    async (_, c) => {
      const guest = sandbox.guest;
      const names = volumeNames(parseSandboxId(sandbox.id), parseVolumeId(`it-${c.backend}-${c.bus}`));
      const { backend, readHostSide } = await makeBackend(c);
      const disk: HotplugDisk = { names, backend, lane: c.lane };
      // First in, last out: QEMU must let go of the backend before the backend goes away.
      undo.push(() => removeLeftovers(qmp, names, { timeoutMs }));

      const { disk: seen, timings } = await hotAdd(qmp, guest, disk, { timeoutMs });
      expect(seen).toMatchObject({ sizeBytes: c.sizeBytes, readOnly: false, serial: names.serial });
      expect(seen.name).toMatch(c.bus === 'scsi' ? /^sd[a-z]+$/ : /^vd[a-z]+$/);
      const node = (await queryNamedBlockNodes(qmp)).find((n) => n['node-name'] === names.node);
      expect(node).toMatchObject({ drv: c.backend === 'hostDevice' ? 'host_device' : c.backend, ro: false });
      expect(node?.image['virtual-size']).toBe(c.sizeBytes);
      // Only rbd needs the key, and it reaches QEMU only as a secret object.
      expect((await qomList(qmp, '/objects')).some((o) => o.name === names.secret)).toBe(c.backend === 'rbd');
      // On vmplug's lane, never on Kata's scsi0 or its bridge.
      const parentBus = await qmp.execute<string>('qom-get', {
        path: `/machine/peripheral/${names.device}`,
        property: 'parent_bus',
      });
      expect(parentBus).toMatch(
        c.lane.bus === 'scsi'
          ? /^\/machine\/peripheral\/vmplug-scsi0\//
          : new RegExp(`^/machine/peripheral/${c.lane.port}/`),
      );

      // A distinct pattern per case, away from block 0, written and synced by the guest.
      const pattern = `vmplug:${c.backend}:${c.bus}:${randomBytes(6).toString('hex')}`;
      const offset = 3 * MiB + 4096;
      await writeInGuest(guest, seen.name, offset, pattern, { timeoutMs });
      expect((await readInGuest(guest, seen.name, offset, pattern.length, { timeoutMs })).toString()).toBe(
        pattern,
      );
      expect((await readHostSide(offset, pattern.length)).toString()).toBe(pattern);

      const t = await hotRemove(qmp, guest, disk, seen.name, { timeoutMs });
      expect(guest.disks().some((g) => g.name === seen.name || g.serial === names.serial)).toBe(false);
      expect((await queryNamedBlockNodes(qmp)).some((n) => n['node-name'] === names.node)).toBe(false);
      expect((await qomList(qmp, '/machine/peripheral')).some((p) => p.name === names.device)).toBe(false);
      expect((await qomList(qmp, '/objects')).some((o) => o.name === names.secret)).toBe(false);
      // The bytes outlive the attachment.
      expect((await readHostSide(offset, pattern.length)).toString()).toBe(pattern);
      console.info(
        `${c.backend}/${c.bus}: ${timings.secretMs !== undefined ? `secret ${timings.secretMs.toFixed(1)} ms, ` : ''}` +
          `blockdev-add ${timings.blockdevAddMs.toFixed(1)} ms, device_add->guest ${timings.guestSawMs.toFixed(0)} ms; ` +
          `device_del->DEVICE_DELETED ${t.deviceDeletedMs.toFixed(0)} ms, ->guest lost ${t.guestLostMs.toFixed(0)} ms`,
      );
    },
  );

  it('the guest ends with no disk and QEMU with no vmplug node', async () => {
    expect(sandbox.guest.disks()).toEqual([]);
    expect((await queryNamedBlockNodes(qmp)).filter((n) => n['node-name']?.startsWith('vmp'))).toEqual([]);
  });

  /** The backend of a case, and how to read what the guest wrote from the host side. */
  async function makeBackend(
    c: Case,
  ): Promise<{ backend: DiskBackend; readHostSide: (offset: number, length: number) => Promise<Buffer> }> {
    switch (c.backend) {
      case 'file': {
        const path = join(root.dir, `${c.backend}-${c.bus}.img`);
        const f = await open(path, 'wx', 0o600);
        await f.truncate(c.sizeBytes).finally(() => f.close());
        undo.push(() => rm(path, { force: true }));
        return { backend: { kind: 'file', path }, readHostSide: (o, l) => readRegion(path, o, l) };
      }
      case 'hostDevice': {
        const loop = await createLoopDevice(c.sizeBytes);
        undo.push(() => loop.detach());
        // The loop driver writes through to its backing file: the bytes must be in the file.
        return {
          backend: { kind: 'hostDevice', path: loop.path },
          readHostSide: (o, l) => loop.readBacking(o, l),
        };
      }
      case 'rbd': {
        const image = `it-hotplug-${c.bus}-${randomBytes(4).toString('hex')}`;
        await ceph.createImage(image, c.sizeBytes);
        undo.push(() => ceph.removeImage(image));
        return {
          backend: {
            kind: 'rbd',
            source: {
              type: 'rbd',
              pool: ceph.pool,
              image,
              monitors: parseMonitors(ceph.monitors),
              user: ceph.clientUser,
            },
            key: new Secret(ceph.clientKey),
            confPath,
          },
          // Straight from the image's RADOS objects: what any other Ceph client would read.
          readHostSide: (o, l) => ceph.readImage(image, o, l),
        };
      }
    }
  }
});
