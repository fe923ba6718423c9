/**
 * How fast the Kubernetes reporter makes the VmplugNode status true, against a real
 * kube-apiserver + etcd (test/env/kube.ts), with the reporter as the vmplugd service account:
 *   - idle: a snapshot change when no write happened in the last second (the common case);
 *   - throttled: a change right after a write (waits out the one-write-a-second bound);
 *   - catch-up: from starting a stopped apiserver again to the status written during the outage;
 * plus the apiserver's own start time. Each sample ends when a GET (polled every 5 ms) shows the
 * new status. Prints figures; asserts nothing.
 *
 *   npm run bench:kube-report [-- <samples>]   (default 20)
 */
import { performance } from 'node:perf_hooks';
import { createReporter, type SnapshotProvider } from '../daemon/report/kube/reporter.js';
import type { NodeStatusSnapshot } from '../daemon/report/kube/status.js';
import { prepareVmplugCluster } from '../test/env/kube/manifests.js';
import { startKubeApiserver } from '../test/env/kube.js';
import { hostContext, printTable, summarize } from './figures.js';

const samples = Number(process.argv[2] ?? 20);
const NODE = 'bench-node';

function snapshot(marker: string): NodeStatusSnapshot {
  return {
    node: { hostname: NODE },
    sandboxes: [
      {
        id: 'sb-1',
        kind: 'kata',
        state: 'running',
        volumes: [{ volumeId: marker, mode: 'rbd', bus: 'virtio-blk', state: 'attached' }],
        nics: [],
      },
    ],
    conditions: [{ type: 'Ready', status: 'True' }],
  };
}

async function main(): Promise<void> {
  const kube = await startKubeApiserver();
  const startMs = [kube.lastStartMs];
  try {
    const cluster = await prepareVmplugCluster(kube);
    let current = snapshot('v-0');
    const listeners = new Set<() => void>();
    const provider: SnapshotProvider = {
      snapshot: () => current,
      subscribe: (l) => {
        listeners.add(l);
        return () => listeners.delete(l);
      },
    };
    const set = (marker: string): void => {
      current = snapshot(marker);
      for (const l of listeners) l();
    };
    const reporter = await createReporter({
      nodeName: NODE,
      provider,
      logger: { debug() {}, info() {}, warn() {} },
      kubeconfigPath: cluster.serviceAccountKubeconfig,
      leaseNamespace: 'vmplug-system',
      backoff: { initialMs: 100, maxMs: 1_000 },
    });
    reporter.start();
    const visible = async (marker: string): Promise<void> => {
      for (;;) {
        try {
          const res = await cluster.admin.request({
            method: 'GET',
            path: `/apis/vmplug.io/v1alpha1/vmplugnodes/${NODE}`,
          });
          const body = res.body as { status?: { sandboxes?: { volumes?: { volumeId: string }[] }[] } };
          if (body.status?.sandboxes?.[0]?.volumes?.[0]?.volumeId === marker) return;
        } catch {
          // Not there yet, or the apiserver is still starting.
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    };
    await visible('v-0');

    const idle: number[] = [];
    const throttled: number[] = [];
    for (let i = 1; i <= samples; i++) {
      await reporter.flush();
      await new Promise((r) => setTimeout(r, 1_100));
      let t = performance.now();
      set(`idle-${i}`);
      await visible(`idle-${i}`);
      idle.push(performance.now() - t);
      // Right after that write: this one has to wait for the interval.
      t = performance.now();
      set(`thr-${i}`);
      await visible(`thr-${i}`);
      throttled.push(performance.now() - t);
    }

    const catchUp: number[] = [];
    for (let i = 1; i <= 3; i++) {
      await kube.stopApiserver();
      set(`outage-${i}`);
      await new Promise((r) => setTimeout(r, 2_000));
      const t = performance.now();
      await kube.startApiserver();
      startMs.push(kube.lastStartMs);
      await visible(`outage-${i}`);
      catchUp.push(performance.now() - t);
    }
    await reporter.stop();

    process.stdout.write(`${hostContext()}\n`);
    printTable('snapshot change -> VmplugNode status visible (GET)', [
      ['idle (no write in the last 1 s)', summarize(idle)],
      ['throttled (right after a write)', summarize(throttled)],
      ['apiserver start -> caught up', summarize(catchUp)],
      ['apiserver start -> /readyz ok', summarize(startMs)],
    ]);
    const h = reporter.health();
    process.stdout.write(`\nstatus writes ${h.status?.writes}, failed attempts ${h.status?.failures}\n`);
  } finally {
    await kube.stop();
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
