/**
 * End to end through vmplugd: how long after an attach (or detach) reply the VmplugNode status in
 * a real kube-apiserver shows it, and how long until the Pod event is listed. A vmplugd child
 * process (the vmplugd service account's token) serves a real Kata-shaped sandbox that belongs to
 * a Pod; each cycle attaches a loop device in block mode and detaches it, 1.5 s apart so the
 * reporter's one-write-a-second bound is not what is measured (it shows in the max). Each sample
 * ends when a GET (polled every 5 ms) shows the change. Prints figures; asserts nothing.
 *
 *   npm run bench:daemon-report [-- <cycles>]   (default 10)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { startDaemonProcess } from '../test/env/daemon.js';
import { prepareVmplugCluster } from '../test/env/kube/manifests.js';
import { startKubeApiserver } from '../test/env/kube.js';
import { createLoopDevice } from '../test/env/loop.js';
import { createTestRoot, startKataSandbox } from '../test/env/sandbox.js';
import { hostContext, printTable, summarize } from './figures.js';

const cycles = Number(process.argv[2] ?? 10);
const NODE = 'bench-report-node';

async function pollUntil(f: () => Promise<boolean>, timeoutMs = 60_000): Promise<number> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (await f().catch(() => false)) return performance.now();
    if (performance.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function main(): Promise<void> {
  const kube = await startKubeApiserver();
  const root = await createTestRoot();
  const dir = await mkdtemp(join(tmpdir(), 'vmpd-bench-report-'));
  const loop = await createLoopDevice(16 * 1024 * 1024);
  let daemon: Awaited<ReturnType<typeof startDaemonProcess>> | undefined;
  let sandbox: Awaited<ReturnType<typeof startKataSandbox>> | undefined;
  try {
    const cluster = await prepareVmplugCluster(kube);
    sandbox = await startKataSandbox(root, { pod: { ...cluster.pod } });
    daemon = await startDaemonProcess({
      dir,
      monitorDir: root.monitorDir,
      kataVmRoot: root.kataVmRoot,
      logLevel: 'warn',
      extraArgs: ['--kubeconfig', cluster.serviceAccountKubeconfig, '--node-name', NODE],
    });
    const d = daemon;
    const sb = sandbox;
    const volumes = async (): Promise<{ volumeId: string; state: string }[] | undefined> => {
      const r = await cluster.admin.request({
        method: 'GET',
        path: `/apis/vmplug.io/v1alpha1/vmplugnodes/${NODE}`,
      });
      const s = (r.body as { status?: { sandboxes?: { id: string; volumes?: unknown }[] } }).status;
      const mine = s?.sandboxes?.find((x) => x.id === sb.id);
      return mine === undefined ? undefined : ((mine.volumes ?? []) as { volumeId: string; state: string }[]);
    };
    const events = async (reason: string): Promise<number> => {
      const r = await cluster.admin.request({ method: 'GET', path: '/api/v1/namespaces/default/events' });
      return ((r.body as { items?: { reason: string }[] }).items ?? []).filter((e) => e.reason === reason)
        .length;
    };
    await pollUntil(async () => (await volumes()) !== undefined);

    const attachReply: number[] = [];
    const attachStatus: number[] = [];
    const attachEvent: number[] = [];
    const detachStatus: number[] = [];
    for (let i = 0; i < cycles; i++) {
      const vol = `bench-${i}`;
      const path = `/v1/sandboxes/${sb.id}/volumes/${vol}`;
      await new Promise((r) => setTimeout(r, 1_500));
      const sent = performance.now();
      const put = await d.call('PUT', path, {
        mode: 'block',
        source: { type: 'hostDevice', path: loop.path },
      });
      const replied = performance.now();
      if (put.status !== 201) throw new Error(`attach answered ${put.status}: ${JSON.stringify(put.body)}`);
      attachReply.push(replied - sent);
      const [seen, evented] = await Promise.all([
        pollUntil(
          async () => (await volumes())?.some((v) => v.volumeId === vol && v.state === 'Attached') === true,
        ),
        pollUntil(async () => (await events('VolumeAttached')) >= i + 1),
      ]);
      attachStatus.push(seen - replied);
      attachEvent.push(evented - replied);
      await new Promise((r) => setTimeout(r, 1_500));
      const del = await d.call('DELETE', path);
      const detached = performance.now();
      if (del.status !== 204) throw new Error(`detach answered ${del.status}`);
      const gone = await pollUntil(async () => (await volumes())?.some((v) => v.volumeId === vol) === false);
      detachStatus.push(gone - detached);
    }
    process.stdout.write(`${hostContext()}\n`);
    printTable('vmplugd -> kube-apiserver (block attach of a loop device, TCG guest)', [
      ['attach request -> reply', summarize(attachReply)],
      ['attach reply -> status shows Attached', summarize(attachStatus)],
      ['attach reply -> Pod event listed', summarize(attachEvent)],
      ['detach reply -> volume gone from status', summarize(detachStatus)],
    ]);
  } finally {
    await daemon?.stop();
    await sandbox?.stop();
    await root.cleanup();
    await loop.detach().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
    await kube.stop();
  }
}

await main();
