/**
 * Volumes into a libvirt domain through vmplugd's REST API: the daemon (in process, with
 * --libvirt-uri pointing at the host's real libvirtd) attaches a loop device in block mode and a
 * Ceph image in rbd mode to a running test domain through libvirt's device XML. Checked from every
 * side: the guest sees each disk by vmplug's serial and writes land on the host device / in Ceph,
 * `virsh domblklist` agrees while attached, detach leaves no device and no libvirt secret, retries
 * are idempotent, a different spec is a 409, GET /v1/sandboxes lists the domain as kind libvirt
 * with a state that follows suspend/resume, and reconcile removes what no record explains.
 * Timings are printed, never asserted.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, rm, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { type DaemonConfig, resolveConfig } from '../../daemon/config.js';
import { createLogger } from '../../daemon/logger.js';
import { startVmplugd, type Vmplugd } from '../../daemon/main.js';
import { LibvirtConnection } from '../../libvirt/index.js';
import type { Attachment } from '../../storage/attach-service.js';
import { attachCeph, type CephCluster } from '../env/ceph.js';
import { apiCall, startDaemonProcess } from '../env/daemon.js';
import { startTestDomain, type TestDomain, virsh } from '../env/libvirt.js';
import { createLoopDevice, type LoopDevice } from '../env/loop.js';
import { rbdRequest } from '../env/rbd-request.js';

const MiB = 1024 * 1024;
const log = (s: string): void => {
  process.stderr.write(`[libvirt-attach] ${s}\n`);
};

interface SandboxView {
  id: string;
  kind: string;
  state: string;
  volumes: Attachment[];
}

describe('libvirt domains through vmplugd', () => {
  let ceph: CephCluster;
  let domain: TestDomain;
  let dir: string;
  let config: DaemonConfig;
  let vmplugd: Vmplugd;
  let conn: LibvirtConnection;
  const logLines: string[] = [];
  const loops: LoopDevice[] = [];
  const images: string[] = [];

  const call = <T>(method: string, path: string, body?: unknown) =>
    apiCall<T>(config.socket, method, path, body, 90_000);
  const volPath = (v: string) => `/v1/sandboxes/${domain.name}/volumes/${v}`;

  async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await fn();
      if (v !== undefined) return v;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async function domblklist(): Promise<string> {
    return (await virsh(['domblklist', domain.name], { uri: domain.uri })).stdout;
  }

  async function vmplugSecrets(): Promise<string[]> {
    return (await conn.listSecrets()).filter((s) => s.usageId.startsWith('vmplug/')).map((s) => s.usageId);
  }

  beforeAll(async () => {
    ceph = attachCeph(inject('ceph'));
    domain = await startTestDomain();
    conn = await LibvirtConnection.connect(domain.uri);
    dir = await mkdtemp(join(tmpdir(), 'vmplv-'));
    // QEMU runs as libvirt-qemu: it must traverse to the per-attach Ceph config files in here.
    await chmod(dir, 0o711);
    config = resolveConfig(
      {
        socket: join(dir, 'vmplug.sock'),
        stateDir: join(dir, 'state'),
        monitorDir: join(dir, 'mon'),
        kataVmRoot: join(dir, 'vc', 'vm'),
        libvirtUri: domain.uri,
        reconcileIntervalMs: '0',
      },
      {},
      null,
    ).config;
    const logger = createLogger({
      level: 'debug',
      destination: { write: (s: string) => void logLines.push(s) },
    });
    vmplugd = await startVmplugd({ config, logger });
    await until('the domain in GET /v1/sandboxes', async () => {
      const r = await call<SandboxView>('GET', `/v1/sandboxes/${domain.name}`);
      return r.status === 200 ? r.body : undefined;
    });
  });

  afterAll(async () => {
    await vmplugd?.stop();
    await domain?.destroy();
    await conn?.close();
    for (const l of loops) await l.detach().catch(() => undefined);
    const existing = new Set(ceph ? await ceph.listImages() : []);
    for (const i of images) if (existing.has(i)) await ceph.removeImage(i);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('lists the domain as kind libvirt, with a state that follows suspend and resume', async () => {
    const list = await call<{ items: SandboxView[] }>('GET', '/v1/sandboxes');
    expect(list.status).toBe(200);
    const mine = list.body.items.find((s) => s.id === domain.name);
    expect(mine).toMatchObject({ kind: 'libvirt', state: 'running', volumes: [] });
    // Ready once the start-up reconcile ran; the libvirt check is shown either way.
    const ready = await until('ready', async () => {
      const r = await call<{ checks: Record<string, { ok: boolean; detail?: string }> }>('GET', '/readyz');
      return r.status === 200 ? r.body : undefined;
    });
    expect(ready.checks.libvirt).toEqual({ ok: true, detail: `connected to ${domain.uri}` });

    const t0 = performance.now();
    await virsh(['suspend', domain.name], { uri: domain.uri });
    await until('paused', async () => {
      const r = await call<SandboxView>('GET', `/v1/sandboxes/${domain.name}`);
      return r.body.state === 'paused' ? true : undefined;
    });
    const tPaused = performance.now();
    await virsh(['resume', domain.name], { uri: domain.uri });
    await until('running', async () => {
      const r = await call<SandboxView>('GET', `/v1/sandboxes/${domain.name}`);
      return r.body.state === 'running' ? true : undefined;
    });
    log(
      `virsh suspend -> API paused ${Math.round(tPaused - t0)} ms; resume -> running ${Math.round(performance.now() - tPaused)} ms (includes virsh)`,
    );
  });

  it('attaches a loop device in block mode (auto -> scsi), idempotently, and detaches it cleanly', async () => {
    const loop = await createLoopDevice(32 * MiB);
    loops.push(loop);
    const body = { mode: 'block', source: { type: 'hostDevice', path: loop.path } };
    const t0 = performance.now();
    const put = await call<Attachment>('PUT', volPath('vol-blk'), body);
    const tPut = performance.now();
    expect(put.status, JSON.stringify(put.body)).toBe(201);
    expect(put.body).toMatchObject({ mode: 'block', bus: 'scsi', state: 'Attached', volumeId: 'vol-blk' });
    expect(put.body.deviceId).toMatch(/^ua-vmpd-[0-9a-f]{16}$/);
    const disk = await domain.guest.waitForDisk((d) => d.serial === put.body.serial, { timeoutMs: 30_000 });
    log(
      `block attach: PUT ${Math.round(tPut - t0)} ms, guest saw ${disk.name} ${Math.round(disk.seenAt - t0)} ms`,
    );
    expect(disk.sizeBytes).toBe(32 * MiB);

    const blk = await domblklist();
    expect(blk).toMatch(new RegExp(`^\\s*sd[a-z]+\\s+${loop.path}\\s*$`, 'm'));

    expect((await call<Attachment>('PUT', volPath('vol-blk'), body)).status).toBe(200);
    const conflict = await call<{ code: string }>('PUT', volPath('vol-blk'), { ...body, readOnly: true });
    expect(conflict.status).toBe(409);
    const got = await call<Attachment>('GET', volPath('vol-blk'));
    expect(got.body.state).toBe('Attached');
    const view = await call<SandboxView>('GET', `/v1/sandboxes/${domain.name}`);
    expect(view.body.volumes.map((v) => v.volumeId)).toEqual(['vol-blk']);

    const pattern = `vmplug-lv-blk-${randomBytes(4).toString('hex')}`;
    const w = await domain.guest.run(`printf '%s' '${pattern}' > /dev/${disk.name} && sync`);
    expect(w.exitCode, w.stderr).toBe(0);

    const t1 = performance.now();
    const del = await call('DELETE', volPath('vol-blk'));
    const tDel = performance.now();
    expect(del.status).toBe(204);
    await domain.guest.waitForDiskGone(disk.name, { timeoutMs: 30_000 });
    log(`block detach: DELETE (until deviceRemoved) ${Math.round(tDel - t1)} ms`);
    expect((await loop.readBacking(0, pattern.length)).toString()).toBe(pattern);
    expect(await domblklist()).not.toContain(loop.path);
    expect((await call('DELETE', volPath('vol-blk'))).status).toBe(204);
    expect((await call('GET', volPath('vol-blk'))).status).toBe(404);
  });

  it('attaches a Ceph image in rbd mode on virtio-blk with a libvirt secret, and detach removes both', async () => {
    const image = `lv-rbd-${randomBytes(3).toString('hex')}`;
    images.push(image);
    await ceph.createImage(image, 64 * MiB);
    const body = rbdRequest(ceph, image, { bus: 'virtio-blk' });
    const t0 = performance.now();
    const put = await call<Attachment>('PUT', volPath('vol-rbd'), body);
    const tPut = performance.now();
    expect(put.status, JSON.stringify(put.body)).toBe(201);
    expect(put.body).toMatchObject({ mode: 'rbd', bus: 'virtio-blk', state: 'Attached' });
    const disk = await domain.guest.waitForDisk((d) => d.serial === put.body.serial, { timeoutMs: 30_000 });
    log(
      `rbd attach: PUT ${Math.round(tPut - t0)} ms, guest saw ${disk.name} ${Math.round(disk.seenAt - t0)} ms`,
    );
    expect(disk.name).toMatch(/^vd/);

    expect(await domblklist()).toMatch(new RegExp(`^\\s*vd[a-z]+\\s+${ceph.pool}/${image}\\s*$`, 'm'));
    expect(await vmplugSecrets()).toHaveLength(1);
    const secretList = (await virsh(['secret-list'], { uri: domain.uri })).stdout;
    expect(secretList).toContain('vmplug/vmps-');
    // The domain's XML names the secret and the short-timeout Ceph config, never the key.
    const xml = await conn.getXMLDesc((await conn.lookupByName(domain.name)).uuid);
    expect(xml).toContain("<config file='");
    expect(xml).not.toContain(ceph.clientKey);

    expect((await call('PUT', volPath('vol-rbd'), body)).status).toBe(200);
    expect((await call('PUT', volPath('vol-rbd'), { ...body, bus: 'scsi' })).status).toBe(409);

    // Online expand through libvirt: the image grows in Ceph and the guest sees the new size.
    const shrink = await call<{ field?: string }>('POST', `${volPath('vol-rbd')}/resize`, {
      sizeBytes: 32 * MiB,
    });
    expect(shrink.status).toBe(422);
    const t2 = performance.now();
    const grown = await call<Attachment>('POST', `${volPath('vol-rbd')}/resize`, { sizeBytes: 128 * MiB });
    expect(grown.status, JSON.stringify(grown.body)).toBe(200);
    expect(grown.body.stats?.size_bytes).toBe(128 * MiB);
    const bigger = await domain.guest.waitForDisk((d) => d.name === disk.name && d.sizeBytes === 128 * MiB, {
      timeoutMs: 30_000,
    });
    log(
      `rbd resize: POST ${Math.round(performance.now() - t2)} ms, guest saw the size ${Math.round(bigger.seenAt - t2)} ms`,
    );
    expect(await ceph.imageSize(image)).toBe(128 * MiB);
    expect((await call<Attachment>('GET', volPath('vol-rbd'))).body.stats?.size_bytes).toBe(128 * MiB);

    const pattern = `vmplug-lv-rbd-${randomBytes(4).toString('hex')}`;
    const w = await domain.guest.run(`printf '%s' '${pattern}' > /dev/${disk.name} && sync`);
    expect(w.exitCode, w.stderr).toBe(0);

    const t1 = performance.now();
    expect((await call('DELETE', volPath('vol-rbd'))).status).toBe(204);
    log(`rbd detach: DELETE ${Math.round(performance.now() - t1)} ms`);
    await domain.guest.waitForDiskGone(disk.name, { timeoutMs: 30_000 });
    expect((await ceph.readImage(image, 0, pattern.length)).toString()).toBe(pattern);
    expect(await domblklist()).not.toContain(image);
    expect(await vmplugSecrets()).toEqual([]);
    expect((await virsh(['secret-list'], { uri: domain.uri })).stdout).not.toContain('vmplug/');
    expect((await call('DELETE', volPath('vol-rbd'))).status).toBe(204);
    expect(logLines.join('\n')).not.toContain(ceph.clientKey);
  });

  it('reconcile removes a disk and secret no record explains, and drops the records of a vanished domain', async () => {
    const image = `lv-rec-${randomBytes(3).toString('hex')}`;
    images.push(image);
    await ceph.createImage(image, 16 * MiB);
    const body = (img: string) => rbdRequest(ceph, img);
    const stray = await call<Attachment>('PUT', volPath('vol-stray'), body(image));
    expect(stray.status, JSON.stringify(stray.body)).toBe(201);
    const disk = await domain.guest.waitForDisk((d) => d.serial === stray.body.serial, { timeoutMs: 30_000 });
    // As if vmplugd crashed before writing the record: the disk and the secret are unexplained.
    await unlink(join(config.stateDir, 'journal', domain.name, 'vol-stray.json'));
    const reconcile = vmplugd.engine.reconcile;
    expect(reconcile).toBeDefined();
    // A loaded guest may take longer than one round's unplug wait: later rounds finish it.
    const actions: string[] = [];
    for (let round = 0; round < 30; round++) {
      const summary = (await reconcile?.(new AbortController().signal)) as {
        repairs: { action: string }[];
        pending: unknown[];
      };
      actions.push(...summary.repairs.map((r) => r.action));
      if (summary.pending.length === 0) break;
    }
    expect(actions.sort()).toEqual(['removed-stray-conf', 'removed-stray-device', 'removed-stray-secret']);
    await domain.guest.waitForDiskGone(disk.name, { timeoutMs: 30_000 });
    expect(await vmplugSecrets()).toEqual([]);

    // A record whose domain is gone: dropped, its secret undefined.
    const kept = await call<Attachment>('PUT', volPath('vol-kept'), body(image));
    expect(kept.status, JSON.stringify(kept.body)).toBe(201);
    expect(await vmplugSecrets()).toHaveLength(1);
    await domain.destroy();
    await until('the domain gone from the API', async () => {
      const r = await call('GET', `/v1/sandboxes/${domain.name}`);
      return r.status === 404 ? true : undefined;
    });
    const after = (await reconcile?.(new AbortController().signal)) as { repairs: { action: string }[] };
    expect(after.repairs.map((r) => r.action)).toContain('dropped-record');
    expect(await vmplugSecrets()).toEqual([]);
    expect((await call('DELETE', volPath('vol-kept'))).status).toBe(204);
  });
});

describe('vmplugd without libvirtd', () => {
  it('starts, serves and is ready while --libvirt-uri does not answer, and /readyz says so', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vmplv0-'));
    try {
      await mkdir(join(dir, 'mon'), { recursive: true });
      const uri = `qemu:///system?socket=${join(dir, 'no-libvirtd.sock')}`;
      const d = await startDaemonProcess({
        dir,
        monitorDir: join(dir, 'mon'),
        kataVmRoot: join(dir, 'vc', 'vm'),
        libvirtUri: uri,
      });
      try {
        const deadline = Date.now() + 30_000;
        let ready = await d.call<{ checks?: Record<string, { ok: boolean; detail?: string }> }>(
          'GET',
          '/readyz',
        );
        while (ready.status !== 200 && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 200));
          ready = await d.call('GET', '/readyz');
        }
        expect(ready.status, JSON.stringify(ready.body)).toBe(200);
        expect(ready.body.checks?.libvirt?.ok).toBe(false);
        expect(ready.body.checks?.libvirt?.detail).toMatch(/not reachable/);
        const list = await d.call<{ items: unknown[] }>('GET', '/v1/sandboxes');
        expect(list.status).toBe(200);
        expect(list.body.items).toEqual([]);
        expect((await d.call('GET', '/v1/sandboxes/some-domain/volumes/v1')).status).toBe(404);
      } finally {
        await d.stop();
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
