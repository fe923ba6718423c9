/**
 * What direct mode is for: fio in the test guest on the same backing storage through each path,
 * in one run. 4k random read and write IOPS (iodepth 16, O_DIRECT) and 1 MiB sequential read and
 * write MB/s, a few seconds each:
 *   (a) virtio-fs: Debian's virtiofsd (/usr/lib/qemu/virtiofsd, cache=none: no guest page cache;
 *       it drops the guest's O_DIRECT, so the host side is buffered like the loop device's)
 *       sharing a host directory on the same file system as the loop device's backing file,
 *       vhost-user-fs-pci hot-plugged, guest RAM shared (sandbox.ts sharedMemory), guest module
 *       virtiofs: Kata's default way of giving a pod a volume
 *   (b) block mode through vmplugd: the loop device as scsi-hd and as virtio-blk-pci
 *   (c) rbd mode through vmplugd: librbd in the guest's QEMU
 *   (d) rbd mode through vmplugd with `backend: storage-daemon` (DESIGN §5c): vmplugd starts a
 *       qemu-storage-daemon that opens the image with librbd and exports vhost-user-blk; the
 *       guest's QEMU gets a socket chardev and a vhost-user-blk-pci (guest RAM shared). vmplugd
 *       does the plugging (storage/storage-daemon/, storage/vhost-user.ts), as in
 *       test/integration/hot-attach-qsd.test.ts, so nothing of it is repeated here.
 *   (e) the host itself: the same fio on the loop device, and fio's rbd engine (librbd in fio's
 *       process: this host has no rbd or nbd kernel module) on the same image
 * fio comes from Debian's package with its libraries in a second cpio appended to the guest's
 * initramfs (bench/guest-io-initrd; test/env/build-guest is left alone).
 *
 *   npm run bench:guest-io [-- --seconds 4 --size-mib 256 --rounds 1]
 * Run time is about 8 paths x 4 jobs x --rounds x --seconds, plus Ceph, the guest's boot and fio's
 * start-up in the guest (about 5 min at the defaults on TCG).
 * KVM when VMPLUG_TEST_ACCEL=kvm and /dev/kvm opens read-write, TCG otherwise; the output says
 * which.
 */
