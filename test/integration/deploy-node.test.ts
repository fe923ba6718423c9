/**
 * The project deployed for real: the image deploy/image/build makes, imported into a real node's
 * containerd (test/env/kube-node.ts: kubelet, controllers, containerd from Debian), and deploy/*.yaml
 * applied unchanged. vmplugd must come up Ready through its probe, serve its socket on the host,
 * write its VmplugNode status and Lease as rbac.yaml's ServiceAccount without a 403 or a 422, and
 * survive a rolling restart Ready only once /readyz is.
 *
 * The one object the test adds is the optional ConfigMap vmplug-system/vmplugd-env with
 * KUBERNETES_SERVICE_HOST=127.0.0.1 and the apiserver's port (no kube-proxy runs here, and no
 * traffic may leave this machine: docs/deploy.md), and the test bed's device allow-list.
 */
import { execFile } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmplugClient } from '../../cli/client.js';
import { applyDeployFiles, until } from '../env/kube/manifests.js';
import { hostState, type KubeNode, startKubeNode } from '../env/kube-node.js';
import { createLoopDevice, type LoopDevice, TEST_BED_ALLOWED_DEVICES } from '../env/loop.js';
import { repoRoot } from '../env/paths.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../env/sandbox.js';

const run = promisify(execFile);
const NS = 'vmplug-system';
const SOCKET = '/run/vmplug/vmplug.sock';
const MiB = 2 ** 20;

interface Pod {
  metadata: { name: string; uid: string; deletionTimestamp?: string };
  status?: {
    phase?: string;
    conditions?: { type: string; status: string }[];
    containerStatuses?: { restartCount: number }[];
  };
}

