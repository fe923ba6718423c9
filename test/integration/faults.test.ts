import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { QmpClient } from '../../qmp/index.js';
import { attachCeph, type CephCluster } from '../env/ceph.js';
import { apiCallWholeBody, type DaemonProcess, startDaemonProcess, waitServing } from '../env/daemon.js';
import { vmplugObjects } from '../env/inspect.js';
import { createLoopDevice, type LoopDevice } from '../env/loop.js';
import { rbdRequest } from '../env/rbd-request.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../env/sandbox.js';

// Faults a node meets (issue 10), against a real vmplugd process and a real Kata-shaped sandbox:
// a client sending an oversized body whole, a QEMU killed with SIGKILL under vmplugd, and the
// test Ceph's OSD stopped (SIGSTOP) during an rbd attach.
// Timings are printed (the issue's "within 1 s"), never asserted.

const MiB = 1024 * 1024;

interface Problem {
  status: number;
  code: string;
  retryable?: boolean;
}

describe('faults: hostile bodies and a QEMU killed under vmplugd', () => {
  let root: TestRoot;
  let daemonDir: string;
  let daemon: DaemonProcess;
  const sandboxes: KataSandbox[] = [];
  const loops: LoopDevice[] = [];
  const images: string[] = [];
  let ceph: CephCluster;

  beforeAll(async () => {
    ceph = attachCeph(inject('ceph'));
    root = await createTestRoot();
    daemonDir = await mkdtemp(join(tmpdir(), 'vmpf-'));
    daemon = await startDaemonProcess({
      dir: daemonDir,
      monitorDir: root.monitorDir,
      kataVmRoot: root.kataVmRoot,
      logLevel: 'info',
    });
  });

  afterAll(async () => {
    await daemon?.stop();
    for (const s of sandboxes) await s.stop().catch(() => undefined);
    await root?.cleanup();
    for (const l of loops) await l.detach().catch(() => undefined);
    for (const i of images) await ceph?.removeImage(i).catch(() => undefined);
    if (daemonDir) await rm(daemonDir, { recursive: true, force: true });
  });

  it('answers a 4 MiB body sent whole with 413 problem+json, and keeps serving', async () => {
    const body = JSON.stringify({ mode: 'block', pad: 'x'.repeat(4 * MiB) });
    for (let i = 0; i < 3; i++) {
      const r = await apiCallWholeBody(daemon.socketPath, 'PUT', '/v1/sandboxes/sb-x/volumes/v1', body);
      expect(r.status).toBe(413);
      expect(r.contentType).toContain('application/problem+json');
      expect(r.body).toMatchObject({ code: 'BODY_TOO_LARGE', status: 413 });
    }
    expect((await daemon.call('GET', '/healthz')).status).toBe(200);
  });

  it('sees a QEMU killed with SIGKILL as gone at once: records released, attaches 404', async () => {
    const sandbox = await startKataSandbox(root, {
      pod: { uid: '2b9f6a3e-0000-4000-8000-0000000000f1', name: 'killed-0', namespace: 'faults' },
    });
    sandboxes.push(sandbox);
    await waitServing(daemon, sandbox.id);
    const loop = await createLoopDevice(16 * MiB);
    loops.push(loop);
    const body = { mode: 'block', source: { type: 'hostDevice', path: loop.path } };
    const volPath = (v: string) => `/v1/sandboxes/${sandbox.id}/volumes/${v}`;
    const put = await daemon.call('PUT', volPath('vol-k'), body);
    expect(put.status, JSON.stringify(put.body)).toBe(201);
    const record = join(daemon.stateDir, 'journal', sandbox.id, 'vol-k.json');
    expect(existsSync(record)).toBe(true);

    const killedAt = performance.now();
    process.kill(sandbox.pid, 'SIGKILL');
    await sandbox.exited;
    let goneMs: number | undefined;
    let attach404Ms: number | undefined;
    let releasedMs: number | undefined;
    const seen = new Set<string>();
    for (const deadline = killedAt + 30_000; performance.now() < deadline; ) {
      const at = () => Math.round(performance.now() - killedAt);
      if (goneMs === undefined && (await daemon.call('GET', `/v1/sandboxes/${sandbox.id}`)).status === 404)
        goneMs = at();
      if (attach404Ms === undefined) {
        const r = await daemon.call<Problem>('PUT', volPath('vol-k2'), body);
        seen.add(`${r.status} ${r.body.code}`);
        if (r.status === 404) attach404Ms = at();
      }
      if (releasedMs === undefined && !existsSync(record)) releasedMs = at();
      if (goneMs !== undefined && attach404Ms !== undefined && releasedMs !== undefined) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    console.log(
      `QEMU SIGKILL -> sandbox 404 after ${goneMs} ms, attach 404 after ${attach404Ms} ms, ` +
        `journal record released after ${releasedMs} ms; attach answers seen: ${[...seen].join(', ')}`,
    );
    expect(goneMs).toBeDefined();
    expect(attach404Ms).toBeDefined();
    expect(releasedMs).toBeDefined();
    expect((await daemon.call('GET', volPath('vol-k'))).status).toBe(404);
    const late = await daemon.call<Problem>('PUT', volPath('vol-k3'), body);
    expect(late.status).toBe(404);
    expect(late.body.code).not.toBe('BACKEND_FAILED');
  });

  it('refuses rbd attaches while the OSD is stopped (503 CEPH_STALLED) without freezing the guest, then attaches', async () => {
    const sandbox = await startKataSandbox(root, { inspectMonitor: true });
    sandboxes.push(sandbox);
    const inspector = await QmpClient.connect(sandbox.inspectQmpPath ?? '');
    try {
      await waitServing(daemon, sandbox.id);
      // Three at once on one sandbox: the two queued behind the first open their image while
      // they wait (storage/ahead-checks.ts), so they too are refused, each by its own check.
      const vols = ['vol-stall', 'vol-stall-b', 'vol-stall-c'].map((vol, i) => ({
        image: `faults-stall-${i}-${process.pid}`,
        path: `/v1/sandboxes/${sandbox.id}/volumes/${vol}`,
      }));
      for (const v of vols) {
        images.push(v.image);
        await ceph.createImage(v.image, 16 * MiB);
      }
      const [first] = vols as [(typeof vols)[0]];
      const volPath = first.path;
      const body = rbdRequest(ceph, first.image, { bus: 'scsi' });
      process.kill(ceph.pids.osd, 'SIGSTOP');
      let worstQmpMs = 0;
      const answers: Array<{ status: number; body: Problem; ms: number }> = [];
      const started = performance.now();
      try {
        const puts = vols.map((v) =>
          daemon
            .call<Problem>('PUT', v.path, rbdRequest(ceph, v.image, { bus: 'scsi' }), 120_000)
            .then((r) => {
              answers.push({ ...r, ms: Math.round(performance.now() - started) });
            }),
        );
        // The guest's QEMU must keep answering while vmplugd waits on Ceph.
        while (answers.length < vols.length) {
          const t0 = performance.now();
          await inspector.execute('query-status');
          worstQmpMs = Math.max(worstQmpMs, performance.now() - t0);
          await new Promise((r) => setTimeout(r, 100));
        }
        await Promise.all(puts);
      } finally {
        process.kill(ceph.pids.osd, 'SIGCONT');
      }
      console.log(
        `OSD stopped: ${vols.length} attaches at once answered ${answers.map((a) => `${a.status} ${a.body.code} after ${a.ms} ms`).join(', ')}; ` +
          `guest QEMU's slowest query-status meanwhile ${worstQmpMs.toFixed(1)} ms`,
      );
      for (const answer of answers) {
        expect(answer.status).toBe(503);
        expect(answer.body).toMatchObject({ code: 'CEPH_STALLED', retryable: true });
      }
      expect(await vmplugObjects(inspector)).toEqual([]);
      // Ceph back: the same request attaches, and the guest sees the disk.
      let ok: { status: number; body: { serial?: string } } | undefined;
      for (let i = 0; i < 30; i++) {
        ok = await daemon.call<{ serial?: string }>('PUT', volPath, body, 120_000);
        if (ok.status === 201) break;
        await new Promise((r) => setTimeout(r, 1000));
      }
      expect(ok?.status, JSON.stringify(ok?.body)).toBe(201);
      const disk = await sandbox.guest.waitForDisk((d) => d.serial === ok?.body.serial, {
        timeoutMs: 30_000,
      });
      expect((await daemon.call('DELETE', volPath)).status).toBe(204);
      await sandbox.guest.waitForDiskGone(disk.name, { timeoutMs: 30_000 });
      expect(await vmplugObjects(inspector)).toEqual([]);
    } finally {
      await inspector.close();
    }
  });
});
