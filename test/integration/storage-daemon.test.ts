// The qemu-storage-daemon backend against the real test Ceph and a test guest whose RAM is shared:
// a blank image is formatted once on the host, exported as vhost-user-blk into a (test) Kata
// vhost-user store with its major-241 node, plugged into the guest exactly as Kata's runtime
// plugs such a node (chardev-add socket client + vhost-user-blk-pci on a root port), written by
// the guest, and found in the RBD image afterwards. Then: stop leaves nothing behind, a kill -9
// of the daemon is repaired by supervise, a second backend instance (vmplugd restarted) adopts
// the running daemon instead of starting another, and a dead Ceph is a fast CEPH_UNREACHABLE.
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { lstat, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { deviceDelAndWait, QmpClient } from '../../qmp/index.js';
import { rootPortId } from '../../storage/naming.js';
import { createStorageDaemonBackend, type QsdBackend } from '../../storage/storage-daemon/backend.js';
import { splitDev } from '../../storage/storage-daemon/device-node.js';
import { exportNameOf } from '../../storage/storage-daemon/naming.js';
import {
  findDaemons,
  isRunning,
  type ProcessIdentity,
  waitGone,
} from '../../storage/storage-daemon/process.js';
import type { ExportRequest, StorageDaemonBackend } from '../../storage/storage-daemon/types.js';
import { Secret } from '../../storage/volume-spec.js';
import { attachCeph, type CephCluster, rbdSourceOf } from '../env/ceph.js';
import { readInGuest, writeInGuest } from '../env/hotplug.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../env/sandbox.js';

const MiB = 1024 * 1024;
const timeoutMs = 30_000;
/** ext4 superblock at 1024: magic at +0x38, UUID at +0x68. */
const EXT4_MAGIC = Buffer.from([0x53, 0xef]);

describe('qemu-storage-daemon backend (real Ceph, guest with shared RAM)', () => {
  let ceph: CephCluster;
  let root: TestRoot;
  let sandbox: KataSandbox;
  let qmp: QmpClient;
  let backend: QsdBackend;
  let stateDir: string;
  let store: string;
  const images: string[] = [];

  const request = (owner: string, image: string, extra: Partial<ExportRequest> = {}): ExportRequest => ({
    key: exportNameOf(owner, image),
    source: rbdSourceOf(ceph, image),
    readOnly: false,
    ...extra,
  });

  const newImage = async (tag: string, size: number): Promise<string> => {
    const name = `qsd-${tag}-${randomBytes(3).toString('hex')}`;
    images.push(name);
    await ceph.createImage(name, size);
    return name;
  };

  const superblock = (image: string): Promise<Buffer> => ceph.readImage(image, 1024, 1024);

  /** Nothing of the export is left: no daemon for its socket, no node, no socket, no state. */
  const expectGone = async (b: QsdBackend, req: ExportRequest, daemon: ProcessIdentity): Promise<void> => {
    const p = b.paths(req.key);
    expect(await isRunning(daemon)).toBe(false);
    const left = await findDaemons('qemu-storage-daemon', stateDir);
    expect(left.filter((d) => d.qmpSocket === p.qmpSocket)).toEqual([]);
    for (const f of [p.devicePath, p.socketPath, p.stateFile, p.dir]) expect(existsSync(f), f).toBe(false);
  };

  beforeAll(async () => {
    ceph = attachCeph(inject('ceph'));
    root = await createTestRoot();
    stateDir = join(root.dir, 'qsd');
    store = join(root.dir, 'vu');
    backend = createStorageDaemonBackend({ stateDir, store }) as QsdBackend;
    sandbox = await startKataSandbox(root, { sharedMemory: true });
    qmp = await QmpClient.connect(sandbox.vmplugQmpPath, { timeoutMs: 10_000 });
  });

  afterAll(async () => {
    // The guest goes first: a daemon whose vhost-user client is still connected is not stopped.
    qmp?.destroy();
    await sandbox?.stop();
    await backend?.supervise([]).catch(() => {});
    // Detached by design, so a failed test would leave them running after the root is gone.
    for (const d of stateDir ? await findDaemons('qemu-storage-daemon', stateDir) : []) {
      process.kill(d.pid, 'SIGKILL');
    }
    await root?.cleanup();
    const existing = new Set(await ceph.listImages());
    // The daemon killed with SIGKILL leaves its watch on an image for ~30 s (osd_client_watch_timeout),
    // which refuses `rbd rm` meanwhile: such an image goes with the test cluster at the end of the run.
    for (const name of images) if (existing.has(name)) await ceph.removeImage(name).catch(() => {});
  });

  it('formats a blank image once, the guest gets it as Kata plugs it, its writes land in the image, stop leaves nothing', async () => {
    const image = await newImage('fmt', 64 * MiB);
    const req = request('pod-a', image, { formatIfBlank: 'ext4' });
    const info = await backend.ensureExport(req, { timeoutMs: 60_000 });
    expect(info.formatted).toBe(true);
    expect(info.sizeBytes).toBe(64 * MiB);
    const sb = await superblock(image);
    expect(sb.subarray(0x38, 0x3a).equals(EXT4_MAGIC)).toBe(true);

    // Kata's store: the node is block 241:<minor>, the socket listens.
    const st = await lstat(info.devicePath, { bigint: true });
    expect(st.isBlockDevice()).toBe(true);
    expect(splitDev(st.rdev)).toEqual({ major: 241, minor: info.minor });
    expect((await lstat(info.socketPath)).isSocket()).toBe(true);
    expect(info.socketPath).toBe(join(store, 'block', 'sockets', req.key.name));
    expect(info.devicePath).toBe(join(store, 'block', 'devices', req.key.name));

    // The key: in no argv on this machine, not in the state file, not in the daemon's log.
    const p = backend.paths(req.key);
    for (const entry of readdirSync('/proc').filter((e) => /^\d+$/.test(e))) {
      const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
      expect(cmdline.includes(ceph.clientKey), `argv of pid ${entry}`).toBe(false);
    }
    expect(await readFile(p.stateFile, 'utf8')).not.toContain(ceph.clientKey);
    expect(await readFile(p.logFile, 'utf8')).not.toContain(ceph.clientKey);

    // Repeating the call is a no-op on the same daemon.
    const again = await backend.ensureExport(req);
    expect({ ...again, formatted: true }).toEqual(info);
    expect(again.formatted).toBe(false);

    // Kata's plug of a vhost-user-blk node: a socket client chardev, then the device on a root port.
    await qmp.execute('chardev-add', {
      id: 'vu-a',
      backend: {
        type: 'socket',
        data: { addr: { type: 'unix', data: { path: info.socketPath } }, server: false },
      },
    });
    await qmp.execute('device_add', {
      driver: 'vhost-user-blk-pci',
      id: 'vub-a',
      chardev: 'vu-a',
      bus: rootPortId(0),
      addr: '0',
    });
    const disk = await sandbox.guest.waitForDisk((d) => d.sizeBytes === 64 * MiB, { timeoutMs });
    expect(disk.name).toMatch(/^vd[a-z]$/);
    // The guest reads the filesystem the host made.
    const guestSb = await readInGuest(sandbox.guest, disk.name, 1024, 1024);
    expect(guestSb.equals(sb)).toBe(true);
    const marker = `vmplug-qsd-${randomBytes(8).toString('hex')}`;
    const markerAt = 60 * MiB;
    await writeInGuest(sandbox.guest, disk.name, markerAt, marker);

    // While the guest holds the socket, stop waits (bounded) and says so; the node is gone already.
    await expect(backend.stopExport(req.key, { timeoutMs: 1_500 })).rejects.toMatchObject({
      code: 'DETACH_PENDING',
    });
    expect(existsSync(info.devicePath)).toBe(false);
    expect(await isRunning(info)).toBe(true);

    // Unplug as Kata does, then stop for real.
    await deviceDelAndWait(qmp, 'vub-a', { timeoutMs });
    await qmp.execute('chardev-remove', { id: 'vu-a' });
    await sandbox.guest.waitForDiskGone(disk.name, { timeoutMs });
    await backend.stopExport(req.key);
    await backend.stopExport(req.key); // idempotent
    await expectGone(backend, req, info);
    expect((await ceph.readImage(image, markerAt, marker.length)).toString('latin1')).toBe(marker);

    // Exported again with formatIfBlank: it holds ext4 now, so it is not formatted again.
    const third = await backend.ensureExport(req);
    expect(third.formatted).toBe(false);
    expect(third.pid).not.toBe(info.pid);
    expect((await superblock(image)).subarray(0x68, 0x78).equals(sb.subarray(0x68, 0x78))).toBe(true);
    expect((await ceph.readImage(image, markerAt, marker.length)).toString('latin1')).toBe(marker);
    await backend.stopExport(req.key);
    await expectGone(backend, req, third);
  });

  it('a second backend on the same state dir adopts the daemon; a kill -9 is repaired by supervise', async () => {
    const image = await newImage('adopt', 32 * MiB);
    const req = request('pod-b', image);
    let info = await backend.ensureExport(req);
    expect(info.formatted).toBe(false);

    // vmplugd restarted: a new instance finds the same daemon and starts no second one.
    const restarted: StorageDaemonBackend = createStorageDaemonBackend({ stateDir, store });
    const listed = await restarted.list();
    expect(listed.filter((l) => l.key.name === req.key.name)).toEqual([{ ...info }]);
    const adopted = await restarted.ensureExport(req);
    expect(adopted.pid).toBe(info.pid);
    expect(adopted.startTime).toBe(info.startTime);
    expect(await restarted.supervise([req])).toEqual({ restarted: [], stopped: [], failed: [] });
    const p = backend.paths(req.key);
    expect(
      (await findDaemons('qemu-storage-daemon', stateDir)).filter((d) => d.qmpSocket === p.qmpSocket),
    ).toHaveLength(1);
    await restarted.close();

    // Another image under the same name is refused; the serving export is untouched.
    await expect(
      backend.ensureExport({ ...req, source: { ...req.source, image: `${image}-other` } }),
    ).rejects.toMatchObject({ code: 'SPEC_CONFLICT' });
    await expect(backend.ensureExport({ ...req, readOnly: true })).rejects.toMatchObject({
      code: 'SPEC_CONFLICT',
    });

    // vmplugd killed between the spawn and the state write: the daemon is found by its argv.
    await rm(p.stateFile);
    const orphan = await backend.ensureExport(req);
    expect(orphan.pid).toBe(info.pid);
    expect(orphan.startTime).toBe(info.startTime);
    expect(orphan.minor).toBe(info.minor);
    expect(
      (await findDaemons('qemu-storage-daemon', stateDir)).filter((d) => d.qmpSocket === p.qmpSocket),
    ).toHaveLength(1);
    info = orphan;

    // The daemon dies while wanted: list no longer shows it, supervise starts a new one.
    process.kill(info.pid, 'SIGKILL');
    expect(await waitGone(info, 5_000)).toBe(true);
    expect(await backend.list()).toEqual([]);
    const result = await backend.supervise([req]);
    expect(result).toEqual({ restarted: [req.key], stopped: [], failed: [] });
    const [again] = await backend.list();
    expect(again).toBeDefined();
    expect(again?.pid).not.toBe(info.pid);
    expect(again?.minor).toBe(info.minor);
    expect((await lstat(info.socketPath)).isSocket()).toBe(true);
    expect(splitDev((await lstat(info.devicePath, { bigint: true })).rdev)).toEqual({
      major: 241,
      minor: info.minor,
    });

    // Nobody wants it any more: supervise stops it and leaves nothing.
    expect(await backend.supervise([])).toEqual({ restarted: [], stopped: [req.key], failed: [] });
    await expectGone(backend, req, again as ProcessIdentity);
  });

  it('a refused key is BACKEND_FAILED without the key in the message, and leaves nothing', async () => {
    const image = await newImage('badkey', 8 * MiB);
    const req = request('pod-d', image);
    const wrong = Buffer.from(ceph.clientKey, 'base64');
    wrong[wrong.length - 1] = (wrong.at(-1) ?? 0) ^ 0xff;
    const badKey = wrong.toString('base64');
    const bad: ExportRequest = { ...req, source: { ...req.source, key: new Secret(badKey) } };
    const err = (await backend.ensureExport(bad, { timeoutMs: 30_000 }).catch((e: unknown) => e)) as Error & {
      code?: string;
    };
    expect(err.code).toBe('BACKEND_FAILED');
    expect(`${err.message} ${String(err.cause)}`).not.toContain(badKey);
    const p = backend.paths(req.key);
    expect(existsSync(p.dir)).toBe(false);
    expect(
      (await findDaemons('qemu-storage-daemon', stateDir)).filter((d) => d.qmpSocket === p.qmpSocket),
    ).toEqual([]);
  });

  it('Ceph monitors that do not answer fail fast with CEPH_UNREACHABLE and leave nothing', async () => {
    const req = request('pod-c', 'nonexistent');
    const dead: ExportRequest = {
      ...req,
      source: { ...req.source, monitors: [{ host: '127.0.0.1', port: 1 }] },
    };
    await expect(backend.ensureExport(dead)).rejects.toMatchObject({ code: 'CEPH_UNREACHABLE' });
    const p = backend.paths(req.key);
    expect(existsSync(p.dir)).toBe(false);
    expect(existsSync(p.devicePath)).toBe(false);
  });
});
