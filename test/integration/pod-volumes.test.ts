import { execFile } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { QmpClient } from '../../qmp/index.js';
import { keyDescriptionOf, keyringNameOf, loadKeyringAddon } from '../../storage/key-custody.js';
import { attachCeph } from '../env/ceph.js';
import { type DaemonProcess, diesOn, startDaemonProcess } from '../env/daemon.js';
import { catOnHost, ext4Image, ext4Loop } from '../env/ext4.js';
import { plugUntilGuestSees, type SeenPlug, unplugUntilGuestDrops } from '../env/kata-plug-seen.js';
import { kataVolumeDirName } from '../env/kata-runtime.js';
import { alive } from '../env/kube.js';
import { createLoopDevice, type LoopDevice } from '../env/loop.js';
import { rbdSource } from '../env/rbd-request.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../env/sandbox.js';

// Pod volumes end to end (issue 8, DESIGN §5b) through a vmplugd process: a CSI-style publish by
// pod UID writes Kata's direct-volume record; a stand-in for Kata's runtime reads it exactly as
// Kata does and plugs the device into a running test guest; the guest mounts the filesystem,
// reads what was there and writes more; after unplug and unpublish the data is on the device.

const run = promisify(execFile);
const MiB = 1024 * 1024;

interface PodVolume {
  state: string;
  step: string;
  sandboxId?: string;
  device?: string;
  recordPath: string;
  timeline: { step: string; ms: number }[];
}

function targetOf(podUid: string, pv: string): string {
  return `/var/lib/kubelet/pods/${podUid}/volumes/kubernetes.io~csi/${pv}/mount`;
}

async function listing(dir: string): Promise<string[]> {
  return readdir(dir).catch(() => []);
}

