/**
 * The project deployed for real: the image deploy/image/build makes, imported into a real node's
 * containerd (test/env/kube-node.ts: kubelet, controllers, containerd from Debian), and deploy/*.yaml
 * applied unchanged. vmplugd must come up Ready through its probe, serve its socket on the host,
 * write its VmplugNode status and Lease as rbac.yaml's ServiceAccount without a 403 or a 422, and
 * survive a rolling restart Ready only once /readyz is. An rbd pod volume's storage daemon (the
 * host-cgroup launcher the DaemonSet sets) outlives that restart and is adopted by the new vmplugd.
 *
 * The one object the test adds is the optional ConfigMap vmplug-system/vmplugd-env with
 * KUBERNETES_SERVICE_HOST=127.0.0.1 and the apiserver's port (no kube-proxy runs here, and no
 * traffic may leave this machine: docs/deploy.md), and the test bed's device allow-list.
 */
import { execFile } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { VmplugClient } from '../../cli/client.js';
import { attachCeph, type CephCluster } from '../env/ceph.js';
import { applyDeployFiles, until } from '../env/kube/manifests.js';
import { hostState, type KubeNode, startKubeNode } from '../env/kube-node.js';
import { createLoopDevice, type LoopDevice, TEST_BED_ALLOWED_DEVICES } from '../env/loop.js';
import { repoRoot } from '../env/paths.js';
import { rbdSource } from '../env/rbd-request.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../env/sandbox.js';

const run = promisify(execFile);
const NS = 'vmplug-system';
const SOCKET = '/run/vmplug/vmplug.sock';
const MiB = 2 ** 20;
/** The pod backend's storage daemons (<state-dir>/qsd on the host, a hostPath of the DaemonSet). */
const QSD_DIR = '/var/lib/vmplug/qsd';

/** A storage daemon as the host sees it: pid and start time from its state file. */
function qsdOf(name: string): { pid: number; startTime: number } {
  const s = JSON.parse(readFileSync(join(QSD_DIR, name, 'state.json'), 'utf8')) as {
    pid: number;
    startTime: number;
  };
  return { pid: s.pid, startTime: s.startTime };
}

/** Start time (/proc stat field 22) of a live pid, undefined when gone or a zombie. */
function startTimeOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return f[0] === 'Z' || f[0] === 'X' ? undefined : Number(f[19]);
  } catch {
    return undefined;
  }
}

/** Processes whose argv names this export's QMP socket: the storage daemons serving it. */
function daemonsOf(name: string): number[] {
  const sock = join(QSD_DIR, name, 'qmp.sock');
  return readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e))
    .filter((e) => {
      try {
        return (
          readFileSync(`/proc/${e}/cmdline`, 'utf8').includes(sock) && startTimeOf(Number(e)) !== undefined
        );
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** Every cgroup hierarchy's path of a process (`/proc/<pid>/cgroup`: id:controllers:path). */
function cgroupsOf(pid: number): string[] {
  return readFileSync(`/proc/${pid}/cgroup`, 'utf8')
    .trim()
    .split('\n')
    .map((l) => l.slice(l.indexOf(':', l.indexOf(':') + 1) + 1));
}

/** Host cgroup dirs named `name` under vmplug/pods, in any hierarchy. */
function podCgroupDirs(name: string): string[] {
  return readdirSync('/sys/fs/cgroup')
    .map((h) => join('/sys/fs/cgroup', h, 'vmplug', 'pods', name))
    .filter((d) => existsSync(d));
}

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
    node = await startKubeNode({
      hostPaths: ['/run/vmplug', '/var/lib/vmplug', '/run/vc', '/run/kata-containers'],
    });
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

  // The rbd pod volume whose storage daemon must outlive the rolling restart.
  let ceph: CephCluster | undefined;
  const rbdImage = `deploy-${randomBytes(4).toString('hex')}`;
  const podUid = randomUUID();
  let qsdName = '';
  let qsd = { pid: 0, startTime: 0 };

  const teardown = async (): Promise<void> => {
    await client.detach('deploy-sb', 'vol-deploy').catch(() => undefined);
    await client.unpublish(podUid, 'vol-rbd', { timeoutMs: 60_000 }).catch(() => undefined);
    await ceph?.removeImage(rbdImage).catch(() => undefined);
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

  it("publishes an rbd pod volume: its storage daemon runs in a host cgroup of its own, not the container's", async () => {
    ceph = attachCeph(inject('ceph'));
    await ceph.createImage(rbdImage, 32 * MiB);
    const { volume } = await client.publish(
      podUid,
      'vol-rbd',
      {
        mode: 'rbd',
        source: rbdSource(ceph, rbdImage),
        targetPath: `/var/lib/kubelet/pods/${podUid}/volumes/kubernetes.io~csi/pvc-rbd/mount`,
      },
      { timeoutMs: 60_000 },
    );
    expect(volume.state).toBe('Published');
    qsdName = (volume.device ?? '').split('/').at(-1) ?? '';
    expect(qsdName).toMatch(/^[a-z0-9][a-z0-9-]+$/);
    // The device node Kata's runtime reads, in the host's store (the hostPath).
    expect(statSync(join('/run/kata-containers/vhost-user/block/devices', qsdName)).isBlockDevice()).toBe(
      true,
    );
    qsd = qsdOf(qsdName);
    expect(startTimeOf(qsd.pid)).toBe(qsd.startTime);
    expect(daemonsOf(qsdName)).toEqual([qsd.pid]);
    // Out of the container's cgroup in every hierarchy (v1 here: devices, freezer, memory, ...).
    const paths = cgroupsOf(qsd.pid);
    expect(paths.length).toBeGreaterThan(0);
    for (const p of paths) expect(p).toBe(`/vmplug/pods/${qsdName}`);
    expect(podCgroupDirs(qsdName).length).toBe(paths.length);
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

    // The storage daemon outlived the old container (its cgroup was killed) and the new vmplugd
    // adopted it: same pid and start time, still the only one, the volume still Published.
    expect(startTimeOf(qsd.pid)).toBe(qsd.startTime);
    expect(qsdOf(qsdName)).toEqual(qsd);
    expect(daemonsOf(qsdName)).toEqual([qsd.pid]);
    expect((await client.getPodVolume(podUid, 'vol-rbd')).state).toBe('Published');
    // Unpublish stops it and removes its cgroups.
    await client.unpublish(podUid, 'vol-rbd', { timeoutMs: 60_000 });
    await until(
      'the storage daemon gone',
      async () => (startTimeOf(qsd.pid) === undefined ? true : undefined),
      15_000,
    );
    expect(daemonsOf(qsdName)).toEqual([]);
    expect(podCgroupDirs(qsdName)).toEqual([]);
    expect(existsSync(join(QSD_DIR, qsdName))).toBe(false);
  });

  it('tears down leaving the host as found', async () => {
    const t0 = performance.now();
    await teardown();
    console.info(`teardown ${Math.round(performance.now() - t0)} ms`);
    expect(hostState()).toEqual(hostBefore);
  });
});
