/**
 * Pod volumes (DESIGN §5b) through vmplugd's REST API, one run: PUT /v1/pods/{uid}/volumes/{id}
 * -> 201 (the Kata direct-volume record is durable before the reply) and DELETE -> 204, for block
 * mode (a loop device) and rbd mode (a qemu-storage-daemon per volume: spawn, QMP, image open,
 * vhost-user-blk export, major-241 node), plus a storage daemon's RSS with one export.
 * Prints figures; asserts nothing; removes everything it made.
 *
 *   npm run bench:pod-publish [-- --rounds 10]
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { AttachSourceRequest } from '../api/index.js';
import { type CephCluster, startCeph } from '../test/env/ceph.js';
import { type DaemonProcess, startDaemonProcess } from '../test/env/daemon.js';
import { createLoopDevice, type LoopDevice } from '../test/env/loop.js';
import { rbdSource } from '../test/env/rbd-request.js';
import { hostContext, printTable, summarize } from './figures.js';

const roundsArg = process.argv.indexOf('--rounds');
const rounds = roundsArg > 0 ? Number(process.argv[roundsArg + 1]) : 10;

interface PodVolume {
  recordPath: string;
  timeline: { step: string; ms: number }[];
}

async function rssKiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? Number.NaN);
}

async function qsdPids(stateDir: string): Promise<number[]> {
  const pids: number[] = [];
  for (const name of await readdir(join(stateDir, 'qsd')).catch(() => [])) {
    const text = await readFile(join(stateDir, 'qsd', name, 'state.json'), 'utf8').catch(() => '');
    const pid = Number(/"pid":\s*(\d+)/.exec(text)?.[1]);
    if (Number.isInteger(pid)) pids.push(pid);
  }
  return pids;
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'vmpb-'));
  let ceph: CephCluster | undefined;
  let daemon: DaemonProcess | undefined;
  let loop: LoopDevice | undefined;
  const images: string[] = [];
  try {
    process.stdout.write(`${hostContext()}\n`);
    [ceph, loop] = await Promise.all([startCeph(), createLoopDevice(16 * 1024 * 1024)]);
    const dvRoot = join(dir, 'direct-volumes');
    daemon = await startDaemonProcess({
      dir,
      monitorDir: join(dir, 'monitors'),
      kataVmRoot: join(dir, 'vm'),
      logLevel: 'warn',
      extraArgs: ['--kata-direct-volume-root', dvRoot, '--kata-vhost-user-store', join(dir, 'store')],
    });
    const put: Record<'block' | 'rbd', number[]> = { block: [], rbd: [] };
    const del: Record<'block' | 'rbd', number[]> = { block: [], rbd: [] };
    const backendStep: number[] = [];
    let rss = Number.NaN;
    for (let i = 0; i < rounds; i++) {
      for (const mode of ['block', 'rbd'] as const) {
        const uid = randomUUID();
        const targetPath = `/var/lib/kubelet/pods/${uid}/volumes/kubernetes.io~csi/pvc-${i}/mount`;
        let source: AttachSourceRequest;
        if (mode === 'block') source = { type: 'hostDevice', path: loop.path };
        else {
          // One image for every round: the first publish formats it, the others find ext4.
          if (images.length === 0) {
            images.push(`bench-${randomBytes(4).toString('hex')}`);
            await ceph.createImage(images[0] as string, 64 * 1024 * 1024);
          }
          const image = images[0] as string;
          source = rbdSource(ceph, image);
        }
        const url = `/v1/pods/${uid}/volumes/v${i}`;
        const t0 = performance.now();
        const r = await daemon.call<PodVolume>('PUT', url, { mode, source, targetPath, fsType: 'ext4' });
        put[mode].push(performance.now() - t0);
        if (r.status !== 201) throw new Error(`PUT ${mode}: ${r.status} ${JSON.stringify(r.body)}`);
        await stat(r.body.recordPath);
        if (mode === 'rbd') {
          backendStep.push(r.body.timeline.find((s) => s.step === 'BackendReady')?.ms ?? Number.NaN);
          if (i === 0)
            rss = (await Promise.all((await qsdPids(daemon.stateDir)).map(rssKiB)))[0] ?? Number.NaN;
        }
        const t1 = performance.now();
        const d = await daemon.call('DELETE', url);
        del[mode].push(performance.now() - t1);
        if (d.status !== 204) throw new Error(`DELETE ${mode}: ${d.status}`);
      }
    }
    process.stdout.write(`first rbd publish (formats the blank image): ${put.rbd[0]?.toFixed(0)} ms\n`);
    printTable(`pod volumes through vmplugd, ${rounds} rounds (rbd PUT: the rounds after the first)`, [
      ['block PUT -> record written (201)', summarize(put.block)],
      ['block DELETE -> 204', summarize(del.block)],
      ['rbd PUT -> record written (201)', summarize(put.rbd.slice(1))],
      ['  of which storage daemon + export', summarize(backendStep.slice(1))],
      ['rbd DELETE -> 204 (daemon stopped)', summarize(del.rbd)],
    ]);
    process.stdout.write(`\nstorage daemon RSS with one rbd export: ${(rss / 1024).toFixed(1)} MiB\n`);
  } finally {
    await daemon?.stop();
    for (const i of images) await ceph?.removeImage(i).catch(() => undefined);
    await ceph?.stop();
    await loop?.detach();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
