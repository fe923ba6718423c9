import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { QmpClient } from '../../qmp/index.js';
import { attachCeph, type CephCluster } from '../env/ceph.js';
import { type ApiResponse, apiCallOversized, type DaemonProcess, startDaemonProcess } from '../env/daemon.js';
import { vmplugObjects } from '../env/inspect.js';
import { createLoopDevice, type LoopDevice } from '../env/loop.js';
import { rbdSource } from '../env/rbd-request.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../env/sandbox.js';

// End to end through vmplugd's REST socket: a real vmplugd process, a real Kata-shaped sandbox
// (QEMU through bin/vmplug-qemu, Kata's monitor held), real Ceph and a loop device. A test passes
// only when the guest sees the disk and the bytes written in the guest are on the host side.

const MiB = 1024 * 1024;
const PROBLEM = 'application/problem+json';

interface Attachment {
  sandboxId: string;
  volumeId: string;
  mode: string;
  bus: string;
  state: string;
  nodeName: string;
  deviceId: string;
  serial: string;
  guestHint: string;
  timeline: { step: string; ms?: number }[];
}

interface Problem {
  status: number;
  code: string;
  field?: string;
  detail?: string;
}

describe('vmplugd end to end (REST socket, real QEMU, Ceph, loop devices)', () => {
  let root: TestRoot;
  let sandbox: KataSandbox;
  let ceph: CephCluster;
  let daemonDir: string;
  let daemon: DaemonProcess;
  let inspector: QmpClient;
  const loops: LoopDevice[] = [];
  const images: string[] = [];

  const rbdBody = (image: string, extra: Record<string, unknown> = {}) => ({
    source: rbdSource(ceph, image),
    annotations: { 'volume.katacontainers.io/direct-mode': 'rbd' },
    ...extra,
  });
  const volPath = (vol: string, sb = sandbox.id) => `/v1/sandboxes/${sb}/volumes/${vol}`;

  async function startDaemon(): Promise<DaemonProcess> {
    return startDaemonProcess({
      dir: daemonDir,
      monitorDir: root.monitorDir,
      kataVmRoot: root.kataVmRoot,
    });
  }

  async function waitDiscovered(d: DaemonProcess): Promise<void> {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const r = await d.call<{ state?: string }>('GET', `/v1/sandboxes/${sandbox.id}`);
      if (r.status === 200) return;
      if (Date.now() > deadline) throw new Error(`sandbox not discovered: ${JSON.stringify(r.body)}`);
      await new Promise((res) => setTimeout(res, 200));
    }
  }

  beforeAll(async () => {
    ceph = attachCeph(inject('ceph'));
    root = await createTestRoot();
    daemonDir = await mkdtemp(join(tmpdir(), 'vmpd-'));
    sandbox = await startKataSandbox(root, {
      inspectMonitor: true,
      pod: { uid: '2b9f6a3e-0000-4000-8000-000000000001', name: 'web-0', namespace: 'shop' },
    });
    inspector = await QmpClient.connect(sandbox.inspectQmpPath ?? '');
    daemon = await startDaemon();
    await waitDiscovered(daemon);
  });

  afterAll(async () => {
    await daemon?.stop();
    await inspector?.close();
    await sandbox?.stop();
    await root?.cleanup();
    for (const l of loops) await l.detach().catch(() => undefined);
    const existing = new Set(ceph ? await ceph.listImages() : []);
    for (const i of images) if (existing.has(i)) await ceph.removeImage(i);
    if (daemonDir) await rm(daemonDir, { recursive: true, force: true });
  });

  async function newImage(tag: string): Promise<string> {
    const name = `e2e-${tag}-${randomBytes(3).toString('hex')}`;
    images.push(name);
    await ceph.createImage(name, 64 * MiB);
    return name;
  }

  async function writeInGuest(serial: string, pattern: string): Promise<string> {
    const disk = await sandbox.guest.waitForDisk((d) => d.serial === serial, { timeoutMs: 20_000 });
    const r = await sandbox.guest.run(`printf '%s' '${pattern}' > /dev/${disk.name} && sync`);
    expect(r.exitCode, r.stderr).toBe(0);
    return disk.name;
  }

  it('attaches an RBD image in rbd mode (auto bus), idempotently, and detaches it with the data in Ceph', async () => {
    const image = await newImage('rbd');
    const body = rbdBody(image);
    const first = await daemon.call<Attachment>('PUT', volPath('vol-rbd'), body);
    expect(first.status, JSON.stringify(first.body)).toBe(201);
    expect(first.body).toMatchObject({
      sandboxId: sandbox.id,
      volumeId: 'vol-rbd',
      mode: 'rbd',
      state: 'Attached',
    });
    const pattern = `vmplug-e2e-rbd-${randomBytes(4).toString('hex')}`;
    const name = await writeInGuest(first.body.serial, pattern);

    const again = await daemon.call<Attachment>('PUT', volPath('vol-rbd'), body);
    expect(again.status).toBe(200);
    expect(again.body.deviceId).toBe(first.body.deviceId);
    const conflict = await daemon.call<Problem>('PUT', volPath('vol-rbd'), { ...body, readOnly: true });
    expect(conflict.status).toBe(409);
    expect(conflict.contentType).toContain(PROBLEM);

    const got = await daemon.call<Attachment>('GET', volPath('vol-rbd'));
    expect(got.status).toBe(200);
    expect(got.body.state).toBe('Attached');
    expect(got.body.timeline.length).toBeGreaterThan(0);

    const del = await daemon.call('DELETE', volPath('vol-rbd'));
    expect(del.status).toBe(204);
    await sandbox.guest.waitForDiskGone(name, { timeoutMs: 20_000 });
    expect((await ceph.readImage(image, 0, pattern.length)).toString()).toBe(pattern);
    expect((await daemon.call('DELETE', volPath('vol-rbd'))).status).toBe(204);
    expect(await vmplugObjects(inspector)).toEqual([]);
  });

  it('attaches a loop device in block mode on virtio-blk and detaches it with the data on the device', async () => {
    const loop = await createLoopDevice(32 * MiB);
    loops.push(loop);
    const body = { mode: 'block', bus: 'virtio-blk', source: { type: 'hostDevice', path: loop.path } };
    const put = await daemon.call<Attachment>('PUT', volPath('vol-blk'), body);
    expect(put.status, JSON.stringify(put.body)).toBe(201);
    expect(put.body.bus).toBe('virtio-blk');
    expect(put.body.guestHint).toContain(put.body.serial);
    const pattern = `vmplug-e2e-blk-${randomBytes(4).toString('hex')}`;
    const name = await writeInGuest(put.body.serial, pattern);
    expect((await daemon.call('DELETE', volPath('vol-blk'))).status).toBe(204);
    await sandbox.guest.waitForDiskGone(name, { timeoutMs: 20_000 });
    expect((await loop.readBacking(0, pattern.length)).toString()).toBe(pattern);
    expect(await vmplugObjects(inspector)).toEqual([]);
  });

  it('refuses bad input of every field with a 4xx problem naming it, and leaves nothing behind', async () => {
    const image = await newImage('bad');
    const good = rbdBody(image);
    const src = good.source;
    const cases: {
      what: string;
      path: string;
      body: unknown;
      status?: number;
      field?: string;
      oversized?: boolean;
    }[] = [
      { what: 'sandbox id with ..', path: volPath('v1', '..'), body: good },
      { what: 'sandbox id with an encoded /', path: volPath('v1', 'a%2Fb'), body: good },
      { what: 'volume id with ..', path: volPath('a..b'), body: good },
      { what: 'volume id too long', path: volPath('v'.repeat(300)), body: good },
      { what: 'unknown mode', path: volPath('v1'), body: { ...good, mode: 'nfs' }, field: 'mode' },
      {
        what: 'not passthrough',
        path: volPath('v1'),
        body: { source: src, annotations: { 'volume.katacontainers.io/direct-mode': 'virtio-fs' } },
      },
      { what: 'no mode at all', path: volPath('v1'), body: { source: src } },
      {
        what: 'missing key',
        path: volPath('v1'),
        body: { ...good, source: { ...src, key: undefined } },
        field: 'source.key',
      },
      {
        what: 'key not base64',
        path: volPath('v1'),
        body: { ...good, source: { ...src, key: 'not a key!' } },
        field: 'source.key',
      },
      {
        what: 'bad monitor',
        path: volPath('v1'),
        body: { ...good, source: { ...src, monitors: ['no host:99999'] } },
      },
      { what: 'no monitors', path: volPath('v1'), body: { ...good, source: { ...src, monitors: [] } } },
      { what: 'pool with a slash', path: volPath('v1'), body: { ...good, source: { ...src, pool: 'a/b' } } },
      {
        what: 'relative device path',
        path: volPath('v1'),
        body: { mode: 'block', source: { type: 'hostDevice', path: 'dev/loop0' } },
      },
      {
        what: 'device path with ..',
        path: volPath('v1'),
        body: { mode: 'block', source: { type: 'hostDevice', path: '/dev/../etc/passwd' } },
      },
      {
        what: 'device that does not exist',
        path: volPath('v1'),
        body: { mode: 'block', source: { type: 'hostDevice', path: '/dev/vmplug-no-such-device' } },
        status: 422,
        field: 'source.path',
      },
      {
        what: 'not a block device',
        path: volPath('v1'),
        body: { mode: 'block', source: { type: 'hostDevice', path: '/dev/null' } },
        status: 422,
        field: 'source.path',
      },
      { what: 'mode and source disagree', path: volPath('v1'), body: { ...good, mode: 'block' } },
      { what: 'unknown bus', path: volPath('v1'), body: { ...good, bus: 'ide' }, field: 'bus' },
      { what: 'not JSON', path: volPath('v1'), body: '{"mode": ' },
      {
        what: 'huge body',
        path: volPath('v1'),
        body: JSON.stringify({ ...good, pad: 'x'.repeat(2 * MiB) }),
        status: 413,
        oversized: true,
      },
      { what: 'unknown sandbox', path: volPath('v1', 'no-such-sandbox'), body: good, status: 404 },
    ];
    for (const c of cases) {
      const r = c.oversized
        ? ((await apiCallOversized(daemon.socketPath, 'PUT', c.path, String(c.body))) as ApiResponse<Problem>)
        : await daemon.call<Problem>('PUT', c.path, c.body);
      expect(r.status, `${c.what}: ${JSON.stringify(r.body)}`).toBeGreaterThanOrEqual(400);
      expect(r.status, c.what).toBeLessThan(500);
      if (c.status !== undefined) expect(r.status, c.what).toBe(c.status);
      expect(r.contentType, c.what).toContain(PROBLEM);
      expect(typeof r.body.code, c.what).toBe('string');
      if (c.field !== undefined) expect(r.body.field, c.what).toBe(c.field);
      // Never the key in an error.
      expect(JSON.stringify(r.body), c.what).not.toContain(ceph.clientKey);
    }
    expect(await vmplugObjects(inspector)).toEqual([]);
    const journal = join(daemon.stateDir, 'journal', sandbox.id);
    const left = await readdir(journal).catch(() => [] as string[]);
    expect(left.filter((f) => !f.startsWith('.'))).toEqual([]);
  });

  it('never lets the cephx key reach a log line, the journal or argv', async () => {
    const image = await newImage('leak');
    const put = await daemon.call<Attachment>('PUT', volPath('vol-leak'), rbdBody(image));
    expect(put.status).toBe(201);
    const journalFile = join(daemon.stateDir, 'journal', sandbox.id, 'vol-leak.json');
    expect(await readFile(journalFile, 'utf8')).not.toContain(ceph.clientKey);
    expect(daemon.lines.join('\n')).not.toContain(ceph.clientKey);
    expect(await daemon.cmdline()).not.toContain(ceph.clientKey);
    expect((await daemon.call('DELETE', volPath('vol-leak'))).status).toBe(204);
    expect(daemon.lines.join('\n')).not.toContain(ceph.clientKey);
  });
});
