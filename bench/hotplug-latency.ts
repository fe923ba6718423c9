/**
 * Hot-plug latency on a real Kata-shaped sandbox (TCG guest polling /sys/block every 20 ms),
 * through vmplug's private monitor with the bare QMP steps of test/env/hotplug.ts:
 *   - device_add sent -> the guest reports the disk (and the whole attach, first command -> seen);
 *   - device_del sent -> DEVICE_DELETED for the device, and -> the guest lost the disk;
 * for a file-backed disk and an RBD image (librbd, secret + conf), each on scsi-hd (vmplug-scsi0)
 * and on virtio-blk-pci (a vmplug-rp<N> root port). Runs are interleaved across the cases so load
 * from other processes spreads evenly. Prints min / median / max; asserts nothing. Everything
 * (guest, Ceph, images, files) is removed however it ends.
 *
 *   npm run bench:hotplug-latency [-- <runs> [--no-rbd]]   (default 10 runs, rbd included)
 */
import { randomBytes } from 'node:crypto';
import { open, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseSandboxId, parseVolumeId } from '../core/ids.js';
import { rootPortId, volumeNames } from '../storage/naming.js';
import { type Lane, rbdConf } from '../storage/qemu-args.js';
import { parseMonitors, Secret } from '../storage/volume-spec.js';
import { startDemoBed } from '../test/env/demo-bed.js';
import {
  type DiskBackend,
  type HotplugDisk,
  hotAdd,
  hotRemove,
  removeLeftovers,
} from '../test/env/hotplug.js';
import { hostContext, printTable, summarize } from './figures.js';

const args = process.argv.slice(2);
const runs = Number(args.find((a) => /^\d+$/.test(a)) ?? 10);
const withRbd = !args.includes('--no-rbd');
const MiB = 1024 * 1024;

interface Samples {
  seen: number[];
  total: number[];
  deleted: number[];
  lost: number[];
}

async function main(): Promise<void> {
  const bed = await startDemoBed({ ceph: withRbd });
  try {
    const { sandbox, qmp, ceph } = bed;
    process.stdout.write(
      `sandbox ${sandbox.id} booted in ${(sandbox.bootMs / 1000).toFixed(1)} s` +
        `${bed.timings.cephReadyMs !== undefined ? `, Ceph ready in ${(bed.timings.cephReadyMs / 1000).toFixed(1)} s` : ''}` +
        `; QEMU ${bed.qemuVersion}\n${hostContext()}\n${runs} runs per case\n`,
    );
    const sid = parseSandboxId(sandbox.id);
    const lanes: Array<[string, Lane]> = [
      ['scsi-hd', { bus: 'scsi', scsiId: 0 }],
      ['virtio-blk', { bus: 'virtio-blk', port: rootPortId(0) }],
    ];
    const backends: Array<[string, DiskBackend]> = [];
    const file = join(bed.root.dir, 'bench.img');
    const f = await open(file, 'wx', 0o600);
    await f.truncate(64 * MiB).finally(() => f.close());
    backends.push(['file', { kind: 'file', path: file }]);
    if (ceph) {
      const image = `bench-${randomBytes(4).toString('hex')}`;
      await ceph.createImage(image, 64 * MiB);
      bed.defer(() => ceph.removeImage(image));
      const confPath = join(bed.root.dir, 'rbd.conf');
      await writeFile(confPath, rbdConf(), { mode: 0o600 });
      backends.push([
        'rbd',
        {
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
      ]);
    }
    const cases = backends.flatMap(([b, backend]) =>
      lanes.map(([l, lane]) => {
        const disk: HotplugDisk = {
          names: volumeNames(sid, parseVolumeId(`bench-${b}-${lane.bus}`)),
          backend,
          lane,
        };
        bed.defer(() => removeLeftovers(qmp, disk.names));
        const samples: Samples = { seen: [], total: [], deleted: [], lost: [] };
        return { label: `${b} on ${l}`, disk, samples };
      }),
    );

    for (let i = 0; i < runs; i++) {
      for (const c of cases) {
        const { disk, timings } = await hotAdd(qmp, sandbox.guest, c.disk);
        c.samples.seen.push(timings.guestSawMs);
        c.samples.total.push(timings.totalMs);
        const t = await hotRemove(qmp, sandbox.guest, c.disk, disk.name);
        c.samples.deleted.push(t.deviceDeletedMs);
        c.samples.lost.push(t.guestLostMs);
      }
    }

    const cols = ['n', 'min', 'median', 'max'] as const;
    printTable(
      'attach: device_add sent -> guest sees the disk',
      cases.map((c) => [c.label, summarize(c.samples.seen)] as const),
      cols,
    );
    printTable(
      'attach: first command (object-add/blockdev-add) -> guest sees it',
      cases.map((c) => [c.label, summarize(c.samples.total)] as const),
      cols,
    );
    printTable(
      'detach: device_del sent -> DEVICE_DELETED(device)',
      cases.map((c) => [c.label, summarize(c.samples.deleted)] as const),
      cols,
    );
    printTable(
      'detach: device_del sent -> guest lost the disk',
      cases.map((c) => [c.label, summarize(c.samples.lost)] as const),
      cols,
    );
  } finally {
    await bed.close();
  }
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
