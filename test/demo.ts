/**
 * `npm run demo`: vmplug at work, for a newcomer, in about 30 seconds.
 *
 * Boots a Kata-shaped guest (QEMU through bin/vmplug-qemu, Kata's own monitor held as the Kata
 * shim holds it) and a throwaway single-node Ceph cluster, starts vmplugd as a child process on a
 * temp socket and state dir watching the sandbox's monitor dir, waits until it discovers the
 * sandbox, and then, through vmplugd's REST API with the typed client a CSI plugin would use:
 *   - `rbd` mode: an RBD image (mode from the PVC annotation volume.katacontainers.io/direct-mode),
 *     opened by QEMU's librbd, on the frontend vmplugd picks (scsi);
 *   - `block` mode: a loop device (a host block device) on virtio-blk;
 * shows what the guest sees (events with timings, a small lsblk), writes data in the guest, shows
 * the attachment as GET returns it (with the `vmplug` CLI), detaches both, finds the data on the
 * host side. Then the Kata pod path (DESIGN §5b): a volume published by pod UID (block mode, a
 * loop device holding an ext4), Kata's side of the hand-off (test/env/kata-runtime.ts: read the
 * record, plug the device, drop the sandbox-id file), the guest mounts it and reads the file
 * written on the host before, GET says Consumed, unplug and unpublish. Everything is cleaned up
 * (also on Ctrl-C or an error). The cephx key is never shown.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { type Attachment, type AttachRequest, VmplugClient } from '../cli/client.js';
import { queryNamedBlockNodes } from '../qmp/index.js';
import { DIRECT_MODE_ANNOTATION } from '../storage/volume-spec.js';
import { type DaemonProcess, startDaemonProcess } from './env/daemon.js';
import { type DemoBed, startDemoBed } from './env/demo-bed.js';
import { catOnHost, ext4Loop } from './env/ext4.js';
import type { GuestAgent, GuestDisk, GuestEvent } from './env/guest.js';
import { readInGuest, writeInGuest } from './env/hotplug.js';
import { plugUntilGuestSees, unplugUntilGuestDrops } from './env/kata-plug-seen.js';
import { createLoopDevice, type LoopDevice } from './env/loop.js';
import { rbdSource } from './env/rbd-request.js';

const MiB = 1024 * 1024;
const VMPLUG_CLI = fileURLToPath(new URL('../bin/vmplug.js', import.meta.url));
const POD = { uid: '7c1e2a9b-0000-4000-8000-00000000de30', name: 'web-0', namespace: 'shop' };
const t0 = performance.now();

function say(line: string): void {
  const s = ((performance.now() - t0) / 1000).toFixed(1).padStart(5);
  process.stdout.write(`[${s}s] ${line}\n`);
}

const ms = (x: number): string => `${x < 10 ? x.toFixed(1) : Math.round(x)} ms`;

/** What the demo made, so that one teardown (also after an error) can undo it in order. */
interface Made {
  daemon?: DaemonProcess;
  client?: VmplugClient;
  loop?: LoopDevice;
  image?: string;
  attached: Set<string>;
  /** The pod path's loop device and whether its volume is still published. */
  podLoop?: LoopDevice;
  published?: boolean;
}

function describeEvent(e: GuestEvent): string | undefined {
  switch (e.type) {
    case 'disk-add':
      return `disk appeared: /dev/${e.disk.name}, ${e.disk.sizeBytes / MiB} MiB, serial ${e.disk.serial ?? '-'}`;
    case 'disk-del':
      return `disk gone: /dev/${e.name}`;
    case 'disk-size':
      // A SCSI disk on its way out reports size 0 first.
      return e.sizeBytes === 0
        ? `/dev/${e.name} is going: size 0`
        : `/dev/${e.name} is now ${e.sizeBytes / MiB} MiB`;
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

/** The CLI as a user would type it, its output indented. */
function cli(socket: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [VMPLUG_CLI, ...args, '--socket', socket],
      { timeout: 60_000, encoding: 'utf8' },
      (err, stdout, stderr) =>
        err ? reject(new Error(`vmplug ${args[0]}: ${stderr || err.message}`)) : resolve(stdout),
    );
  });
}

