/**
 * `npm run demo`: vmplug's foundation at work, for a newcomer, in about 20 seconds.
 *
 * Boots a Kata-shaped guest (QEMU through bin/vmplug-qemu, Kata's own monitor held as the Kata
 * shim holds it) and a throwaway single-node Ceph cluster, then, with vmplug's QMP client on the
 * private monitor the wrapper made:
 *   - `block` mode: a loop device (a host block device) as scsi-hd on vmplug-scsi0;
 *   - `rbd` mode: an RBD image opened by QEMU's librbd (cephx key in a secret object) as
 *     virtio-blk-pci on the reserved root port vmplug-rp0;
 * shows what the guest sees, writes data in the guest and finds it on the host side, hot-removes
 * both, and cleans up everything (also on Ctrl-C or an error).
 */
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { type CallOptions, type QmpExecutor, queryNamedBlockNodes } from '../qmp/index.js';
import { parseSandboxId, parseVolumeId } from '../storage/ids.js';
import { rootPortId, SCSI_BUS, volumeNames } from '../storage/naming.js';
import { rbdConf } from '../storage/qemu-args.js';
import { parseMonitors, Secret } from '../storage/volume-spec.js';
import { type DemoBed, startDemoBed } from './env/demo-bed.js';
import type { GuestAgent, GuestEvent } from './env/guest.js';
import {
  type HotplugDisk,
  hotAdd,
  hotRemove,
  readInGuest,
  removeLeftovers,
  writeInGuest,
} from './env/hotplug.js';
import { createLoopDevice } from './env/loop.js';

const MiB = 1024 * 1024;
const t0 = performance.now();

function say(line: string): void {
  const s = ((performance.now() - t0) / 1000).toFixed(1).padStart(5);
  process.stdout.write(`[${s}s] ${line}\n`);
}

const ms = (x: number): string => `${x < 10 ? x.toFixed(1) : Math.round(x)} ms`;

/**
 * Shows each QMP command as it goes to QEMU, with the secret's data (the cephx key) blanked:
 * what the demo does is exactly what goes over the monitor.
 */
function traced(qmp: QmpExecutor): QmpExecutor {
  return {
    execute: async <T>(command: string, args?: object, opts?: CallOptions): Promise<T> => {
      const shown =
        args && 'qom-type' in args && (args as { 'qom-type': unknown })['qom-type'] === 'secret'
          ? { ...args, data: '<cephx key, base64>' }
          : args;
      const started = performance.now();
      const r = await qmp.execute<T>(command, args, opts);
      say(
        `   qmp> ${command}${shown ? ` ${JSON.stringify(shown)}` : ''}  (${ms(performance.now() - started)})`,
      );
      return r;
    },
    subscribe: (name, listener) => qmp.subscribe(name, listener),
    waitFor: (name, predicate, opts) => qmp.waitFor(name, predicate, opts),
  };
}

function describeEvent(e: GuestEvent): string | undefined {
  switch (e.type) {
    case 'disk-add':
      return `guest> disk appeared: /dev/${e.disk.name}, ${e.disk.sizeBytes / MiB} MiB, serial ${e.disk.serial ?? '-'}`;
    case 'disk-del':
      return `guest> disk gone: /dev/${e.name}`;
    case 'disk-size':
      // A SCSI disk on its way out reports size 0 first.
      return e.sizeBytes === 0
        ? `guest> /dev/${e.name} is going: size 0`
        : `guest> /dev/${e.name} is now ${e.sizeBytes / MiB} MiB`;
    default:
      return undefined;
  }
}

/** The guest's own view of its disks, from sysfs (the test guest is busybox: no lsblk). */
async function showGuestDisks(guest: GuestAgent): Promise<void> {
  const r = await guest.run(
    [
      'for p in /sys/block/sd* /sys/block/vd*; do',
      '  [ -e "$p" ] || continue',
      '  read -r s <"$p/size"; read -r ro <"$p/ro"',
      // biome-ignore lint/suspicious/noTemplateCurlyInString: shell parameter expansion, not a JS template
      '  d=$(readlink -f "$p/device"); echo "${p##*/} $((s / 2048)) $ro ${d#/sys/devices/}"',
      'done',
    ].join('\n'),
  );
  const rows = r.stdout.trim().split('\n').filter(Boolean);
  if (rows.length === 0) {
    say('   guest$ (no sd*/vd* disks)');
    return;
  }
  say(`   guest$ ${'NAME'.padEnd(5)} ${'SIZE'.padStart(8)} RO  SYSFS DEVICE`);
  for (const row of rows) {
    const [name = '', mib = '', ro = '', dev = ''] = row.split(' ');
    say(`   guest$ ${name.padEnd(5)} ${`${mib} MiB`.padStart(8)} ${ro.padEnd(3)} ${dev}`);
  }
}

async function writeAndVerify(
  guest: GuestAgent,
  name: string,
  where: string,
  readHost: (offset: number, length: number) => Promise<Buffer>,
): Promise<void> {
  const pattern = `hello-from-the-guest:${name}:${randomBytes(4).toString('hex')}`;
  const offset = 1 * MiB;
  await writeInGuest(guest, name, offset, pattern);
  const inGuest = (await readInGuest(guest, name, offset, pattern.length)).toString();
  const onHost = (await readHost(offset, pattern.length)).toString();
  const ok = inGuest === pattern && onHost === pattern;
  say(`   guest wrote "${pattern}" to /dev/${name} at 1 MiB (dd + fsync)`);
  say(`   ${where} holds: "${onHost}"  ${ok ? 'OK' : 'MISMATCH'}`);
  if (!ok) throw new Error(`data check failed on /dev/${name}`);
}

