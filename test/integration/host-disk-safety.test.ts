import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, realpath, rm, stat, symlink, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QmpClient } from '../../qmp/index.js';
import { majMinOf } from '../../storage/host-facts.js';
import { type DaemonProcess, startDaemonProcess, waitServing } from '../env/daemon.js';
import { vmplugObjects } from '../env/inspect.js';
import { createLoopDevice, type LoopDevice, TEST_BED_ALLOWED_DEVICES } from '../env/loop.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../env/sandbox.js';

// Never hand the node's own disks to a guest (issue 12), through a real vmplugd, a real Kata-shaped
// sandbox and real loop devices the host mounts, partitions and swaps on. Each refusal must leave
// nothing journalled and nothing in QEMU; an allowed, unused device must still reach the guest.
// Not here: a device under a device-mapper target. This kernel has no device-mapper (nor md)
// (FACTS.md), so no holder can be made; the holders rule is unit-tested (host-use.test.ts, and
// host-facts.test.ts reads holders from a sysfs-shaped tree).

const MiB = 1024 * 1024;

interface Problem {
  status: number;
  code: string;
  field?: string;
  detail: string;
}

interface Attachment {
  serial: string;
  state: string;
  source: { path?: string };
  nodeName: string;
  conditions?: { type: string; code: string; message: string; since: string }[];
}