async function waitDiscovered(client: VmplugClient, sandboxId: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const found = await client.getSandbox(sandboxId, { timeoutMs: 5000 }).catch(() => undefined);
    if (found?.state === 'running') return;
    if (Date.now() > deadline) throw new Error(`vmplugd did not discover sandbox ${sandboxId} within 60 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * PUT through the client, then waits for the guest to report the disk (by its serial): the REST
 * answer and the guest's view, each timed from the moment the request was sent.
 */
async function attach(
  made: Made,
  guest: GuestAgent,
  sandboxId: string,
  volumeId: string,
  body: AttachRequest,
): Promise<{ a: Attachment; disk: GuestDisk }> {
  const client = made.client as VmplugClient;
  const sent = performance.now();
  made.attached.add(volumeId);
  const { created, attachment: a } = await client.attach(sandboxId, volumeId, body, {
    requestId: `demo-${volumeId}`,
  });
  const replied = performance.now() - sent;
  say(
    `   vmplugd: ${created ? '201 Created' : '200 OK'} in ${ms(replied)}: state ${a.state}, ${a.mode} mode on ${a.bus}, device ${a.deviceId}, serial ${a.serial}`,
  );
  const disk = await guest.waitForDisk((d) => d.serial === a.serial, { timeoutMs: 30_000 });
  say(`   guest saw /dev/${disk.name} ${ms(Math.max(disk.seenAt, sent) - sent)} after the PUT was sent`);
  return { a, disk };
}

async function writeFromGuest(guest: GuestAgent, disk: GuestDisk): Promise<string> {
  const pattern = `hello-from-the-guest:${disk.name}:${randomBytes(4).toString('hex')}`;
  await writeInGuest(guest, disk.name, 1 * MiB, pattern);
  const back = (await readInGuest(guest, disk.name, 1 * MiB, pattern.length)).toString();
  say(
    `   guest$ dd ... of=/dev/${disk.name} seek=1MiB conv=fsync  <- "${pattern}" (read back: ${back === pattern ? 'same' : 'DIFFERENT'})`,
  );
  if (back !== pattern) throw new Error(`guest read back something else on /dev/${disk.name}`);
  return pattern;
}

async function detach(made: Made, guest: GuestAgent, sandboxId: string, volumeId: string, disk: GuestDisk) {
  const client = made.client as VmplugClient;
  let lostAt: number | undefined;
  const off = guest.onEvent((e) => {
    if (e.type === 'disk-del' && e.name === disk.name) lostAt ??= e.at;
  });
  try {
    const sent = performance.now();
    await client.detach(sandboxId, volumeId, { requestId: `demo-del-${volumeId}` });
    const replied = performance.now() - sent;
    made.attached.delete(volumeId);
    const gone = await guest.waitForDiskGone(disk.name, { timeoutMs: 30_000 });
    say(
      `   DELETE ${volumeId}: 204 in ${ms(replied)}; guest lost /dev/${disk.name} ${ms((lostAt ?? gone.at) - sent)} after it was sent`,
    );
  } finally {
    off();
  }
}

/** Every file under dir (the journal), for the "no key anywhere" check. */
async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true }).catch(() => [])) {
    if (e.isFile()) out.push(join(e.parentPath, e.name));
  }
  return out;
}

async function runDemo(bed: DemoBed, made: Made): Promise<void> {
  const { sandbox, ceph } = bed;
  if (!ceph) throw new Error('the demo needs Ceph');
  const guest = sandbox.guest;
  const off = guest.onEvent((e) => {
    const line = describeEvent(e);
    if (line) say(`   guest> ${line}`);
  });
  bed.defer(async () => off());

  say('The guest before any hot-plug:');
  await showGuestDisks(guest);

  // vmplugd as a node would run it, but on a temp socket and state dir inside the test root.
  say('');
  say(
    'starting vmplugd (a child process) on a temp socket, watching the monitor dir the wrapper writes to...',
  );
  const directVolumeRoot = join(bed.root.dir, 'direct-volumes');
  const daemon = await startDaemonProcess({
    dir: join(bed.root.dir, 'vmplugd'),
    monitorDir: bed.root.monitorDir,
    kataVmRoot: bed.root.kataVmRoot,
    logLevel: 'info',
    extraArgs: ['--kata-direct-volume-root', directVolumeRoot],
  });
  made.daemon = daemon;
  // Whatever way this process ends, vmplugd goes with it (the test bed's guards do the rest).
  process.once('exit', () => {
    try {
      process.kill(daemon.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  });
  const client = new VmplugClient({ socketPath: daemon.socketPath, timeoutMs: 60_000 });
  made.client = client;
  say(`   vmplugd pid ${daemon.pid}, socket ${daemon.socketPath}`);
  const td = performance.now();
  await waitDiscovered(client, sandbox.id);
  const sb = await client.getSandbox(sandbox.id);
  say(
    `   discovered sandbox ${sb.id} in ${ms(performance.now() - td)}: ${sb.kind}, ${sb.state}, pod ${sb.pod?.namespace}/${sb.pod?.name}, QEMU pid ${sb.pid}`,
  );

  // rbd mode: the CSI plugin passes the PVC's annotation; QEMU opens the image with librbd and
  // the key travels only inside the request body and QMP.
  const image = `demo-${randomBytes(4).toString('hex')}`;
  made.image = image;
  await ceph.createImage(image, 128 * MiB);
  say('');
  say(`PUT /v1/sandboxes/${sandbox.id}/volumes/pvc-rbd  (RBD image ${ceph.pool}/${image}, 128 MiB)`);
  say(`   annotation ${DIRECT_MODE_ANNOTATION}: rbd, bus auto, key: <cephx key, in the body only>`);
  const rbd = await attach(made, guest, sandbox.id, 'pvc-rbd', {
    source: rbdSource(ceph, image),
    annotations: { [DIRECT_MODE_ANNOTATION]: 'rbd' },
  });

  // block mode: a host block device, here a loop device over a sparse file.
  const loop = await createLoopDevice(64 * MiB);
  made.loop = loop;
  say('');
  say(
    `PUT /v1/sandboxes/${sandbox.id}/volumes/pvc-block  (host block device ${loop.path}, 64 MiB loop device)`,
  );
  say('   mode block, bus virtio-blk');
  const blk = await attach(made, guest, sandbox.id, 'pvc-block', {
    mode: 'block',
    bus: 'virtio-blk',
    source: { type: 'hostDevice', path: loop.path },
  });

  say('');
  say('What the guest sees now:');
  await showGuestDisks(guest);

  say('');
  say('The guest writes to both disks:');
  const rbdPattern = await writeFromGuest(guest, rbd.disk);
  const blkPattern = await writeFromGuest(guest, blk.disk);

  say('');
  say(`GET of the attachment, with the CLI: vmplug show ${sandbox.id} pvc-rbd`);
  const shown = (await cli(daemon.socketPath, ['show', sandbox.id, 'pvc-rbd'])).trimEnd().split('\n');
  // The block statistics (query-blockstats) follow the timeline: two of them say enough here.
  const statsAt = shown.findIndex((l) => l.startsWith('STAT'));
  const head = statsAt < 0 ? shown : shown.slice(0, statsAt);
  while (head.at(-1) === '') head.pop();
  for (const line of head) say(`   | ${line}`);
  if (statsAt >= 0) {
    const stat = (k: string) => shown.find((l) => l.startsWith(`${k} `))?.split(/\s+/)[1] ?? '?';
    say(
      `   | (then ${shown.length - statsAt - 1} block statistics, e.g. wr_bytes ${stat('wr_bytes')}, flush_operations ${stat('flush_operations')})`,
    );
  }
  const got = await client.get(sandbox.id, 'pvc-block');
  say(
    `and through the client, pvc-block: state ${got.state}, guest ${got.guestHint}, timeline ${got.timeline.map((t) => `${t.step} ${t.ms} ms`).join(' -> ')}`,
  );

  say('');
  say('Detach both (DELETE answers once QEMU deleted the device and released the block node):');
  await detach(made, guest, sandbox.id, 'pvc-rbd', rbd.disk);
  await detach(made, guest, sandbox.id, 'pvc-block', blk.disk);

  say('');
  say('The data is on the host side:');
  const inImage = (await ceph.readImage(image, 1 * MiB, rbdPattern.length)).toString();
  const onLoop = (await loop.readBacking(1 * MiB, blkPattern.length)).toString();
  say(
    `   RBD image ${image} at 1 MiB (read with rados): "${inImage}"  ${inImage === rbdPattern ? 'OK' : 'MISMATCH'}`,
  );
  say(`   ${loop.backingFile} at 1 MiB: "${onLoop}"  ${onLoop === blkPattern ? 'OK' : 'MISMATCH'}`);
  if (inImage !== rbdPattern || onLoop !== blkPattern) throw new Error('data check failed');

  const left = (await queryNamedBlockNodes(bed.qmp)).filter((n) => n['node-name']?.startsWith('vmp'));
  const after = await client.getSandbox(sandbox.id);
  say(
    `QEMU now holds ${left.length} vmplug block nodes; vmplugd lists ${after.volumes.length} volumes; the guest:`,
  );
  await showGuestDisks(guest);

  await podPath(bed, made, directVolumeRoot);

  // The key went over the socket and into QMP: it must be nowhere else.
  const key = ceph.clientKey;
  const files = await filesUnder(daemon.stateDir);
  let inFiles = 0;
  for (const f of files) if ((await readFile(f, 'utf8').catch(() => '')).includes(key)) inFiles++;
  const inLogs = daemon.lines.filter((l) => l.includes(key)).length;
  const inArgv = (await daemon.cmdline()).includes(key);
  say(
    `cephx key found in ${inLogs} of ${daemon.lines.length} vmplugd log lines, ${inFiles} of ${files.length} state files, argv: ${inArgv ? 'YES' : 'no'}`,
  );
  if (inLogs + inFiles > 0 || inArgv) throw new Error('the cephx key leaked');
}

/**
 * DESIGN §5b: kubelet publishes a Kata pod's volume before the pod's sandbox exists, and Kata's
 * agent mounts only what Kata's runtime plugged. So the CSI plugin publishes by pod UID; vmplug
 * writes Kata's direct-volume record; Kata's runtime plugs the device at CreateContainer.
 */
async function podPath(bed: DemoBed, made: Made, directVolumeRoot: string): Promise<void> {
  const client = made.client as VmplugClient;
  const guest = bed.sandbox.guest;
  say('');
  say("The Kata pod path: kubelet publishes a pod's volume before the pod's sandbox exists, and Kata's");
  say('agent mounts only what Kata plugged, so a CSI plugin publishes by pod UID and vmplug hands the');
  say("volume to Kata's runtime through its direct-volume record.");
  const hello = 'written on the host before publish';
  const loop = await ext4Loop({ 'hello.txt': `${hello}\n` }, 32 * MiB);
  made.podLoop = loop;
  const targetPath = `/var/lib/kubelet/pods/${POD.uid}/volumes/kubernetes.io~csi/pvc-pod/mount`;
  say(`   ${loop.path}: 32 MiB loop device, ext4 with hello.txt ("${hello}")`);
  say(`PUT /v1/pods/${POD.uid}/volumes/pvc-pod  (block mode, ext4, pod ${POD.namespace}/${POD.name})`);
  say(`   targetPath ${targetPath}`);
  const sent = performance.now();
  made.published = true;
  const { created, volume } = await client.publish(POD.uid, 'pvc-pod', {
    mode: 'block',
    source: { type: 'hostDevice', path: loop.path },
    targetPath,
    fsType: 'ext4',
    mountOptions: ['noatime'],
    pod: { name: POD.name, namespace: POD.namespace },
  });
  say(
    `   vmplugd: ${created ? '201 Created' : '200 OK'} in ${ms(performance.now() - sent)}: state ${volume.state}, device ${volume.device}`,
  );
  const record = await readFile(volume.recordPath, 'utf8');
  const enc = volume.recordPath.split('/').at(-2) ?? '';
  say(
    `   Kata's record .../direct-volumes/${enc.slice(0, 12)}...${enc.slice(-8)}/mountInfo.json (dir: targetPath in base64url, padded):`,
  );
  say(`   ${record}`);

  say("Kata's runtime at CreateContainer (test/env/kata-runtime.ts): record -> blockdev-add + scsi-hd:");
  const plugged = await plugUntilGuestSees(guest, {
    qmp: bed.qmp,
    directVolumeRoot,
    mountSource: targetPath,
    sandboxId: bed.sandbox.id,
    guestTimeoutMs: 30_000,
  });
  const { disk, startedAt } = plugged;
  say(
    `   guest saw /dev/${disk.name} ${ms(Math.max(disk.seenAt, startedAt) - startedAt)} after Kata's plug began`,
  );
  const got = await client.getPodVolume(POD.uid, 'pvc-pod');
  say(`   GET: state ${got.state}, sandboxId ${got.sandboxId ?? '-'}`);
  if (got.state !== 'Consumed') throw new Error(`the pod volume is ${got.state}, not Consumed`);

  // What Kata's agent does in the guest: mount it at the container's path.
  const r = await guest.run(
    `mkdir -p /mnt/pvc-pod && mount -t ext4 -o noatime /dev/${disk.name} /mnt/pvc-pod && cat /mnt/pvc-pod/hello.txt && echo written-in-the-pod > /mnt/pvc-pod/guest.txt && sync && umount /mnt/pvc-pod`,
    { timeoutMs: 30_000 },
  );
  const read = r.stdout.trim();
  say(`   guest$ mount -t ext4 /dev/${disk.name} /mnt/pvc-pod; cat hello.txt  -> "${read}"`);
  say('   guest$ echo written-in-the-pod > guest.txt; umount');
  if (r.exitCode !== 0 || read !== hello) throw new Error(`the guest did not read the file: ${r.stderr}`);

  say('The container goes: Kata unplugs; kubelet unpublishes (DELETE):');
  await unplugUntilGuestDrops(bed.qmp, guest, plugged, { guestTimeoutMs: 30_000 });
  const del = performance.now();
  await client.unpublish(POD.uid, 'pvc-pod');
  made.published = false;
  const recordGone = await stat(volume.recordPath).then(
    () => false,
    () => true,
  );
  say(
    `   DELETE pvc-pod: 204 in ${ms(performance.now() - del)}; Kata's record removed: ${recordGone ? 'yes' : 'NO'}`,
  );
  const onHost = (await catOnHost(loop.path, '/guest.txt')).trim();
  say(
    `   ${loop.path} /guest.txt (read with debugfs): "${onHost}"  ${onHost === 'written-in-the-pod' ? 'OK' : 'MISMATCH'}`,
  );
  if (!recordGone || onHost !== 'written-in-the-pod') throw new Error('the pod path check failed');
}

