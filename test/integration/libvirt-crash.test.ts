/**
 * kill -9 of vmplugd in the middle of an rbd attach and detach into a libvirt domain, then a
 * restart on the same state dir: the start-up reconcile (which waits for libvirtd's connection)
 * must leave the domain either fully attached or fully clean: no disk with vmplug's alias, no
 * vmplug ceph secret left in libvirt. A retry of the attach converges and a detach leaves nothing.
 * The failpoints (daemon/failpoints.ts) kill the daemon exactly around the journal writes.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { parseSandboxId, parseVolumeId } from '../../core/ids.js';
import { LibvirtConnection, type LibvirtUuid } from '../../libvirt/index.js';
import { volumeNames } from '../../storage/naming.js';
import { attachCeph, type CephCluster } from '../env/ceph.js';
import { type DaemonProcess, diesOn, startDaemonProcess, waitServing } from '../env/daemon.js';
import { ATTACH_KILL_POINTS, DETACH_KILL_POINTS } from '../env/kill-points.js';
import { startTestDomain, type TestDomain } from '../env/libvirt.js';
import { rbdRequest } from '../env/rbd-request.js';

const MiB = 1024 * 1024;

interface Attachment {
  state: string;
  serial: string;
}

describe('vmplugd killed mid-operation on a libvirt domain, then restarted', () => {
  let ceph: CephCluster;
  let domain: TestDomain;
  let conn: LibvirtConnection;
  let uuid: LibvirtUuid;
  let dir: string;
  let daemon: DaemonProcess | undefined;
  const images: string[] = [];

  beforeAll(async () => {
    ceph = attachCeph(inject('ceph'));
    domain = await startTestDomain();
    conn = await LibvirtConnection.connect(domain.uri);
    uuid = (await conn.lookupByName(domain.name)).uuid;
    dir = await mkdtemp(join(tmpdir(), 'vmplc-'));
    await chmod(dir, 0o711);
    await mkdir(join(dir, 'mon'), { recursive: true });
  });

  afterEach(async () => {
    await daemon?.stop();
    daemon = undefined;
  });

  afterAll(async () => {
    await daemon?.stop();
    // Every test detached what it attached: nothing of vmplug's is left in the domain or libvirt.
    if (conn && domain) {
      expect(await vmplugDisks()).toEqual([]);
      expect(await vmplugSecrets()).toEqual([]);
    }
    await conn?.close();
    await domain?.destroy();
    const existing = new Set(ceph ? await ceph.listImages() : []);
    for (const i of images) if (existing.has(i)) await ceph.removeImage(i);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function vmplugDisks(): Promise<string[]> {
    const xml = await conn.getXMLDesc(uuid);
    return [...xml.matchAll(/<alias name='(ua-vmpd-[0-9a-f]{16})'\/>/g)].map((m) => m[1] as string);
  }

  async function vmplugSecrets(): Promise<string[]> {
    return (await conn.listSecrets()).filter((s) => s.usageId.startsWith('vmplug/')).map((s) => s.usageId);
  }

  function namesOf(volumeId: string) {
    return volumeNames(parseSandboxId(domain.name), parseVolumeId(volumeId));
  }

  /** Same state dir every time: the restarted daemon must find the crashed one's journal. */
  async function start(failpoint?: string): Promise<DaemonProcess> {
    const d = await startDaemonProcess({
      dir,
      monitorDir: join(dir, 'mon'),
      kataVmRoot: join(dir, 'vc', 'vm'),
      libvirtUri: domain.uri,
      logLevel: 'info',
      ...(failpoint !== undefined ? { failpoint } : {}),
    });
    // Ready = discovery settled and the start-up reconcile ran.
    await waitServing(d, domain.name);
    return d;
  }

  async function newImage(): Promise<string> {
    const name = `lvcrash-${randomBytes(4).toString('hex')}`;
    images.push(name);
    await ceph.createImage(name, 32 * MiB);
    return name;
  }

  const rbdBody = (image: string) => rbdRequest(ceph, image);

  async function expectAttachedOrClean(d: DaemonProcess, volumeId: string): Promise<'attached' | 'clean'> {
    const n = namesOf(volumeId);
    const got = await d.call<Attachment>('GET', `/v1/sandboxes/${domain.name}/volumes/${volumeId}`);
    if (got.status === 200) {
      expect(got.body.state).toBe('Attached');
      expect(await vmplugDisks()).toContain(`ua-${n.device}`);
      expect(await vmplugSecrets()).toContain(`vmplug/${n.secret}`);
      await domain.guest.waitForDisk((g) => g.serial === n.serial, { timeoutMs: 30_000 });
      return 'attached';
    }
    expect(got.status).toBe(404);
    // A stray unplug may still be on its way out: the next reconcile round finishes it.
    const deadline = Date.now() + 30_000;
    while ((await vmplugDisks()).includes(`ua-${n.device}`) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(await vmplugDisks()).not.toContain(`ua-${n.device}`);
    expect(await vmplugSecrets()).not.toContain(`vmplug/${n.secret}`);
    const seen = domain.guest.disks().find((g) => g.serial === n.serial);
    if (seen) await domain.guest.waitForDiskGone(seen.name, { timeoutMs: 30_000 });
    return 'clean';
  }

  async function detachAndExpectClean(d: DaemonProcess, volumeId: string): Promise<void> {
    const n = namesOf(volumeId);
    const volPath = `/v1/sandboxes/${domain.name}/volumes/${volumeId}`;
    expect((await d.call('DELETE', volPath)).status).toBe(204);
    expect((await d.call('GET', volPath)).status).toBe(404);
    expect(await vmplugDisks()).not.toContain(`ua-${n.device}`);
    expect(await vmplugSecrets()).not.toContain(`vmplug/${n.secret}`);
  }

  for (const { failpoint, volumeId, title } of ATTACH_KILL_POINTS.libvirt) {
    it(title, async () => {
      const image = await newImage();
      const volPath = `/v1/sandboxes/${domain.name}/volumes/${volumeId}`;
      daemon = await start(failpoint);
      expect(await diesOn(daemon, 'PUT', volPath, rbdBody(image)), `the failpoint ${failpoint} fired`).toBe(
        true,
      );
      daemon = await start();
      const outcome = await expectAttachedOrClean(daemon, volumeId);
      const retry = await daemon.call<Attachment>('PUT', volPath, rbdBody(image));
      expect([200, 201], `${outcome}: ${JSON.stringify(retry.body)}`).toContain(retry.status);
      await domain.guest.waitForDisk((g) => g.serial === retry.body.serial, { timeoutMs: 30_000 });
      await detachAndExpectClean(daemon, volumeId);
    });
  }

  for (const { failpoint, volumeId, title } of DETACH_KILL_POINTS) {
    it(title, async () => {
      const image = await newImage();
      const volPath = `/v1/sandboxes/${domain.name}/volumes/${volumeId}`;
      daemon = await start(failpoint);
      const put = await daemon.call<Attachment>('PUT', volPath, rbdBody(image));
      expect(put.status, JSON.stringify(put.body)).toBe(201);
      await domain.guest.waitForDisk((g) => g.serial === put.body.serial, { timeoutMs: 30_000 });
      expect(await diesOn(daemon, 'DELETE', volPath), `the failpoint ${failpoint} fired`).toBe(true);
      daemon = await start();
      await expectAttachedOrClean(daemon, volumeId);
      await detachAndExpectClean(daemon, volumeId);
    });
  }
});