describe('pod volumes through vmplugd', () => {
  let root: TestRoot;
  let dir: string;
  let dvRoot: string;
  let daemon: DaemonProcess | undefined;
  const loops: LoopDevice[] = [];

  beforeAll(async () => {
    root = await createTestRoot();
    dir = await mkdtemp(join(tmpdir(), 'vmpp-'));
    dvRoot = join(dir, 'direct-volumes');
  });
  afterEach(async () => {
    await daemon?.stop();
    daemon = undefined;
  });
  afterAll(async () => {
    await daemon?.stop();
    for (const l of loops) await l.detach();
    await root?.cleanup();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** What a failed guest case shows: the guest's console and vmplugd's last lines. */
  async function showFailure(sandbox: KataSandbox | undefined): Promise<void> {
    if (sandbox) console.log(`guest console:\n${await readFile(sandbox.consoleLog, 'utf8').catch(() => '')}`);
    if (daemon) console.log(daemon.lines.slice(-30).join('\n'));
  }

  /** A new RBD image holding an ext4 with hello.txt; `imgFile` is its local copy (reused for the export). */
  async function ext4RbdImage(ceph: ReturnType<typeof attachCeph>, hello: string) {
    const image = `pod-${randomBytes(4).toString('hex')}`;
    const imgFile = join(dir, `${image}.ext4`);
    await ext4Image(imgFile, 64 * MiB, { 'hello.txt': hello });
    await ceph.importImage(image, await readFile(imgFile));
    return { image, imgFile };
  }

  /**
   * Kata's runtime at CreateContainer: the record of `targetPath` plugged (scsi for a host device,
   * vhost-user-blk from `store` for a storage daemon's node); the guest's new disk.
   */
  async function plugKata(
    sandbox: KataSandbox,
    inspector: QmpClient,
    targetPath: string,
    store?: string,
  ): Promise<SeenPlug> {
    const seen = await plugUntilGuestSees(sandbox.guest, {
      qmp: inspector,
      directVolumeRoot: dvRoot,
      mountSource: targetPath,
      sandboxId: sandbox.id,
      ...(store !== undefined ? { vhostUserStore: store, pciBus: 'vmplug-rp0' } : {}),
    });
    expect(seen.plug.kind).toBe(store !== undefined ? 'vhost-user-blk' : 'scsi');
    return seen;
  }

  /**
   * The guest mounts the plugged ext4 at /mnt/r, prints hello.txt, runs `then` there, unmounts;
   * then Kata's side unplugs it. Answers what the guest printed.
   */
  async function readThenUnplug(
    sandbox: KataSandbox,
    inspector: QmpClient,
    plugged: SeenPlug,
    then = 'true',
  ): Promise<string> {
    const dev = `/dev/${plugged.disk.name}`;
    const r = await sandbox.guest.run(
      `mkdir -p /mnt/r && mount -t ext4 ${dev} /mnt/r && cat /mnt/r/hello.txt && ${then} && umount /mnt/r || { dmesg | tail -20 >&2; exit 1; }`,
      { timeoutMs: 30_000 },
    );
    expect(r.stderr).toBe('');
    await unplugUntilGuestDrops(inspector, sandbox.guest, plugged);
    return r.stdout;
  }

  /** A guest case ends with its guest, vmplugd, its image and Kata's records gone. */
  async function endGuestCase(
    inspector: QmpClient | undefined,
    sandbox: KataSandbox | undefined,
    removeImage: () => Promise<unknown>,
  ): Promise<void> {
    await inspector?.close();
    await sandbox?.stop();
    await daemon?.stop();
    daemon = undefined;
    await removeImage().catch(() => undefined);
    await rm(dvRoot, { recursive: true, force: true });
  }

  async function start(failpoint?: string, extraArgs: string[] = []): Promise<DaemonProcess> {
    return startDaemonProcess({
      dir,
      monitorDir: root.monitorDir,
      kataVmRoot: root.kataVmRoot,
      logLevel: 'info',
      extraArgs: ['--kata-direct-volume-root', dvRoot, ...extraArgs],
      ...(failpoint !== undefined ? { failpoint } : {}),
    });
  }

  it('block mode: publish, Kata plugs it, the guest mounts and reads it, writes; unpublish; data on the device', async () => {
    const loop = await ext4Loop({ 'hello.txt': 'written before publish\n' });
    loops.push(loop);
    let sandbox: KataSandbox | undefined;
    let inspector: QmpClient | undefined;
    try {
      sandbox = await startKataSandbox(root, { inspectMonitor: true });
      inspector = await QmpClient.connect(sandbox.inspectQmpPath ?? '');
      daemon = await start();
      const podUid = randomUUID();
      const targetPath = targetOf(podUid, 'pvc-block-1');
      const url = `/v1/pods/${podUid}/volumes/vol-block-1`;
      const body = {
        mode: 'block',
        source: { type: 'hostDevice', path: loop.path },
        targetPath,
        fsType: 'ext4',
        mountOptions: ['noatime'],
        pod: { name: 'web-0', namespace: 'shop' },
      };
      const t0 = performance.now();
      const put = await daemon.call<PodVolume>('PUT', url, body);
      const putMs = performance.now() - t0;
      expect(put.status).toBe(201);
      expect(put.body).toMatchObject({ state: 'Published', device: loop.path });

      // The record, at the exact path Kata computes, with Kata's JSON, modes and no secret.
      const recordDir = join(dvRoot, kataVolumeDirName(targetPath));
      expect(
        kataVolumeDirName(targetPath).endsWith('=') || kataVolumeDirName(targetPath).length % 4 === 0,
      ).toBe(true);
      expect(put.body.recordPath).toBe(join(recordDir, 'mountInfo.json'));
      const text = await readFile(join(recordDir, 'mountInfo.json'), 'utf8');
      expect(JSON.parse(text)).toEqual({
        'volume-type': 'directvol',
        device: loop.path,
        fstype: 'ext4',
        metadata: {},
        options: ['rw', 'noatime'],
      });
      expect((await stat(recordDir)).mode & 0o777).toBe(0o700);
      expect((await stat(join(recordDir, 'mountInfo.json'))).mode & 0o777).toBe(0o600);
      console.log(
        `figure: block PUT -> record written ${putMs.toFixed(1)} ms (timeline ${JSON.stringify(put.body.timeline.map((t) => [t.step, t.ms]))})`,
      );

      // The same publish again (a CSI retry): 200; another spec: 409.
      expect((await daemon.call('PUT', url, body)).status).toBe(200);
      expect((await daemon.call('PUT', url, { ...body, fsType: 'xfs' })).status).toBe(409);

      // Kata's runtime at CreateContainer.
      const plugged = await plugKata(sandbox, inspector, targetPath);
      const { disk } = plugged;
      const got = await daemon.call<PodVolume>('GET', url);
      expect(got.body).toMatchObject({ state: 'Consumed', sandboxId: sandbox.id });

      // The guest (Kata's agent) mounts it, reads what was written before, writes more.
      const r = await sandbox.guest.run(
        `mkdir -p /mnt/v && mount -t ext4 -o noatime /dev/${disk.name} /mnt/v && cat /mnt/v/hello.txt && echo written-in-guest > /mnt/v/guest.txt && sync && umount /mnt/v || { grep ext4 /proc/filesystems >&2; lsmod >&2; dmesg | tail -20 >&2; exit 1; }`,
        { timeoutMs: 30_000 },
      );
      expect(r.stderr).toBe('');
      expect(r.exitCode).toBe(0);
      expect(r.stdout).toBe('written before publish\n');

      // The container goes: Kata unplugs; kubelet's NodeUnpublish: DELETE.
      await unplugUntilGuestDrops(inspector, sandbox.guest, plugged);
      expect((await daemon.call('DELETE', url)).status).toBe(204);
      expect(await listing(dvRoot)).toEqual([]);
      expect((await daemon.call('GET', url)).status).toBe(404);
      expect((await daemon.call('DELETE', url)).status).toBe(204);
      expect(await catOnHost(loop.path, '/guest.txt')).toBe('written-in-guest\n');
      expect(await catOnHost(loop.path, '/hello.txt')).toBe('written before publish\n');
    } catch (err) {
      if (sandbox)
        console.log(`guest console:\n${await readFile(sandbox.consoleLog, 'utf8').catch(() => '')}`);
      throw err;
    } finally {
      await inspector?.close();
      await sandbox?.stop();
      await rm(dvRoot, { recursive: true, force: true });
      await rm(join(dir, 'state', 'pods'), { recursive: true, force: true });
    }
  });

  it('rbd mode: a storage daemon exports the image into the store, Kata plugs vhost-user-blk, the guest mounts it; data in the image afterwards', async () => {
    const ceph = attachCeph(inject('ceph'));
    const { image, imgFile } = await ext4RbdImage(ceph, 'in the image before publish\n');
    const store = join(dir, 'store');
    let sandbox: KataSandbox | undefined;
    let inspector: QmpClient | undefined;
    try {
      sandbox = await startKataSandbox(root, { inspectMonitor: true, sharedMemory: true });
      inspector = await QmpClient.connect(sandbox.inspectQmpPath ?? '');
      daemon = await start(undefined, ['--kata-vhost-user-store', store]);
      const podUid = randomUUID();
      const targetPath = targetOf(podUid, 'pvc-rbd-1');
      const url = `/v1/pods/${podUid}/volumes/vol-rbd-1`;
      const body = {
        mode: 'rbd',
        source: rbdSource(ceph, image),
        targetPath,
        fsType: 'ext4',
      };
      const t0 = performance.now();
      const put = await daemon.call<PodVolume>('PUT', url, body);
      const putMs = performance.now() - t0;
      expect(put.status).toBe(201);
      expect(put.body.state).toBe('Published');
      console.log(
        `figure: rbd PUT -> record written ${putMs.toFixed(1)} ms (timeline ${JSON.stringify(put.body.timeline.map((t) => [t.step, t.ms]))})`,
      );
      const device = put.body.device ?? '';
      expect(device.startsWith(join(store, 'block', 'devices'))).toBe(true);
      const st = await stat(device);
      expect(st.isBlockDevice()).toBe(true);
      expect(Math.floor(st.rdev / 256) & 0xfff).toBe(241);
      const record = await readFile(join(dvRoot, kataVolumeDirName(targetPath), 'mountInfo.json'), 'utf8');
      expect(record).not.toContain(ceph.clientKey);
      expect(JSON.parse(record)).toMatchObject({ device, fstype: 'ext4' });
      expect(await daemon.cmdline()).not.toContain(ceph.clientKey);
      expect((await daemon.call('PUT', url, body)).status).toBe(200);

      const plugged = await plugKata(sandbox, inspector, targetPath, store);
      expect((await daemon.call<PodVolume>('GET', url)).body).toMatchObject({
        state: 'Consumed',
        sandboxId: sandbox.id,
      });
      expect(
        await readThenUnplug(
          sandbox,
          inspector,
          plugged,
          'echo written-over-vhost-user > /mnt/r/guest.txt && sync',
        ),
      ).toBe('in the image before publish\n');
      expect((await daemon.call('DELETE', url, undefined, 60_000)).status).toBe(204);
      expect(await listing(dvRoot)).toEqual([]);
      expect(
        await stat(device).then(
          () => true,
          () => false,
        ),
      ).toBe(false);
      await writeFile(imgFile, await ceph.exportImage(image));
      expect(await catOnHost(imgFile, '/guest.txt')).toBe('written-over-vhost-user\n');
    } catch (err) {
      await showFailure(sandbox);
      throw err;
    } finally {
      await endGuestCase(inspector, sandbox, () => ceph.removeImage(image));
      await rm(join(dir, 'state', 'pods'), { recursive: true, force: true });
    }
  });

  it('rbd: a storage daemon killed while published is restarted; a restarted vmplugd adopts it; DELETE stops it', async () => {
    const ceph = attachCeph(inject('ceph'));
    const image = `pod-${randomBytes(4).toString('hex')}`;
    await ceph.createImage(image, 32 * MiB);
    const store = join(dir, 'store');
    const flags = ['--kata-vhost-user-store', store, '--reconcile-interval-ms', '500'];
    try {
      daemon = await start(undefined, flags);
      const podUid = randomUUID();
      const url = `/v1/pods/${podUid}/volumes/vol-sup`;
      const body = {
        mode: 'rbd',
        source: rbdSource(ceph, image),
        targetPath: targetOf(podUid, 'pvc-sup'),
      };
      const put = await daemon.call<PodVolume>('PUT', url, body);
      expect(put.status).toBe(201);
      const device = put.body.device ?? '';
      const name = device.split('/').at(-1) ?? '';
      const stateFile = join(daemon.stateDir, 'qsd', name, 'state.json');
      const pidOf = async () => Number(/"pid":\s*(\d+)/.exec(await readFile(stateFile, 'utf8'))?.[1]);
      const first = await pidOf();
      expect(alive(first)).toBe(true);
      process.kill(first, 'SIGKILL');
      // The periodic reconcile restarts it (the key is in vmplugd's memory).
      const deadline = Date.now() + 60_000;
      let second = first;
      while (Date.now() < deadline) {
        second = await pidOf().catch(() => first);
        if (second !== first && alive(second)) break;
        await new Promise((r) => setTimeout(r, 250));
      }
      expect(second).not.toBe(first);
      expect(alive(second)).toBe(true);
      expect((await stat(device)).isBlockDevice()).toBe(true);
      expect((await daemon.call<PodVolume>('GET', url)).body.state).toBe('Published');

      // vmplugd dies and comes back: the running daemon is adopted, not duplicated or stopped.
      await daemon.crash();
      daemon = await start(undefined, flags);
      await new Promise((r) => setTimeout(r, 1_500));
      expect(await pidOf()).toBe(second);
      expect(alive(second)).toBe(true);
      expect((await daemon.call<PodVolume>('GET', url)).body.state).toBe('Published');

      expect((await daemon.call('DELETE', url, undefined, 60_000)).status).toBe(204);
      const gone = Date.now() + 15_000;
      while (alive(second) && Date.now() < gone) await new Promise((r) => setTimeout(r, 100));
      expect(alive(second)).toBe(false);
      expect(
        await stat(device).then(
          () => true,
          () => false,
        ),
      ).toBe(false);
      expect(await listing(dvRoot)).toEqual([]);
    } finally {
      await daemon?.stop();
      daemon = undefined;
      await ceph.removeImage(image).catch(() => undefined);
      await rm(dvRoot, { recursive: true, force: true });
    }
  });

  it('rbd: after kill -9 of vmplugd and of the storage daemon, a restarted vmplugd restarts the daemon with the key from the kernel keyring; Kata plugs it, the guest reads the data; it grows; unpublish leaves no key', async () => {
    const ceph = attachCeph(inject('ceph'));
    const { image } = await ext4RbdImage(ceph, 'kept across two crashes\n');
    const store = join(dir, 'store');
    const flags = ['--kata-vhost-user-store', store];
    const loaded = loadKeyringAddon();
    if ('missing' in loaded) throw new Error(loaded.missing);
    const kr = loaded.addon;
    let sandbox: KataSandbox | undefined;
    let inspector: QmpClient | undefined;
    let ringName = '';
    try {
      daemon = await start(undefined, flags);
      ringName = keyringNameOf(daemon.stateDir);
      const ring = () => kr.search(kr.USER_KEYRING, 'keyring', ringName);
      const podUid = randomUUID();
      const targetPath = targetOf(podUid, 'pvc-kr');
      const url = `/v1/pods/${podUid}/volumes/vol-kr`;
      const put = await daemon.call<PodVolume>('PUT', url, {
        mode: 'rbd',
        source: rbdSource(ceph, image),
        targetPath,
        fsType: 'ext4',
      });
      expect(put.status).toBe(201);
      const device = put.body.device ?? '';
      const name = device.split('/').at(-1) ?? '';
      // The key is in the keyring, as the key (and in no file of the state directory).
      const keyId = kr.search(ring() ?? 0, 'user', keyDescriptionOf(name));
      expect(keyId).not.toBeNull();
      expect(kr.read(keyId as number).toString('utf8')).toBe(ceph.clientKey);
      const { stdout: grep } = await run('grep', ['-rlF', ceph.clientKey, daemon.stateDir]).catch(() => ({
        stdout: '',
      }));
      expect(grep).toBe('');

      const stateFile = join(daemon.stateDir, 'qsd', name, 'state.json');
      const pidOf = async () => Number(/"pid":\s*(\d+)/.exec(await readFile(stateFile, 'utf8'))?.[1]);
      const first = await pidOf();
      // Both die: vmplugd first (its memory and the key in it are gone), then the storage daemon.
      await daemon.crash();
      daemon = undefined;
      process.kill(first, 'SIGKILL');
      while (alive(first)) await new Promise((r) => setTimeout(r, 50));
      daemon = await start(undefined, flags);
      const deadline = Date.now() + 60_000;
      let second = first;
      while (Date.now() < deadline) {
        second = await pidOf().catch(() => first);
        if (
          second !== first &&
          alive(second) &&
          /"phase":\s*"serving"/.test(await readFile(stateFile, 'utf8'))
        )
          break;
        await new Promise((r) => setTimeout(r, 250));
      }
      expect(second).not.toBe(first);
      expect(alive(second)).toBe(true);
      expect(await daemon.cmdline()).not.toContain(ceph.clientKey);
      expect(daemon.lines.join('\n')).not.toContain(ceph.clientKey);
      expect((await daemon.call<PodVolume>('GET', url)).body.state).toBe('Published');

      sandbox = await startKataSandbox(root, { inspectMonitor: true, sharedMemory: true });
      inspector = await QmpClient.connect(sandbox.inspectQmpPath ?? '');
      const plugged = await plugKata(sandbox, inspector, targetPath, store);
      expect(await readThenUnplug(sandbox, inspector, plugged)).toBe('kept across two crashes\n');
      // Expand (vmplug-csi's NodeExpandVolume): the daemon's image node grows; a shrink is refused
      // naming sizeBytes. QEMU 7.2's vhost-user-blk export sends no config-change message to a
      // connected guest, so the guest sees the new capacity at its next plug (checked here).
      const grown = await daemon.call<PodVolume & { sizeBytes?: number }>('POST', `${url}/resize`, {
        sizeBytes: 96 * MiB,
      });
      expect([grown.status, grown.body.sizeBytes]).toEqual([200, 96 * MiB]);
      const shrink = await daemon.call<{ field?: string }>('POST', `${url}/resize`, { sizeBytes: 32 * MiB });
      expect([shrink.status, shrink.body.field]).toEqual([422, 'sizeBytes']);
      const again = await plugKata(sandbox, inspector, targetPath, store);
      const seen = await sandbox.guest.run(`cat /sys/block/${again.disk.name}/size`, { timeoutMs: 10_000 });
      expect(Number(seen.stdout.trim()) * 512).toBe(96 * MiB);
      expect(await readThenUnplug(sandbox, inspector, again)).toBe('kept across two crashes\n');

      expect((await daemon.call('DELETE', url, undefined, 60_000)).status).toBe(204);
      // The key and the emptied keyring are gone from the kernel.
      expect(ring()).toBeNull();
      // /proc/keys drops them once the kernel's key gc has run (it is scheduled at the unlink).
      const procKeys = async () => {
        const until = Date.now() + 10_000;
        for (;;) {
          const text = await readFile('/proc/keys', 'utf8');
          const ours =
            text.includes(keyringNameOf(daemon?.stateDir ?? '')) || text.includes(keyDescriptionOf(name));
          if (!ours || Date.now() > until) return text;
          await new Promise((res) => setTimeout(res, 100));
        }
      };
      const text = await procKeys();
      expect(text).not.toContain(ringName);
      expect(text).not.toContain(keyDescriptionOf(name));
    } catch (err) {
      await showFailure(sandbox);
      throw err;
    } finally {
      await endGuestCase(inspector, sandbox, () => ceph.removeImage(image));
      // A failed run leaves nothing in root's @u either.
      const left = ringName === '' ? null : kr.search(kr.USER_KEYRING, 'keyring', ringName);
      if (left !== null) kr.unlink(left, kr.USER_KEYRING);
    }
  });

  it('bad input: each a problem+json naming the field, nothing left behind', async () => {
    const loop = await createLoopDevice(8 * MiB);
    loops.push(loop);
    daemon = await start();
    const podUid = randomUUID();
    const other = randomUUID();
    const body = {
      mode: 'block',
      source: { type: 'hostDevice', path: loop.path },
      targetPath: targetOf(podUid, 'pvc-x'),
    };
    // A record vmplug did not write, at the path of another target.
    const foreignTarget = targetOf(podUid, 'pvc-foreign');
    const foreignDir = join(dvRoot, kataVolumeDirName(foreignTarget));
    await mkdir(foreignDir, { recursive: true, mode: 0o700 });
    const foreign = '{"volume-type":"directvol","device":"/dev/sdz","fstype":"ext4","metadata":{}}';
    await writeFile(join(foreignDir, 'mountInfo.json'), foreign, { mode: 0o600 });
    const cases: [string, string, unknown, number, string][] = [
      ['podUid not a UUID', '/v1/pods/not-a-uuid/volumes/v1', body, 400, 'podUid'],
      [
        'targetPath of another pod',
        `/v1/pods/${podUid}/volumes/v1`,
        { ...body, targetPath: targetOf(other, 'pvc-x') },
        422,
        'targetPath',
      ],
      [
        'targetPath outside the kubelet root',
        `/v1/pods/${podUid}/volumes/v1`,
        { ...body, targetPath: `/srv/pods/${podUid}/volumes/kubernetes.io~csi/pvc-x/mount` },
        422,
        'targetPath',
      ],
      ['fsType not allowed', `/v1/pods/${podUid}/volumes/v1`, { ...body, fsType: 'btrfs' }, 422, 'fsType'],
      [
        'not a block device',
        `/v1/pods/${podUid}/volumes/v1`,
        { ...body, source: { type: 'hostDevice', path: '/dev/null' } },
        422,
        'source.path',
      ],
      [
        'a record vmplug did not write',
        `/v1/pods/${podUid}/volumes/v1`,
        { ...body, targetPath: foreignTarget },
        409,
        'targetPath',
      ],
    ];
    for (const [name, url, b, status, field] of cases) {
      const res = await daemon.call<{ field?: string; code: string }>('PUT', url, b);
      expect([name, res.status, res.contentType.split(';')[0], res.body.field]).toEqual([
        name,
        status,
        'application/problem+json',
        field,
      ]);
    }
    expect(await readFile(join(foreignDir, 'mountInfo.json'), 'utf8')).toBe(foreign);
    expect(await listing(dvRoot)).toEqual([kataVolumeDirName(foreignTarget)]);
    expect(await listing(join(daemon.stateDir, 'pods'))).toEqual([]);
    // DELETE of a volume never published leaves the foreign record alone too.
    expect((await daemon.call('DELETE', `/v1/pods/${podUid}/volumes/v1`)).status).toBe(204);
    expect(await readFile(join(foreignDir, 'mountInfo.json'), 'utf8')).toBe(foreign);
    await rm(foreignDir, { recursive: true });
  });

  describe('kill -9 of vmplugd at every journal write, then a restart converges', () => {
    const publishStates = ['Publishing', 'BackendReady', 'Published'];
    const unpublishStates = ['Unpublishing', 'RecordRemoved', 'BackendStopped'];
    let loop: LoopDevice;
    beforeAll(async () => {
      loop = await createLoopDevice(8 * MiB);
      loops.push(loop);
    });

    const cases = [
      ...publishStates.flatMap((s) =>
        [`kill-before:${s}`, `kill-after:${s}`].map((f) => ['publish', f] as const),
      ),
      ...unpublishStates.flatMap((s) =>
        [`kill-before:${s}`, `kill-after:${s}`].map((f) => ['unpublish', f] as const),
      ),
    ];
    it.each(cases)('%s with %s', async (op, failpoint) => {
      const podUid = randomUUID();
      const targetPath = targetOf(podUid, 'pvc-crash');
      const url = `/v1/pods/${podUid}/volumes/vol-crash`;
      const body = { mode: 'block', source: { type: 'hostDevice', path: loop.path }, targetPath };
      const recordPath = join(dvRoot, kataVolumeDirName(targetPath), 'mountInfo.json');
      if (op === 'unpublish') {
        daemon = await start();
        expect((await daemon.call('PUT', url, body)).status).toBe(201);
        await daemon.stop();
      }
      daemon = await start(failpoint);
      expect(
        await diesOn(daemon, op === 'publish' ? 'PUT' : 'DELETE', url, op === 'publish' ? body : undefined),
      ).toBe(true);
      daemon = await start();
      // After the start-up reconcile: the record exists exactly when the volume reads Published.
      const after = await daemon.call<PodVolume>('GET', url);
      const recordThere = await stat(recordPath).then(
        () => true,
        () => false,
      );
      if (after.status === 200) {
        expect(['Published', 'Failed']).toContain(after.body.state);
        expect(recordThere).toBe(after.body.state === 'Published');
      } else {
        expect(after.status).toBe(404);
        expect(recordThere).toBe(false);
      }
      // The caller's retry (kubelet retries a failed NodePublish / NodeUnpublish) converges.
      if (op === 'publish') {
        const retry = await daemon.call<PodVolume>('PUT', url, body);
        expect([200, 201]).toContain(retry.status);
        expect(retry.body.state).toBe('Published');
        expect(JSON.parse(await readFile(recordPath, 'utf8')).device).toBe(loop.path);
      }
      expect((await daemon.call('DELETE', url)).status).toBe(204);
      expect(
        await stat(recordPath).then(
          () => true,
          () => false,
        ),
      ).toBe(false);
      expect(await listing(dvRoot)).toEqual([]);
      expect(await listing(join(daemon.stateDir, 'pods'))).toEqual([]);
    });
  });
});
