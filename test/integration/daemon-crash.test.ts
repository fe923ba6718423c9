import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { QmpClient } from '../../qmp/index.js';
import { attachCeph, type CephCluster } from '../env/ceph.js';
import { type DaemonProcess, diesOn, startDaemonProcess, waitServing } from '../env/daemon.js';
import { objectsOf, vmplugObjects } from '../env/inspect.js';
import { ATTACH_KILL_POINTS, DETACH_KILL_POINTS } from '../env/kill-points.js';
import { rbdRequest } from '../env/rbd-request.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../env/sandbox.js';

// kill -9 of vmplugd in the middle of attach and of detach, then a restart: the start-up
// reconcile must leave the sandbox either fully attached or fully clean, never a leak. The
// failpoints (daemon/failpoints.ts) kill the daemon exactly between a side effect and the journal
// write around it, for every step in turn.

const MiB = 1024 * 1024;

interface Attachment {
  state: string;
  serial: string;
  deviceId: string;
}

describe('vmplugd killed with SIGKILL mid-operation, then restarted', () => {
  let root: TestRoot;
  let sandbox: KataSandbox;
  let ceph: CephCluster;
  let dir: string;
  let inspector: QmpClient;
  let daemon: DaemonProcess | undefined;
  const images: string[] = [];

  beforeAll(async () => {
    ceph = attachCeph(inject('ceph'));
    root = await createTestRoot();
    dir = await mkdtemp(join(tmpdir(), 'vmpc-'));
    sandbox = await startKataSandbox(root, { inspectMonitor: true });
    inspector = await QmpClient.connect(sandbox.inspectQmpPath ?? '');
  });

  afterEach(async () => {
    await daemon?.stop();
    daemon = undefined;
  });

  afterAll(async () => {
    await daemon?.stop();
    // Every test detached what it attached: nothing of vmplug's is left in this QEMU.
    if (inspector) expect(await vmplugObjects(inspector)).toEqual([]);
    await inspector?.close();
    await sandbox?.stop();
    await root?.cleanup();
    const existing = new Set(ceph ? await ceph.listImages() : []);
    for (const i of images) if (existing.has(i)) await ceph.removeImage(i);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** Same state dir every time: the restarted daemon must find the crashed one's journal. */
  async function start(failpoint?: string): Promise<DaemonProcess> {
    const d = await startDaemonProcess({
      dir,
      monitorDir: root.monitorDir,
      kataVmRoot: root.kataVmRoot,
      logLevel: 'info',
      ...(failpoint !== undefined ? { failpoint } : {}),
    });
    // Ready = discovery settled and the start-up reconcile ran.
    await waitServing(d, sandbox.id);
    return d;
  }

  async function newImage(): Promise<string> {
    const name = `crash-${randomBytes(4).toString('hex')}`;
    images.push(name);
    await ceph.createImage(name, 32 * MiB);
    return name;
  }

  const rbdBody = (image: string) => rbdRequest(ceph, image, { bus: 'scsi' });

  /** Either fully attached (the guest has it) or fully clean (nothing in QEMU, nothing in the guest). */
  async function expectAttachedOrClean(d: DaemonProcess, volumeId: string, serial: string | undefined) {
    const volPath = `/v1/sandboxes/${sandbox.id}/volumes/${volumeId}`;
    const got = await d.call<Attachment>('GET', volPath);
    if (got.status === 200) {
      expect(got.body.state).toBe('Attached');
      await sandbox.guest.waitForDisk((g) => g.serial === got.body.serial, { timeoutMs: 20_000 });
      return 'attached' as const;
    }
    expect(got.status).toBe(404);
    expect(await objectsOf(inspector, sandbox.id, volumeId)).toEqual([]);
    if (serial !== undefined) {
      const seen = sandbox.guest.disks().find((g) => g.serial === serial);
      if (seen) await sandbox.guest.waitForDiskGone(seen.name, { timeoutMs: 20_000 });
    }
    return 'clean' as const;
  }

  async function detachAndExpectClean(d: DaemonProcess, volumeId: string): Promise<void> {
    const volPath = `/v1/sandboxes/${sandbox.id}/volumes/${volumeId}`;
    expect((await d.call('DELETE', volPath)).status).toBe(204);
    expect((await d.call('GET', volPath)).status).toBe(404);
    expect(await objectsOf(inspector, sandbox.id, volumeId)).toEqual([]);
  }

  for (const { failpoint, volumeId, title } of ATTACH_KILL_POINTS.kata) {
    it(title, async () => {
      const image = await newImage();
      const volPath = `/v1/sandboxes/${sandbox.id}/volumes/${volumeId}`;
      daemon = await start(failpoint);
      const died = await diesOn(daemon, 'PUT', volPath, rbdBody(image));
      expect(died, `the failpoint ${failpoint} fired`).toBe(true);

      daemon = await start();
      const outcome = await expectAttachedOrClean(daemon, volumeId, undefined);
      // Whatever the outcome, a retry of the attach converges and a detach leaves nothing.
      const retry = await daemon.call<Attachment>('PUT', volPath, rbdBody(image));
      expect([200, 201], `${outcome}: ${JSON.stringify(retry.body)}`).toContain(retry.status);
      await sandbox.guest.waitForDisk((g) => g.serial === retry.body.serial, { timeoutMs: 20_000 });
      await detachAndExpectClean(daemon, volumeId);
    });
  }

  for (const { failpoint, volumeId, title } of DETACH_KILL_POINTS) {
    it(title, async () => {
      const image = await newImage();
      const volPath = `/v1/sandboxes/${sandbox.id}/volumes/${volumeId}`;
      daemon = await start(failpoint);
      const put = await daemon.call<Attachment>('PUT', volPath, rbdBody(image));
      expect(put.status, JSON.stringify(put.body)).toBe(201);
      const disk = await sandbox.guest.waitForDisk((g) => g.serial === put.body.serial, {
        timeoutMs: 20_000,
      });
      const died = await diesOn(daemon, 'DELETE', volPath);
      expect(died, `the failpoint ${failpoint} fired`).toBe(true);

      daemon = await start();
      const outcome = await expectAttachedOrClean(daemon, volumeId, put.body.serial);
      if (outcome === 'clean') await sandbox.guest.waitForDiskGone(disk.name, { timeoutMs: 20_000 });
      // The CSI plugin retries the detach: it must succeed and leave nothing.
      await detachAndExpectClean(daemon, volumeId);
      expect(sandbox.guest.disks().some((g) => g.serial === put.body.serial)).toBe(false);
    });
  }
});