/** Undoes what runDemo made, in order: volumes (through vmplugd), vmplugd, image, loop device. */
async function teardown(bed: DemoBed, made: Made): Promise<void> {
  for (const v of made.attached) {
    await made.client?.detach(bed.sandbox.id, v, { timeoutMs: 30_000 }).catch(() => {});
  }
  if (made.published) await made.client?.unpublish(POD.uid, 'pvc-pod', { timeoutMs: 30_000 }).catch(() => {});
  await made.daemon?.stop().catch(() => {});
  if (made.image !== undefined) await bed.ceph?.removeImage(made.image).catch(() => {});
  await made.loop?.detach().catch(() => {});
  await made.podLoop?.detach().catch(() => {});
}

async function main(): Promise<number> {
  // Ctrl-C: say so; the test bed's own exit guards then kill vmplugd, QEMU and Ceph, detach the
  // loop device and remove the temp dirs synchronously.
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      process.stdout.write(
        `\n${sig}: stopping vmplugd, QEMU and Ceph, detaching the loop device, removing temp files\n`,
      );
      // Should no guard be installed yet, leave anyway (the 'exit' guards still run).
      setImmediate(() => process.exit(130));
    });
  }
  say('vmplug demo: vmplugd hot-plugs an RBD image and a host block device into a Kata-shaped guest,');
  say("then publishes a volume for a Kata pod by UID and Kata's side plugs it");
  say('starting a single-node Ceph (mon, mgr, OSD on loopback) and booting the guest...');
  const bed = await startDemoBed({ ceph: true, forDaemon: true, pod: POD, log: (l) => say(l) });
  say(`Kata's monitor ${bed.sandbox.kataQmpPath} stays held (like the Kata shim);`);
  say(`vmplugd will use the private one the wrapper made: ${bed.sandbox.vmplugQmpPath}`);
  const made: Made = { attached: new Set() };
  bed.defer(() => teardown(bed, made));
  try {
    say('');
    await runDemo(bed, made);
  } finally {
    say('');
    say('cleaning up: vmplugd, guest, loop device, RBD image, Ceph, temp files...');
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