async function runDemo(bed: DemoBed): Promise<void> {
  const { sandbox, ceph } = bed;
  const guest = sandbox.guest;
  const qmp = traced(bed.qmp);
  if (!ceph) throw new Error('the demo needs Ceph');
  const off = guest.onEvent((e) => {
    const line = describeEvent(e);
    if (line) say(`   ${line}`);
  });
  bed.defer(async () => off());
  const sid = parseSandboxId(sandbox.id);

  say('The guest before any hot-plug:');
  await showGuestDisks(guest);

  // block mode: a host block device, here a loop device over a sparse file.
  const loop = await createLoopDevice(64 * MiB);
  bed.defer(() => loop.detach());
  const block: HotplugDisk = {
    names: volumeNames(sid, parseVolumeId('demo-block')),
    backend: { kind: 'hostDevice', path: loop.path },
    lane: { bus: 'scsi', scsiId: 0 },
  };
  // Registered after the loop device, so it runs before the device is detached.
  bed.defer(() => removeLeftovers(bed.qmp, block.names));
  say('');
  say(`block mode: host block device ${loop.path} (64 MiB loop device) -> scsi-hd on ${SCSI_BUS}`);
  const a = await hotAdd(qmp, guest, block);
  say(`   device_add -> guest saw /dev/${a.disk.name}: ${ms(a.timings.guestSawMs)}`);

  // rbd mode: QEMU opens the image itself with librbd; the key travels only inside QMP.
  const image = `demo-${randomBytes(4).toString('hex')}`;
  await ceph.createImage(image, 128 * MiB);
  bed.defer(() => ceph.removeImage(image));
  const confPath = join(bed.root.dir, 'rbd-demo.conf');
  await writeFile(confPath, rbdConf(), { mode: 0o600 });
  const rbd: HotplugDisk = {
    names: volumeNames(sid, parseVolumeId('demo-rbd')),
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
    lane: { bus: 'virtio-blk', port: rootPortId(0) },
  };
  bed.defer(() => removeLeftovers(bed.qmp, rbd.names));
  say('');
  say(`rbd mode: image ${ceph.pool}/${image} (128 MiB) via librbd -> virtio-blk-pci on ${rootPortId(0)}`);
  say(`   (the conf file holds only client_mount_timeout: a dead Ceph fails blockdev-add in seconds)`);
  const b = await hotAdd(qmp, guest, rbd);
  say(`   device_add -> guest saw /dev/${b.disk.name}: ${ms(b.timings.guestSawMs)}`);

  say('');
  say('What the guest sees now:');
  await showGuestDisks(guest);

  say('');
  say('Data written in the guest lands on the host side:');
  await writeAndVerify(guest, a.disk.name, `${loop.backingFile} (the loop device's file)`, (o, l) =>
    loop.readBacking(o, l),
  );
  await writeAndVerify(guest, b.disk.name, `RBD image ${image} (read with rados)`, (o, l) =>
    ceph.readImage(image, o, l),
  );

  say('');
  say('Hot-remove (device_del with DEVICE_DELETED armed first, then blockdev-del, object-del):');
  for (const [d, name] of [
    [block, a.disk.name],
    [rbd, b.disk.name],
  ] as const) {
    const t = await hotRemove(qmp, guest, d, name);
    say(
      `   /dev/${name}: DEVICE_DELETED after ${ms(t.deviceDeletedMs)}, guest lost it after ${ms(t.guestLostMs)}`,
    );
  }
  const left = (await queryNamedBlockNodes(bed.qmp)).filter((n) => n['node-name']?.startsWith('vmp'));
  say(`The guest after: ${guest.disks().length} hot-plugged disks; QEMU: ${left.length} vmplug block nodes`);
  await showGuestDisks(guest);
}

async function main(): Promise<number> {
  // Ctrl-C: say so; the test bed's own exit guards then kill QEMU and Ceph, detach the loop
  // device and remove the temp dirs synchronously, and re-raise the signal.
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      process.stdout.write(
        `\n${sig}: stopping QEMU and Ceph, detaching the loop device, removing temp files\n`,
      );
      // Should no guard be installed yet, leave anyway (the 'exit' guards still run).
      setImmediate(() => process.exit(130));
    });
  }
  say("vmplug foundation demo: a Kata-shaped guest, a test Ceph, and vmplug's QMP client hot-plugging disks");
  say('starting a single-node Ceph (mon, mgr, OSD on loopback) and booting the guest...');
  const bed = await startDemoBed({ ceph: true, log: (l) => say(l) });
  say(`Kata's monitor ${bed.sandbox.kataQmpPath} stays held (like the Kata shim); vmplug uses its own:`);
  say(`   ${bed.sandbox.vmplugQmpPath}`);
  try {
    say('');
    await runDemo(bed);
  } finally {
    say('');
    say('cleaning up: guest, loop device, RBD image, Ceph, temp files...');
    await bed.close();
  }
  say(`done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return 0;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`demo failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