describe('vmplugd deployed on a real node', () => {
  let node: KubeNode;
  // A Kata-shaped sandbox (real QEMU, TCG) at the host paths the DaemonSet mounts, and a loop
  // device: the attachment that must survive the rolling restart.
  let root: TestRoot | undefined;
  let sandbox: KataSandbox;
  let loop: LoopDevice | undefined;
  const pattern = `vmplug-deploy-${process.pid}`;
  let diskName = '';
  const client = new VmplugClient({ socketPath: SOCKET, timeoutMs: 5_000 });

  const pods = async (): Promise<Pod[]> =>
    (
      (
        await node.admin.request({
          method: 'GET',
          path: `/api/v1/namespaces/${NS}/pods`,
          query: { labelSelector: 'app.kubernetes.io/name=vmplugd' },
        })
      ).body as { items: Pod[] }
    ).items;
  const isReady = (p: Pod): boolean =>
    p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;
  const readyz = async (): Promise<boolean> => {
    try {
      await client.ready({ timeoutMs: 2_000 });
      return true;
    } catch {
      return false;
    }
  };
  const podLog = async (name: string): Promise<string> =>
    (
      await node.admin.request({
        method: 'GET',
        path: `/api/v1/namespaces/${NS}/pods/${name}/log`,
        query: { container: 'vmplugd' },
      })
    ).body as string;

  let hostBefore: Record<string, string[]> = {};

  beforeAll(async () => {
    hostBefore = hostState();
    const t0 = performance.now();
    const { stdout } = await run(join(repoRoot, 'deploy', 'image', 'build'), [], {
      timeout: 15 * 60_000,
      maxBuffer: 16 * 1024 * 1024,
    });
    const archive = stdout.trim().split('\n').pop() ?? '';
    console.info(
      `image ${archive}: ${Math.round(statSync(archive).size / 2 ** 20)} MiB, ${Math.round(performance.now() - t0)} ms (cached by input hash)`,
    );
    node = await startKubeNode({ hostPaths: ['/run/vmplug', '/var/lib/vmplug', '/run/vc'] });
    console.info(`node Ready ${Math.round(node.bringUpMs)} ms after the first process started`);
    await node.importImage(archive);

    await applyDeployFiles(node.kube, ['crd-vmplugnode.yaml', 'rbac.yaml']);
    await node.admin.request({
      method: 'POST',
      path: `/api/v1/namespaces/${NS}/configmaps`,
      body: {
        apiVersion: 'v1',
        kind: 'ConfigMap',
        metadata: { name: 'vmplugd-env' },
        // The test bed's loop devices stand in for rbd/nbd mappings: allowed like on every
        // vmplugd the tests start (the default allow-list has no /dev/loop*).
        data: { ...node.apiserverEnv, VMPLUG_ALLOWED_DEVICES: TEST_BED_ALLOWED_DEVICES },
      },
    });
    // Pod admission refuses a pod whose ServiceAccount has no token yet (the controller makes it).
    await until(
      "the vmplugd ServiceAccount's token",
      async () => {
        const sa = (
          await node.admin.request({
            method: 'GET',
            path: `/api/v1/namespaces/${NS}/serviceaccounts/vmplugd`,
          })
        ).body as { secrets?: unknown[] };
        return (sa.secrets?.length ?? 0) > 0 ? true : undefined;
      },
      60_000,
    );
    await until(
      'the VmplugNode kind',
      async () => {
        await node.admin.request({ method: 'GET', path: '/apis/vmplug.io/v1alpha1/vmplugnodes' });
        return true;
      },
      60_000,
    );
    root = await createTestRoot({
      kataVmRoot: '/run/vc/vm',
      kataSbsRoot: '/run/vc/sbs',
      monitorDir: '/run/vmplug/sandboxes',
    });
    sandbox = await startKataSandbox(root, { id: 'deploy-sb' });
    loop = await createLoopDevice(16 * MiB);
    await applyDeployFiles(node.kube, ['daemonset.yaml']);
  }, 600_000);

  const teardown = async (): Promise<void> => {
    await client.detach('deploy-sb', 'vol-deploy').catch(() => undefined);
    await root?.cleanup();
    await loop?.detach().catch(() => undefined);
    await node?.stop();
  };
  afterAll(teardown, 120_000);

  it('comes up Ready through its probe, serves the socket on the host, reports as its ServiceAccount', async () => {
    const t0 = performance.now();
    const pod = await until(
      'the vmplugd pod Ready',
      async () => (await pods()).find((p) => isReady(p) && !p.metadata.deletionTimestamp),
      120_000,
    );
    console.info(
      `vmplugd pod Ready ${Math.round(performance.now() - t0)} ms after the DaemonSet was applied`,
    );
    expect(existsSync(SOCKET)).toBe(true);
    expect(statSync(SOCKET).isSocket()).toBe(true);
    expect(await readyz()).toBe(true);

    // The API on the host socket attaches into the host's QEMU (hostPID, /dev from the host).
    await until(
      'the sandbox discovered',
      async () => ((await client.listSandboxes()).length > 0 ? true : undefined),
      60_000,
    );
    const { attachment } = await client.attach('deploy-sb', 'vol-deploy', {
      mode: 'block',
      bus: 'virtio-blk',
      source: { type: 'hostDevice', path: loop?.path ?? '' },
    });
    const disk = await sandbox.guest.waitForDisk((d) => d.serial === attachment.serial, {
      timeoutMs: 30_000,
    });
    diskName = disk.name;
    const w = await sandbox.guest.run(`printf '%s' '${pattern}' > /dev/${disk.name} && sync`);
    expect(w.exitCode, w.stderr).toBe(0);

    const status = await until(
      'the VmplugNode status',
      async () => {
        const n = (
          await node.admin.request({
            method: 'GET',
            path: `/apis/vmplug.io/v1alpha1/vmplugnodes/${node.nodeName}`,
          })
        ).body as { status?: Record<string, unknown> & { node?: Record<string, unknown> } };
        const volumes = (n.status?.summary as { volumes?: number } | undefined)?.volumes ?? 0;
        const virt = n.status?.node?.virtualization as { qemuVersion?: string } | undefined;
        return n.status?.node?.cpu !== undefined && volumes > 0 && virt?.qemuVersion !== undefined
          ? n.status
          : undefined;
      },
      60_000,
    );
    const facts = status.node as {
      cpu: { cores: number };
      virtualization: { libvirtVersion?: string; qemuVersion?: string };
    };
    expect(facts.cpu.cores).toBeGreaterThan(0);
    expect(facts.virtualization.libvirtVersion).toMatch(/^\d+\.\d+\.\d+$/);
    // No QEMU in the image: the version comes from the test sandbox's monitor greeting.
    expect(facts.virtualization.qemuVersion).toMatch(/^\d+\.\d+\.\d+$/);
    // The host network: the node's NICs, among them the test bridge.
    expect((status.node as { nics: { name: string }[] }).nics.map((n) => n.name)).toContain('vmplugkb0');

    const lease = await until(
      'the Lease',
      async () =>
        (
          await node.admin.request({
            method: 'GET',
            path: `/apis/coordination.k8s.io/v1/namespaces/${NS}/leases/vmplug-${node.nodeName}`,
          })
        ).body as { spec: { holderIdentity?: string } },
      30_000,
    );
    expect(lease.spec.holderIdentity).toBeTruthy();

    const log = await podLog(pod.metadata.name);
    expect(log).toContain('reporting to Kubernetes');
    expect(log).not.toMatch(/\b(403|422)\b/);
    expect(log).not.toContain('refused a write');
  });

  it('a rolling restart keeps the journal, and the new pod is Ready only when /readyz is', async () => {
    const [old] = (await pods()).filter((p) => isReady(p));
    expect(old).toBeDefined();
    if (old === undefined) return;
    const journalBefore = existsSync('/var/lib/vmplug') ? statSync('/var/lib/vmplug').ino : undefined;
    await node.admin.request({
      method: 'DELETE',
      path: `/api/v1/namespaces/${NS}/pods/${old.metadata.name}`,
    });

    // Sample the new pod's Ready condition against /readyz on the host socket: never Ready while
    // /readyz fails. (Ready may lag /readyz by a probe period; the other way round is the bug.)
    const violations: string[] = [];
    let aliveNotReady = 0;
    const t0 = performance.now();
    const fresh = await until(
      'the new vmplugd pod Ready',
      async () => {
        const next = (await pods()).find((p) => p.metadata.uid !== old.metadata.uid);
        if (next === undefined) return undefined;
        const ready = isReady(next);
        const r = await readyz();
        if (ready && !r) violations.push(`${Math.round(performance.now() - t0)} ms`);
        // The window the probe exists for: the new vmplugd answers, is not ready, the pod is not Ready.
        if (
          !ready &&
          !r &&
          (await client.live({ timeoutMs: 2_000 }).then(
            () => true,
            () => false,
          ))
        )
          aliveNotReady++;
        return ready ? next : undefined;
      },
      120_000,
    );
    console.info(
      `replacement pod Ready ${Math.round(performance.now() - t0)} ms after the delete; ${aliveNotReady} samples saw it alive, not ready, pod not Ready; container restarts ${fresh.status?.containerStatuses?.[0]?.restartCount}`,
    );
    expect(violations).toEqual([]);
    expect(statSync('/var/lib/vmplug').ino).toBe(journalBefore);
    expect(await readyz()).toBe(true);
    // The attachment outlived the pod: the new vmplugd read it from the journal, the guest kept it.
    expect((await client.get('deploy-sb', 'vol-deploy')).state).toBe('Attached');
    const r = await sandbox.guest.run(`head -c ${pattern.length} /dev/${diskName}`);
    expect(r.stdout).toContain(pattern);
    await client.detach('deploy-sb', 'vol-deploy');
    await sandbox.guest.waitForDiskGone(diskName, { timeoutMs: 30_000 });
    expect((await loop?.readBacking(0, pattern.length))?.toString()).toBe(pattern);
    const log = await podLog(fresh.metadata.name);
    expect(log).not.toMatch(/\b(403|422)\b/);
    expect(log).not.toContain('refused a write');
  });

  it('tears down leaving the host as found', async () => {
    const t0 = performance.now();
    await teardown();
    console.info(`teardown ${Math.round(performance.now() - t0)} ms`);
    expect(hostState()).toEqual(hostBefore);
  });
});
