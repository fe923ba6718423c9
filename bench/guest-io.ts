/**
 * What direct mode is for: fio in the test guest on the same backing storage through each path,
 * in one run. 4k random read and write IOPS (iodepth 16, O_DIRECT) and 1 MiB sequential read and
 * write MB/s, a few seconds each:
 *   (a) virtio-fs: Debian's virtiofsd (/usr/lib/qemu/virtiofsd, cache=none so O_DIRECT reaches the
 *       host) sharing a host directory on the same file system as the loop device's backing file,
 *       vhost-user-fs-pci hot-plugged, guest RAM shared (sandbox.ts sharedMemory), guest module
 *       virtiofs: Kata's default way of giving a pod a volume
 *   (b) block mode through vmplugd: the loop device as scsi-hd and as virtio-blk-pci
 *   (c) rbd mode through vmplugd: librbd in the guest's QEMU
 *   (e) the host itself: the same fio on the loop device, and fio's rbd engine on the same image
 * (d) rbd through the storage daemon (vhost-user-blk) is not measured yet.
 * fio comes from Debian's package with its libraries in a second cpio appended to the guest's
 * initramfs (bench/guest-io-initrd; test/env/build-guest is left alone).
 *
 *   npm run bench:guest-io [-- --seconds 4 --size-mib 256]
 */
import { execFile, spawn } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { VmplugClient } from '../cli/client.js';
import { QmpSession } from '../qmp/index.js';
import { rootPortId } from '../storage/naming.js';
import { DIRECT_MODE_ANNOTATION } from '../storage/volume-spec.js';
import { type CephCluster, startCeph } from '../test/env/ceph.js';
import { type DaemonProcess, startDaemonProcess } from '../test/env/daemon.js';
import { ensureGuestImage } from '../test/env/guest.js';
import { createLoopDevice, type LoopDevice } from '../test/env/loop.js';
import { repoRoot } from '../test/env/paths.js';
import { rbdSource } from '../test/env/rbd-request.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../test/env/sandbox.js';
import { hostContext } from './figures.js';

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
const accel = process.env.VMPLUG_TEST_ACCEL === 'kvm' ? 'kvm' : 'tcg';

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

async function inGuest(sb: KataSandbox, target: string[]): Promise<Figures> {
  const f = {} as Figures;
  for (const [key, rw, bs, depth] of JOBS) {
    const cmd = `LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu/ceph /usr/bin/fio ${fioArgs(target, rw, bs, depth).join(' ')}`;
    const r = await sb.guest.run(cmd, { timeoutMs: (seconds + 60) * 1000 });
    if (r.exitCode !== 0) throw new Error(`guest fio ${rw} failed (${r.exitCode}): ${r.stderr.slice(-500)}`);
    f[key] = figureOf(r.stdout, key);
  }
  return f;
}

async function onHost(
  fio: string,
  libDir: string,
  target: string[],
  engine = 'libaio',
  env: Record<string, string> = {},
): Promise<Figures> {
  const f = {} as Figures;
  for (const [key, rw, bs, depth] of JOBS) {
    const { stdout } = await run(fio, fioArgs(target, rw, bs, depth, engine), {
      env: { ...process.env, LD_LIBRARY_PATH: libDir, ...env },
      timeout: (seconds + 60) * 1000,
      maxBuffer: 16 * 1024 * 1024,
    });
    f[key] = figureOf(stdout, key);
  }
  return f;
}

async function main(): Promise<void> {
  out(
    `bench:guest-io: fio in the test guest (${accel.toUpperCase()}${accel === 'tcg' ? ', VMPLUG_TEST_ACCEL=kvm for KVM' : ''}), ${seconds} s per job`,
  );
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

    const daemon: DaemonProcess = await startDaemonProcess({
      dir: join(root.dir, 'vmplugd'),
      monitorDir: root.monitorDir,
      kataVmRoot: root.kataVmRoot,
      logLevel: 'warn',
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

    // (b) block mode, scsi and virtio-blk; (c) rbd mode.
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
    ] as const;
    for (const [i, [label, body]] of cases.entries()) {
      step(label);
      const volumeId = `io-${i}`;
      const { attachment } = await client.attach(sb.id, volumeId, body as never);
      const disk = await sb.guest.waitForDisk((d) => d.serial === attachment.serial, { timeoutMs: 60_000 });
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

    // The table.
    const a = rows.find(([l]) => l.startsWith('(a)'))?.[1] as Figures;
    const eLoop = rows[0]?.[1] as Figures;
    const eRbd = rows[1]?.[1] as Figures;
    out();
    out(
      `fio, ${seconds} s per job, ${Math.min(sizeMiB, 128)} MiB region; ${accel.toUpperCase()} guest (1 vCPU, 1 GiB); host loop device and Ceph (1 OSD on a sparse file) on the same disk`,
    );
    const cols = ['4k randread IOPS', '4k randwrite IOPS', '1M read MB/s', '1M write MB/s'];
    out(`  ${'path'.padEnd(40)}${cols.map((c) => c.padStart(26)).join('')}`);
    const keys = ['randReadIops', 'randWriteIops', 'seqReadMBs', 'seqWriteMBs'] as const;
    for (const [label, f] of rows) {
      const e = label.includes('rbd') ? eRbd : eLoop;
      out(
        `  ${label.padEnd(40)}${keys
          .map((k) =>
            `${f[k].toFixed(0)} (${(f[k] / a[k]).toFixed(2)}xa ${(f[k] / e[k]).toFixed(2)}xe)`.padStart(26),
          )
          .join('')}`,
      );
    }
    out(
      '  (N xa = ratio to virtio-fs, N xe = ratio to the host on the same device: loop for (a)(b), the image for (c))',
    );
    out(
      "  the host's loop device reaches its backing file through the host's page cache (O_DIRECT stops at the loop device)",
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
