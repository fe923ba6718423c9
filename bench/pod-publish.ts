/**
 * Pod volumes (DESIGN §5b) through vmplugd's REST API, one run: PUT /v1/pods/{uid}/volumes/{id}
 * -> 201 (the Kata direct-volume record is durable before the reply) and DELETE -> 204, for block
 * mode (a loop device) and rbd mode (a qemu-storage-daemon per volume: spawn, QMP, image open,
 * vhost-user-blk export, major-241 node), plus a storage daemon's RSS with one export.
 *
 * Between PUT and DELETE, Kata's side (test/env/kata-runtime.ts, what Kata's runtime does with the
 * record) plugs the volume into a running Kata-shaped sandbox whose RAM is shared: plug call sent
 * -> the guest reports the disk (its DISK-ADD line), for block (`blockdev-add host_device` +
 * `scsi-hd`) and rbd via the storage daemon (`chardev-add` + `vhost-user-blk-pci`); then Kata's
 * unplug. For comparison, the same image hot-attached in QEMU by vmplugd (`PUT
 * /v1/sandboxes/{id}/volumes/{vid}`, `backend: 'qemu'`, on virtio-blk like vhost-user-blk):
 * PUT -> 201 and PUT -> the guest reports the disk.
 * Prints figures; asserts nothing; removes everything it made.
 *
 *   npm run bench:pod-publish [-- --rounds 5]
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { AttachSourceRequest } from '../api/index.js';
import { QmpClient } from '../qmp/index.js';
import { findDaemons } from '../storage/storage-daemon/process.js';
import { type CephCluster, startCeph } from '../test/env/ceph.js';
import { type DaemonProcess, startDaemonProcess, waitServing } from '../test/env/daemon.js';
import { plugUntilGuestSees, unplugUntilGuestDrops } from '../test/env/kata-plug-seen.js';
import { createLoopDevice, type LoopDevice } from '../test/env/loop.js';
import { rbdSource } from '../test/env/rbd-request.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../test/env/sandbox.js';
import { hostContext, printTable, summarize } from './figures.js';

const roundsArg = process.argv.indexOf('--rounds');
const rounds = roundsArg > 0 ? Number(process.argv[roundsArg + 1]) : 5;
if (!Number.isInteger(rounds) || rounds < 2) throw new Error('--rounds wants an integer >= 2');
const GUEST_TIMEOUT_MS = 30_000;

interface PodVolume {
  recordPath: string;
  timeline: { step: string; ms: number }[];
}

interface Attachment {
  serial: string;
  backend?: string;
}

async function rssKiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? Number.NaN);
}

async function qsdPids(stateDir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const name of await readdir(join(stateDir, 'qsd')).catch(() => [])) {
    const text = await readFile(join(stateDir, 'qsd', name, 'state.json'), 'utf8').catch(() => '');
    const pid = Number(/"pid":\s*(\d+)/.exec(text)?.[1]);
    if (Number.isInteger(pid)) pids.push(pid);
  }
  return pids;
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'vmpb-'));
  let root: TestRoot | undefined;
  let sandbox: KataSandbox | undefined;
  let inspector: QmpClient | undefined;
  let ceph: CephCluster | undefined;
  let daemon: DaemonProcess | undefined;
  let loop: LoopDevice | undefined;
  const images: string[] = [];
  try {
    root = await createTestRoot();
    // Kata's side needs a guest whose RAM is shared (vhost-user) and a monitor of its own.
    // Settled, not Promise.all: whatever started is stopped below even when another start failed.
    const [c, l, s] = await Promise.allSettled([
      startCeph(),
      createLoopDevice(16 * 1024 * 1024),
      startKataSandbox(root, { sharedMemory: true, inspectMonitor: true }),
    ]);
    if (c.status === 'fulfilled') ceph = c.value;
    if (l.status === 'fulfilled') loop = l.value;
    if (s.status === 'fulfilled') sandbox = s.value;
    for (const r of [c, l, s]) if (r.status === 'rejected') throw r.reason;
    if (!ceph || !loop || !sandbox) throw new Error('unreachable: every start settled');
    inspector = await QmpClient.connect(sandbox.inspectQmpPath ?? '');
    const accel = /accel=(\w+)/.exec(sandbox.args.join(' '))?.[1]?.toUpperCase() ?? '?';
    process.stdout.write(
      `${hostContext()}, CPU ${cpus()[0]?.model ?? '?'}\n` +
        `guest: ${accel}, q35, 1 vCPU, 256 MiB shared memfd RAM, polls /sys/block every 20 ms; ` +
        `booted in ${(sandbox.bootMs / 1000).toFixed(1)} s\n`,
    );
    const dvRoot = join(dir, 'direct-volumes');
    const store = join(dir, 'store');
    daemon = await startDaemonProcess({
      dir,
      monitorDir: root.monitorDir,
      kataVmRoot: root.kataVmRoot,
      logLevel: 'warn',
      extraArgs: ['--kata-direct-volume-root', dvRoot, '--kata-vhost-user-store', store],
    });
    await waitServing(daemon, sandbox.id);
    const { guest } = sandbox;
    const put: Record<'block' | 'rbd', number[]> = { block: [], rbd: [] };
    const del: Record<'block' | 'rbd', number[]> = { block: [], rbd: [] };
    const seen: Record<'block' | 'rbd', number[]> = { block: [], rbd: [] };
    const qemuReply: number[] = [];
    const qemuSeen: number[] = [];
    const backendStep: number[] = [];
    let rss = Number.NaN;
    for (let i = 0; i < rounds; i++) {
      for (const mode of ['block', 'rbd'] as const) {
        const uid = randomUUID();
        const targetPath = `/var/lib/kubelet/pods/${uid}/volumes/kubernetes.io~csi/pvc-${i}/mount`;
        let source: AttachSourceRequest;
        if (mode === 'block') source = { type: 'hostDevice', path: loop.path };
        else {
          // One image for every round: the first publish formats it, the others find ext4.
          if (images.length === 0) {
            images.push(`bench-${randomBytes(4).toString('hex')}`);
            await ceph.createImage(images[0] as string, 64 * 1024 * 1024);
          }
          const image = images[0] as string;
          source = rbdSource(ceph, image);
        }
        const url = `/v1/pods/${uid}/volumes/v${i}`;
        const t0 = performance.now();
        const r = await daemon.call<PodVolume>('PUT', url, { mode, source, targetPath, fsType: 'ext4' });
        put[mode].push(performance.now() - t0);
        if (r.status !== 201) throw new Error(`PUT ${mode}: ${r.status} ${JSON.stringify(r.body)}`);
        await stat(r.body.recordPath);
        if (mode === 'rbd') {
          backendStep.push(r.body.timeline.find((s) => s.step === 'BackendReady')?.ms ?? Number.NaN);
          if (i === 0)
            rss = (await Promise.all((await qsdPids(daemon.stateDir)).map(rssKiB)))[0] ?? Number.NaN;
        }

        // Kata's runtime at CreateContainer, then at the container's end.
        const plugged = await plugUntilGuestSees(guest, {
          qmp: inspector,
          directVolumeRoot: dvRoot,
          mountSource: targetPath,
          sandboxId: sandbox.id,
          ...(mode === 'rbd' ? { vhostUserStore: store, pciBus: 'vmplug-rp0' } : {}),
          guestTimeoutMs: GUEST_TIMEOUT_MS,
        });
        // A scsi plug in rbd mode would time the wrong path.
        const kind = mode === 'rbd' ? 'vhost-user-blk' : 'scsi';
        if (plugged.plug.kind !== kind)
          throw new Error(`${mode}: Kata plugged ${plugged.plug.kind}, not ${kind}`);
        seen[mode].push(plugged.disk.seenAt - plugged.startedAt);
        await unplugUntilGuestDrops(inspector, guest, plugged, { guestTimeoutMs: GUEST_TIMEOUT_MS });

        const t2 = performance.now();
        const d = await daemon.call('DELETE', url, undefined, 60_000);
        del[mode].push(performance.now() - t2);
        if (d.status !== 204) throw new Error(`DELETE ${mode}: ${d.status}`);
      }

      // The same image hot-attached in QEMU by vmplugd (librbd in the guest's QEMU).
      const url = `/v1/sandboxes/${sandbox.id}/volumes/q${i}`;
      const known = new Set(guest.disks().map((d) => d.name));
      const t0 = performance.now();
      const a = await daemon.call<Attachment>('PUT', url, {
        mode: 'rbd',
        source: rbdSource(ceph, images[0] as string),
        backend: 'qemu',
        bus: 'virtio-blk',
      });
      qemuReply.push(performance.now() - t0);
      if (a.status !== 201 || a.body.backend !== 'qemu')
        throw new Error(`PUT rbd in QEMU: ${a.status} ${JSON.stringify(a.body)}`);
      const disk = await guest.waitForDisk((g) => !known.has(g.name) && g.serial === a.body.serial, {
        timeoutMs: GUEST_TIMEOUT_MS,
      });
      qemuSeen.push(disk.seenAt - t0);
      const d = await daemon.call('DELETE', url, undefined, 60_000);
      if (d.status !== 204) throw new Error(`DELETE rbd in QEMU: ${d.status}`);
      await guest.waitForDiskGone(disk.name, { timeoutMs: GUEST_TIMEOUT_MS });
    }
    const cols = ['n', 'min', 'median', 'p90', 'max'] as const;
    process.stdout.write(`first rbd publish (formats the blank image): ${put.rbd[0]?.toFixed(0)} ms\n`);
    printTable(
      `pod volumes through vmplugd, ${rounds} rounds (rbd PUT: the rounds after the first)`,
      [
        ['block PUT -> record written (201)', summarize(put.block)],
        ['block DELETE -> 204', summarize(del.block)],
        ['rbd PUT -> record written (201)', summarize(put.rbd.slice(1))],
        ['  of which storage daemon + export', summarize(backendStep.slice(1))],
        ['rbd DELETE -> 204 (daemon stopped)', summarize(del.rbd)],
      ],
      cols,
    );
    printTable(
      `Kata-side plug -> the guest reports the disk (DISK-ADD), ${rounds} rounds`,
      [
        ['block: blockdev-add host_device + scsi-hd', summarize(seen.block)],
        ['rbd via storage daemon: chardev-add + vhost-user-blk-pci', summarize(seen.rbd)],
        ['rbd in QEMU (vmplugd PUT, backend qemu, virtio-blk) -> 201', summarize(qemuReply)],
        ['rbd in QEMU (vmplugd PUT, backend qemu, virtio-blk) -> guest', summarize(qemuSeen)],
      ],
      cols,
    );
    process.stdout.write(`\nstorage daemon RSS with one rbd export: ${(rss / 1024).toFixed(1)} MiB\n`);
  } finally {
    await inspector?.close();
    await daemon?.stop();
    // Storage daemons outlive vmplugd by design: a run that failed midway must not leave one.
    for (const q of daemon ? await findDaemons('qemu-storage-daemon', daemon.stateDir) : [])
      process.kill(q.pid, 'SIGKILL');
    await root?.cleanup();
    for (const i of images) await ceph?.removeImage(i).catch(() => undefined);
    await ceph?.stop();
    await loop?.detach();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