function run(cmd: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(cmd, args, { timeout: 30_000, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${String(stderr).trim() || err.message}`));
      else resolve(String(stdout));
    });
    // A command that exits without reading its stdin must not turn into an EPIPE here.
    child.stdin?.on('error', () => undefined);
    if (input === undefined) child.stdin?.end();
    else child.stdin?.end(input);
  });
}

/** The block device the host's / is on (`/dev/vda` here), from mountinfo and sysfs. */
async function rootDevice(): Promise<string> {
  const lines = (await readFile('/proc/self/mountinfo', 'utf8'))
    .split('\n')
    .filter((l) => l.split(' ')[4] === '/');
  const f = (lines.at(-1) ?? '').split(' ');
  const majMin = f[2] ?? '0:0';
  if (majMin.startsWith('0:')) {
    throw new Error(
      `/ is on no block device (${f.slice(f.indexOf('-') + 1).join(' ')}): this test needs a host whose / is on a disk`,
    );
  }
  return `/dev/${basename(await realpath(`/sys/dev/block/${majMin}`))}`;
}

describe('host disk safety (real vmplugd, QEMU, loop devices)', () => {
  let root: TestRoot;
  let sandbox: KataSandbox;
  let daemonDir: string;
  let daemon: DaemonProcess;
  let inspector: QmpClient;
  let rootDev: string;
  const loops: LoopDevice[] = [];
  const cleanups: (() => Promise<unknown>)[] = [];
  const volPath = (vol: string) => `/v1/sandboxes/${sandbox.id}/volumes/${vol}`;
  const block = (path: string, extra: Record<string, unknown> = {}) => ({
    mode: 'block',
    source: { type: 'hostDevice', path },
    ...extra,
  });

  beforeAll(async () => {
    rootDev = await rootDevice();
    root = await createTestRoot();
    daemonDir = await mkdtemp(join(tmpdir(), 'vmphd-'));
    sandbox = await startKataSandbox(root, { inspectMonitor: true });
    inspector = await QmpClient.connect(sandbox.inspectQmpPath ?? '');
    daemon = await startDaemonProcess({
      dir: daemonDir,
      monitorDir: root.monitorDir,
      kataVmRoot: root.kataVmRoot,
      // The host's root disk is allowed here on purpose: the host-use check must refuse it anyway.
      extraArgs: [
        '--allowed-devices',
        `${TEST_BED_ALLOWED_DEVICES},${rootDev}`,
        '--reconcile-interval-ms',
        '500',
      ],
    });
    await waitServing(daemon, sandbox.id);
  });

  afterAll(async () => {
    // Host state first (mounts, swap, nodes in /dev), whatever failed: a mounted loop cannot detach.
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    await daemon?.stop();
    await inspector?.close();
    await sandbox?.stop();
    await root?.cleanup();
    for (const l of loops) await l.detach().catch(() => undefined);
    if (daemonDir) await rm(daemonDir, { recursive: true, force: true });
  });

  async function loop(sizeMiB = 32, partitionScan = false): Promise<LoopDevice> {
    const l = await createLoopDevice(sizeMiB * MiB, { partitionScan });
    loops.push(l);
    return l;
  }

  async function mountExt4(device: string): Promise<string> {
    await run('mkfs.ext4', ['-q', '-F', device]);
    const dir = await mkdtemp(join(tmpdir(), 'vmphd-mnt-'));
    await run('mount', ['-t', 'ext4', device, dir]);
    cleanups.push(async () => {
      await run('umount', [dir]).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    });
    return dir;
  }

  async function journalled(vol: string): Promise<boolean> {
    const names = await readdir(join(daemon.stateDir, 'journal', sandbox.id)).catch(() => [] as string[]);
    return names.some((n) => n.includes(vol));
  }

  /** Refused with `status`/`code` on source.path, with nothing journalled and nothing in QEMU. */
  async function expectRefused(vol: string, body: unknown, status: number, code: string): Promise<Problem> {
    const before = await vmplugObjects(inspector);
    const r = await daemon.call<Problem>('PUT', volPath(vol), body);
    expect(r.status, JSON.stringify(r.body)).toBe(status);
    expect(r.contentType).toContain('application/problem+json');
    expect(r.body).toMatchObject({ code, field: 'source.path' });
    expect(await journalled(vol)).toBe(false);
    expect((await daemon.call('GET', volPath(vol))).status).toBe(404);
    expect(await vmplugObjects(inspector)).toEqual(before);
    return r.body;
  }

  it('refuses a loop device with an ext4 filesystem mounted on the host (409 DEVICE_IN_USE)', async () => {
    const l = await loop();
    const at = await mountExt4(l.path);
    const p = await expectRefused('vol-mounted', block(l.path), 409, 'DEVICE_IN_USE');
    expect(p.detail).toContain(`${l.path} is mounted on ${at}`);
  });

  it('refuses a partitioned loop device one of whose partitions is mounted', async () => {
    const l = await loop(64, true);
    await run('sfdisk', ['-q', l.path], 'label: dos\n,16MiB\n,\n');
    // This kernel has no partition-table parsers: the partitions are added with BLKPG (partx).
    await run('partx', ['-u', l.path]);
    const part = `${l.path}p2`;
    for (let i = 0; i < 100 && !existsSync(part); i++) await new Promise((r) => setTimeout(r, 100));
    const at = await mountExt4(part);
    const p = await expectRefused('vol-part', block(l.path), 409, 'DEVICE_IN_USE');
    expect(p.detail).toContain(`${part} is mounted on ${at}`);
  });

  it('refuses a loop device used as swap', async () => {
    const l = await loop();
    await run('mkswap', ['-q', l.path]);
    await run('swapon', [l.path]);
    cleanups.push(() => run('swapoff', [l.path]));
    try {
      const p = await expectRefused('vol-swap', block(l.path, { bus: 'virtio-blk' }), 409, 'DEVICE_IN_USE');
      expect(p.detail).toContain(`${l.path} is an active swap area`);
    } finally {
      await run('swapoff', [l.path]);
    }
  });

  it("refuses the host's root device even read-only and even when the allow-list names it", async () => {
    const p = await expectRefused('vol-root', block(rootDev, { readOnly: true }), 409, 'DEVICE_IN_USE');
    expect(p.detail).toContain('is mounted on /');
    // Through a link, too: the link is resolved before any check.
    const link = `/dev/vmplug-hd-root-${randomBytes(3).toString('hex')}`;
    await symlink(rootDev, link);
    cleanups.push(() => unlink(link));
    await expectRefused('vol-root-link', block(link, { readOnly: true }), 409, 'DEVICE_IN_USE');
  });

  it('refuses a device outside the allow-list with 403 naming the setting, whatever it is called', async () => {
    // An unused loop device under another name: the allow-list is on the name, not on the use.
    const l = await loop();
    const st = await stat(l.path, { bigint: true });
    const [major, minor] = majMinOf(st.rdev).split(':');
    const node = `/dev/vmplug-hd-${randomBytes(3).toString('hex')}`;
    await run('mknod', [node, 'b', major ?? '', minor ?? '']);
    cleanups.push(() => unlink(node));
    const p = await expectRefused('vol-outside', block(node), 403, 'DEVICE_NOT_ALLOWED');
    expect(p.detail).toContain('allowedDevices (--allowed-devices, VMPLUG_ALLOWED_DEVICES)');
    expect(p.detail).toContain('/dev/loop*');
  });

  it('attaches an allowed, unused device named through a link: QEMU gets the resolved device and the guest sees it', async () => {
    const l = await loop();
    const link = `/dev/vmplug-hd-link-${randomBytes(3).toString('hex')}`;
    await symlink(l.path, link);
    cleanups.push(() => unlink(link));
    const put = await daemon.call<Attachment>('PUT', volPath('vol-ok'), block(link));
    expect(put.status, JSON.stringify(put.body)).toBe(201);
    expect(put.body.source.path).toBe(l.path);
    const nodes = await inspector.execute<{ 'node-name': string; file: string }[]>('query-named-block-nodes');
    expect(nodes.find((n) => n['node-name'] === put.body.nodeName)?.file).toBe(l.path);
    const disk = await sandbox.guest.waitForDisk((d) => d.serial === put.body.serial, { timeoutMs: 30_000 });
    const pattern = `vmplug-hd-${randomBytes(4).toString('hex')}`;
    const w = await sandbox.guest.run(`printf '%s' '${pattern}' > /dev/${disk.name} && sync`);
    expect(w.exitCode, w.stderr).toBe(0);
    expect((await l.readBacking(0, pattern.length)).toString()).toBe(pattern);
    // The same request again is the same attachment (the fingerprint is of the request).
    expect((await daemon.call('PUT', volPath('vol-ok'), block(link))).status).toBe(200);
    expect((await daemon.call('DELETE', volPath('vol-ok'))).status).toBe(204);
  });

  it('reconcile reports an attached device the host started using (hostInUse), and it is never attached again', async () => {
    const l = await loop();
    const put = await daemon.call<Attachment>('PUT', volPath('vol-late'), block(l.path));
    expect(put.status, JSON.stringify(put.body)).toBe(201);
    await sandbox.guest.waitForDisk((d) => d.serial === put.body.serial, { timeoutMs: 30_000 });
    expect(put.body.conditions ?? []).toEqual([]);
    const at = await mountExt4(l.path);
    // A round may first catch mkfs holding the device (O_EXCL, also a host use); then the mount.
    let got: Attachment | undefined;
    for (let i = 0; i < 100; i++) {
      got = (await daemon.call<Attachment>('GET', volPath('vol-late'))).body;
      if (got.conditions?.some((c) => c.message.includes(at))) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(got?.state).toBe('Attached');
    expect(got?.conditions).toEqual([
      expect.objectContaining({
        type: 'HostInUse',
        code: 'DEVICE_IN_USE',
        message: expect.stringContaining(at),
      }),
    ]);
    expect(daemon.lines.some((s) => s.includes('"hostInUse"') && s.includes(l.path))).toBe(true);
    // Detached, it is refused like any device the host uses.
    expect((await daemon.call('DELETE', volPath('vol-late'))).status).toBe(204);
    await expectRefused('vol-late', block(l.path), 409, 'DEVICE_IN_USE');
  });

  it('logs every mutating request with the peer credentials of the caller', async () => {
    const audit = daemon.lines
      .filter((s) => s.includes('"audit"'))
      .map((s) => JSON.parse(s) as Record<string, unknown>);
    const put = audit.find((a) => a.method === 'PUT' && String(a.url).endsWith('/vol-mounted'));
    expect(put).toMatchObject({
      audit: true,
      peer: { uid: process.getuid?.(), gid: process.getgid?.(), pid: process.pid },
    });
    expect(audit.some((a) => a.method === 'GET')).toBe(false);
  });
});