import { execFile, spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { VmplugClient } from '../cli/client.js';
import { QmpSession } from '../qmp/index.js';
import { rootPortId } from '../storage/naming.js';
import { findDaemons } from '../storage/storage-daemon/process.js';
import { DIRECT_MODE_ANNOTATION } from '../storage/volume-spec.js';
import { type CephCluster, startCeph } from '../test/env/ceph.js';
import { type DaemonProcess, startDaemonProcess } from '../test/env/daemon.js';
import { ensureGuestImage, type GuestDisk } from '../test/env/guest.js';
import { createLoopDevice, type LoopDevice } from '../test/env/loop.js';
import { repoRoot } from '../test/env/paths.js';
import { rbdSource } from '../test/env/rbd-request.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../test/env/sandbox.js';
import { hostContext, summarize } from './figures.js';

const run = promisify(execFile);
const out = (line = ''): void => {
  process.stdout.write(`${line}\n`);
};
function flag(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : fallback;
  if (!Number.isInteger(v) || v < 1) throw new Error(`--${name} wants a positive integer`);
  return v;
}
const seconds = flag('seconds', 4);
const sizeMiB = flag('size-mib', 256);
const rounds = flag('rounds', 1);

/** KVM only when asked for and /dev/kvm opens; the reason goes into the output either way. */
async function chooseAccel(): Promise<{ accel: 'kvm' | 'tcg'; why: string }> {
  if (process.env.VMPLUG_TEST_ACCEL !== 'kvm') return { accel: 'tcg', why: 'VMPLUG_TEST_ACCEL=kvm for KVM' };
  try {
    await access('/dev/kvm', constants.R_OK | constants.W_OK);
    return { accel: 'kvm', why: 'VMPLUG_TEST_ACCEL=kvm, /dev/kvm usable' };
  } catch {
    return { accel: 'tcg', why: 'VMPLUG_TEST_ACCEL=kvm but /dev/kvm is not usable' };
  }
}

interface Figures {
  randReadIops: number;
  randWriteIops: number;
  seqReadMBs: number;
  seqWriteMBs: number;
}
// Writes first: reads of a fresh rbd image's never-written objects cost librbd nothing (zeros).
const JOBS = [
  ['randWriteIops', 'randwrite', '4k', 16],
  ['seqWriteMBs', 'write', '1m', 4],
  ['randReadIops', 'randread', '4k', 16],
  ['seqReadMBs', 'read', '1m', 4],
] as const;

/** fio's arguments for one job (target args: --filename=... or the rbd engine's). */
function fioArgs(target: string[], rw: string, bs: string, depth: number, engine = 'libaio'): string[] {
  return [
    '--name=bench',
    `--ioengine=${engine}`,
    ...(engine === 'rbd' ? [] : ['--direct=1']),
    `--rw=${rw}`,
    `--bs=${bs}`,
    `--iodepth=${depth}`,
    `--size=${Math.min(sizeMiB, 128)}M`,
    `--runtime=${seconds}`,
    '--time_based',
    '--output-format=json',
    ...target,
  ];
}

function figureOf(json: string, key: (typeof JOBS)[number][0]): number {
  const start = json.indexOf('{');
  const r = JSON.parse(json.slice(start)) as {
    jobs: Array<{ read: { iops: number; bw_bytes: number }; write: { iops: number; bw_bytes: number } }>;
  };
  const j = r.jobs[0] as (typeof r.jobs)[number];
  if (key === 'randReadIops') return j.read.iops;
  if (key === 'randWriteIops') return j.write.iops;
  if (key === 'seqReadMBs') return j.read.bw_bytes / 1e6;
  return j.write.bw_bytes / 1e6;
}

/**
 * Each job --rounds times in a row, the median kept: on a shared 2-core machine one round can land
 * on another process's burst (two single runs differed up to 3x in a cell).
 */
async function measure(
  runJob: (args: string[], rw: string) => Promise<string>,
  args: JobArgs,
): Promise<Figures> {
  const f = {} as Figures;
  for (const [key, rw, bs, depth] of JOBS) {
    const samples: number[] = [];
    for (let r = 0; r < rounds; r++) samples.push(figureOf(await runJob(args(rw, bs, depth), rw), key));
    f[key] = summarize(samples).median;
  }
  return f;
}
type JobArgs = (rw: string, bs: string, depth: number) => string[];

async function inGuest(sb: KataSandbox, target: string[]): Promise<Figures> {
  return measure(
    async (args, rw) => {
      const cmd = `LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu/ceph /usr/bin/fio ${args.join(' ')}`;
      const r = await sb.guest.run(cmd, { timeoutMs: (seconds + 60) * 1000 });
      if (r.exitCode !== 0)
        throw new Error(`guest fio ${rw} failed (${r.exitCode}): ${r.stderr.slice(-500)}`);
      return r.stdout;
    },
    (rw, bs, depth) => fioArgs(target, rw, bs, depth),
  );
}

async function onHost(
  fio: string,
  libDir: string,
  target: string[],
  engine = 'libaio',
  env: Record<string, string> = {},
): Promise<Figures> {
  return measure(
    async (args) => {
      const { stdout } = await run(fio, args, {
        env: { ...process.env, LD_LIBRARY_PATH: libDir, ...env },
        timeout: (seconds + 60) * 1000,
        maxBuffer: 16 * 1024 * 1024,
      });
      return stdout;
    },
    (rw, bs, depth) => fioArgs(target, rw, bs, depth, engine),
  );
}

async function main(): Promise<void> {
  const { accel, why } = await chooseAccel();
  const machine = `${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} cores, guest on ${accel.toUpperCase()}`;
  out(
    `bench:guest-io: fio in the test guest, accel ${accel.toUpperCase()} (${why}), ${seconds} s per job, median of ${rounds} round(s)`,
  );
  out(`machine: ${machine}`);
  out(hostContext());
  const cleanups: Array<() => Promise<unknown>> = [];
  let root: TestRoot | undefined;
  try {
    const image = await ensureGuestImage();
    const { stdout } = await run(join(repoRoot, 'bench', 'guest-io-initrd'), [image.dir], {
      timeout: 600_000,
    });
    const initrd = stdout.trim().split('\n').pop() as string;
    const hostFio = join(dirname(initrd), 'host', 'fio');
    const hostLib = join(dirname(initrd), 'host', 'lib');

    root = await createTestRoot();
    const [cephR, sbR] = await Promise.allSettled([
      startCeph(),
      startKataSandbox(root, {
        accel,
        sharedMemory: true,
        memoryMiB: 1024,
        maxMemoryMiB: 2048,
        inspectMonitor: true,
        initrd,
        bootTimeoutMs: 240_000,
      }),
    ]);
    if (cephR.status === 'fulfilled') cleanups.push(() => cephR.value.stop());
    if (cephR.status === 'rejected') throw cephR.reason;
    if (sbR.status === 'rejected') throw sbR.reason;
    const ceph: CephCluster = cephR.value;
    const sb = sbR.value;
    const imageName = 'guest-io';
    await ceph.createImage(imageName, sizeMiB * 1024 * 1024);
    const loop: LoopDevice = await createLoopDevice(sizeMiB * 1024 * 1024);
    cleanups.push(() => loop.detach());
    // The virtio-fs share lives beside the loop device's backing file: the same file system.
    const shareDir = join(dirname(loop.backingFile), 'share');
    await mkdir(shareDir);

    // Short: the storage daemons' QMP and vhost-user sockets live under it (< 108 bytes).
    const qsdRoot = await mkdtemp('/tmp/vgio-');
    const qsdDir = join(qsdRoot, 'qsd');
    cleanups.push(async () => {
      // Storage daemons outlive vmplugd by design: a failed run must not leave one running.
      for (const d of await findDaemons('qemu-storage-daemon', qsdDir)) process.kill(d.pid, 'SIGKILL');
      await rm(qsdRoot, { recursive: true, force: true });
    });
    const daemon: DaemonProcess = await startDaemonProcess({
      dir: join(root.dir, 'vmplugd'),
      monitorDir: root.monitorDir,
      kataVmRoot: root.kataVmRoot,
      logLevel: 'warn',
      extraArgs: ['--hot-attach-qsd-dir', qsdDir, '--hot-attach-vhost-user-store', join(qsdRoot, 'vu')],
    });
    cleanups.push(() => daemon.stop());
    const client = new VmplugClient({ socketPath: daemon.socketPath, timeoutMs: 120_000 });
    for (let i = 0; ; i++) {
      const list = await client.listSandboxes().catch(() => []);
      if (list.some((s) => s.id === sb.id && s.state === 'running')) break;
      if (i > 600) throw new Error('vmplugd did not discover the sandbox');
      await new Promise((r) => setTimeout(r, 100));
    }

    const rows: Array<[string, Figures]> = [];
    const step = (label: string): void => out(`  measuring ${label}...`);

    // (e) the host, on the loop device and on the image.
    step('host: loop device');
    rows.push(['(e) host, loop device', await onHost(hostFio, hostLib, [`--filename=${loop.path}`])]);
    const keyring = join(root.dir, 'fio-ceph.conf');
    await writeFile(
      keyring,
      `[global]\nmon_host = ${ceph.monitors.join(',')}\nkeyring = ${ceph.clientKeyringPath}\n`,
      { mode: 0o600 },
    );
    step('host: rbd engine');
    rows.push([
      '(e) host, fio rbd engine',
      await onHost(
        hostFio,
        hostLib,
        [`--clientname=${ceph.clientUser}`, `--pool=${ceph.pool}`, `--rbdname=${imageName}`],
        'rbd',
        { CEPH_CONF: keyring },
      ),
    ]);

    // (b) block mode, scsi and virtio-blk; (c) rbd mode; (d) rbd through the storage daemon.
    const cases = [
      ['(b) block, scsi-hd', { mode: 'block', bus: 'scsi', source: { type: 'hostDevice', path: loop.path } }],
      [
        '(b) block, virtio-blk',
        { mode: 'block', bus: 'virtio-blk', source: { type: 'hostDevice', path: loop.path } },
      ],
      [
        '(c) rbd in QEMU, scsi-hd',
        { bus: 'scsi', source: rbdSource(ceph, imageName), annotations: { [DIRECT_MODE_ANNOTATION]: 'rbd' } },
      ],
      [
        '(c) rbd in QEMU, virtio-blk',
        {
          bus: 'virtio-blk',
          source: rbdSource(ceph, imageName),
          annotations: { [DIRECT_MODE_ANNOTATION]: 'rbd' },
        },
      ],
      [
        '(d) rbd, storage daemon, vhost-user-blk',
        { mode: 'rbd', bus: 'virtio-blk', source: rbdSource(ceph, imageName), backend: 'storage-daemon' },
      ],
    ] as const;
    for (const [i, [label, body]] of cases.entries()) {
      step(label);
      const volumeId = `io-${i}`;
      const before = new Set((await sb.guest.snapshot()).map((d) => d.name));
      const { attachment } = await client.attach(sb.id, volumeId, body as never);
      if (label.startsWith('(d)') && attachment.backend !== 'storage-daemon')
        throw new Error(`(d) got backend ${attachment.backend}, not storage-daemon`);
      // A vhost-user-blk disk has no serial of ours (every one reads "vhost_user_blk"): the new one.
      const match =
        attachment.backend === 'storage-daemon'
          ? (d: GuestDisk) => d.serial === 'vhost_user_blk' && !before.has(d.name)
          : (d: GuestDisk) => d.serial === attachment.serial;
      const disk = await sb.guest.waitForDisk(match, { timeoutMs: 60_000 });
      rows.push([label, await inGuest(sb, [`--filename=/dev/${disk.name}`])]);
      await client.detach(sb.id, volumeId);
      await sb.guest.waitForDiskGone(disk.name, { timeoutMs: 60_000 });
    }

    // (a) virtio-fs.
    step('(a) virtio-fs');
    const vfsSock = join(root.dir, 'vfs.sock');
    const vfsd = spawn(
      '/usr/lib/qemu/virtiofsd',
      [`--socket-path=${vfsSock}`, '-o', `source=${shareDir}`, '-o', 'cache=none'],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    let vfsErr = '';
    vfsd.stderr?.on('data', (c: Buffer) => {
      vfsErr = (vfsErr + c.toString()).slice(-2000);
    });
    cleanups.push(async () => vfsd.kill('SIGKILL'));
    for (let i = 0; i < 100; i++) {
      try {
        await run('test', ['-S', vfsSock]);
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    const qmp = QmpSession.start(sb.inspectQmpPath as string, { defaultTimeoutMs: 30_000 });
    cleanups.push(() => qmp.close());
    await qmp.ready();
    await qmp.execute('chardev-add', {
      id: 'vfs0',
      backend: { type: 'socket', data: { addr: { type: 'unix', data: { path: vfsSock } }, server: false } },
    });
    // The last vmplug root port: vmplugd's disks are detached by now.
    await qmp.execute('device_add', {
      driver: 'vhost-user-fs-pci',
      id: 'vfs0dev',
      chardev: 'vfs0',
      tag: 'benchfs',
      bus: rootPortId(3),
      addr: '0',
    });
    const mount = await sb.guest.run(
      'mkdir -p /mnt/fs && for i in 1 2 3 4 5 6 7 8 9 10; do mount -t virtiofs benchfs /mnt/fs && exit 0; sleep 1; done; exit 1',
      { timeoutMs: 30_000 },
    );
    if (mount.exitCode !== 0) throw new Error(`virtiofs mount failed: ${mount.stderr} ${vfsErr}`);
    rows.push(['(a) virtio-fs (virtiofsd, cache=none)', await inGuest(sb, ['--filename=/mnt/fs/fio.dat'])]);

    // The table (markdown, for the README): each cell is the figure, its ratio to (a) virtio-fs
    // and to (e) the host on the same backing: the loop device for (a) and (b), the image for (c), (d).
    const row = (prefix: string): Figures => rows.find(([l]) => l.startsWith(prefix))?.[1] as Figures;
    const a = row('(a)');
    const eLoop = row('(e) host, loop');
    const eRbd = row('(e) host, fio rbd');
    // Measured in the order the guest's root ports allow; shown (a) to (e).
    rows.sort(([x], [y]) => x.localeCompare(y));
    out();
    out(
      `fio ${seconds} s per job (median of ${rounds}), ${Math.min(sizeMiB, 128)} MiB region, libaio O_DIRECT, 4k iodepth 16, 1M iodepth 4; ` +
        `1 vCPU, 1 GiB shared RAM; machine: ${machine}; ${new Date().toISOString().slice(0, 10)}`,
    );
    out();
    const cols = ['4k randread IOPS', '4k randwrite IOPS', '1M read MB/s', '1M write MB/s'];
    const keys = ['randReadIops', 'randWriteIops', 'seqReadMBs', 'seqWriteMBs'] as const;
    const width = Math.max(...rows.map(([l]) => l.length));
    out(`| ${'path'.padEnd(width)} | ${cols.map((c) => c.padEnd(24)).join(' | ')} |`);
    out(`|${'-'.repeat(width + 2)}|${cols.map(() => '-'.repeat(26)).join('|')}|`);
    for (const [label, f] of rows) {
      const e = label.includes('rbd') ? eRbd : eLoop;
      const cell = (k: (typeof keys)[number]): string =>
        `${f[k].toFixed(0)} (${(f[k] / a[k]).toFixed(2)} a, ${(f[k] / e[k]).toFixed(2)} e)`.padEnd(24);
      out(`| ${label.padEnd(width)} | ${keys.map(cell).join(' | ')} |`);
    }
    out();
    out(
      '(x a) = ratio to (a) virtio-fs; (x e) = ratio to (e) the host on the same backing: the loop device for',
    );
    out(
      "(a)(b), the rbd image through librbd for (c)(d). The loop device and virtiofsd (which drops the guest's",
    );
    out(
      "O_DIRECT: no_allow_direct_io, its default and Kata's) both reach the backing file system through the host's",
    );
    out(
      'page cache; the rbd image lives in a 1-OSD Ceph on loopback whose store is on the same disk. librbd runs',
    );
    out(
      "with its defaults (rbd cache on) in fio's rbd engine, the guest's QEMU and the storage daemon alike.",
    );
    if (accel === 'tcg')
      out(
        'TCG: every guest instruction is emulated, so the guest rows are bound by the CPU cost of each I/O in the guest (driver, interrupts) and not by storage; compare guest paths with each other, not with (e).',
      );
    out(hostContext());
  } finally {
    for (const c of cleanups.reverse()) await c().catch(() => {});
    await root?.cleanup().catch(() => {});
  }
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
