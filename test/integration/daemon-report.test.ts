/**
 * vmplugd reporting its node to a real kube-apiserver + etcd: a vmplugd child process runs with
 * the vmplugd service account's token (deploy/rbac.yaml's rights only) beside a real Kata-shaped
 * sandbox that belongs to a Pod (Kata's persist.json). The VmplugNode status shows the node facts
 * and the sandbox with its pod; a block-mode attach of a loop device shows up in the status and as
 * an Event on the Pod; the Lease is renewed; GET /v1/node and /metrics answer. A second sandbox
 * without persist.json gets its Events on the pod its attach request names (CSI podInfoOnMount).
 * A volume published for the Pod by its UID (DESIGN §5b) shows in the status's podVolumes and as
 * VolumePublished, VolumeConsumed (once Kata's side plugs it) and VolumeUnpublished Events.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KubeHttp } from '../../daemon/report/kube/kube-http.js';
import type { SandboxStatus, VmplugNodeStatus } from '../../daemon/report/kube/status.js';
import { QmpClient } from '../../qmp/index.js';
import { type DaemonProcess, startDaemonProcess } from '../env/daemon.js';
import { plugUntilGuestSees, unplugUntilGuestDrops } from '../env/kata-plug-seen.js';
import { prepareVmplugCluster, until, type VmplugTestCluster } from '../env/kube/manifests.js';
import { type KubeApiserver, startKubeApiserver } from '../env/kube.js';
import { createLoopDevice, type LoopDevice } from '../env/loop.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../env/sandbox.js';

const NODE = 'report-node-1';
const LEASE_NS = 'vmplug-system';
const MiB = 1024 * 1024;

/** The status as read back from the API server: what vmplugd writes, any part possibly missing. */
type NodeStatus = Partial<VmplugNodeStatus>;
interface KubeEvent {
  reason: string;
  type: string;
  message: string;
  involvedObject: { kind: string; name: string; namespace: string; uid?: string };
}

describe('vmplugd reporting to a real kube-apiserver', () => {
  let kube: KubeApiserver;
  let cluster: VmplugTestCluster;
  let admin: KubeHttp;
  let root: TestRoot;
  let sandbox: KataSandbox;
  let daemonDir: string;
  let dvRoot: string;
  let daemon: DaemonProcess;
  let loop: LoopDevice;
  let podless: KataSandbox | undefined;

  const status = async (): Promise<NodeStatus | undefined> => {
    const r = await admin.request({ method: 'GET', path: `/apis/vmplug.io/v1alpha1/vmplugnodes/${NODE}` });
    return (r.body as { status?: NodeStatus }).status;
  };
  const mySandbox = async (): Promise<SandboxStatus | undefined> =>
    (await status())?.sandboxes?.find((s) => s.id === sandbox.id);
  const podEvents = async (podName = cluster.pod.name): Promise<KubeEvent[]> => {
    const r = await admin.request({ method: 'GET', path: '/api/v1/namespaces/default/events' });
    return ((r.body as { items: KubeEvent[] }).items ?? []).filter(
      (e) => e.involvedObject.kind === 'Pod' && e.involvedObject.name === podName,
    );
  };

  beforeAll(async () => {
    kube = await startKubeApiserver();
    cluster = await prepareVmplugCluster(kube);
    admin = cluster.admin;
    root = await createTestRoot();
    sandbox = await startKataSandbox(root, { pod: { ...cluster.pod }, inspectMonitor: true });
    loop = await createLoopDevice(16 * MiB);
    daemonDir = await mkdtemp(join(tmpdir(), 'vmpd-report-'));
    dvRoot = join(daemonDir, 'direct-volumes');
    daemon = await startDaemonProcess({
      dir: daemonDir,
      monitorDir: root.monitorDir,
      kataVmRoot: root.kataVmRoot,
      logLevel: 'info',
      extraArgs: [
        '--kata-direct-volume-root',
        dvRoot,
        '--kubeconfig',
        cluster.serviceAccountKubeconfig,
        '--node-name',
        NODE,
        '--lease-namespace',
        LEASE_NS,
      ],
    });
  }, 600_000);

  afterAll(async () => {
    await daemon?.stop();
    await podless?.stop();
    await sandbox?.stop();
    await root?.cleanup();
    await loop?.detach().catch(() => undefined);
    if (daemonDir) await rm(daemonDir, { recursive: true, force: true });
    await kube?.stop();
  });

  it('writes the node facts and the sandbox with its pod identity to the VmplugNode status', async () => {
    const sb = await until('the sandbox in the VmplugNode status', mySandbox, 90_000);
    expect(sb.kind).toBe('kata');
    expect(sb.pod).toEqual({
      uid: cluster.pod.uid,
      name: cluster.pod.name,
      namespace: cluster.pod.namespace,
    });
    const s = await until('the node facts and Ready in the status', async () => {
      const st = await status();
      const ready = st?.conditions?.find((c) => c.type === 'Ready')?.status === 'True';
      return st?.node?.memoryBytes !== undefined && st.node.cpu?.threads !== undefined && ready
        ? st
        : undefined;
    });
    expect(s.node?.cpu?.threads).toBeGreaterThan(0);
    expect(s.node?.memoryBytes).toBeGreaterThan(64 * MiB);
    expect(s.node?.kernel).toMatch(/^\d+\.\d+/);
    expect(typeof s.node?.virtualization?.kvm).toBe('boolean');
    expect(s.node?.blockDevices?.length).toBeGreaterThan(0);
  });

  it('GET /v1/node answers with the facts', async () => {
    const r = await daemon.call<Record<string, unknown>>('GET', '/v1/node');
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    const f = r.body as {
      cpu?: { threads: number };
      memory?: { totalBytes: number; freeBytes: number };
      virtualization?: { kvmDevice: string; cpuFlag: string | null };
      os?: { kernel: string };
      blockDevices?: unknown[];
      nics?: { name: string }[];
    };
    expect(f.cpu?.threads).toBeGreaterThan(0);
    expect(f.memory?.totalBytes).toBeGreaterThan(f.memory?.freeBytes ?? Number.POSITIVE_INFINITY);
    expect(['accessible', 'present', 'missing']).toContain(f.virtualization?.kvmDevice);
    expect(f.os?.kernel).toMatch(/^\d+\.\d+/);
    expect(Array.isArray(f.blockDevices)).toBe(true);
    expect(f.nics?.some((n) => n.name === 'lo')).toBe(false);
  });

  it('a block-mode attach shows in the status and as a Pod Event; the detach too', async () => {
    await until('the sandbox to be served', async () => {
      const r = await daemon.call('GET', `/v1/sandboxes/${sandbox.id}`);
      return r.status === 200 ? true : undefined;
    });
    const path = `/v1/sandboxes/${sandbox.id}/volumes/vol-report`;
    const put = await daemon.call<{ serial: string; bus: string; state: string }>('PUT', path, {
      mode: 'block',
      source: { type: 'hostDevice', path: loop.path },
    });
    const replied = performance.now();
    expect(put.status, JSON.stringify(put.body)).toBe(201);
    const vol = await until('the volume in the VmplugNode status', async () => {
      const v = (await mySandbox())?.volumes?.find((x) => x.volumeId === 'vol-report');
      return v?.state === 'Attached' ? v : undefined;
    });
    const toStatusMs = performance.now() - replied;
    expect(vol).toMatchObject({ mode: 'block', bus: put.body.bus, state: 'Attached' });
    await sandbox.guest.waitForDisk((d) => d.sizeBytes === 16 * MiB, { timeoutMs: 30_000 });

    const attached = await until('the VolumeAttached event on the Pod', async () =>
      (await podEvents()).find((e) => e.reason === 'VolumeAttached'),
    );
    expect(attached.type).toBe('Normal');
    expect(attached.involvedObject.uid).toBe(cluster.pod.uid);
    expect(attached.message).toContain('vol-report');
    const toEventMs = performance.now() - replied;

    // The repeat is idempotent (200) and is no news: no second event.
    const again = await daemon.call('PUT', path, {
      mode: 'block',
      source: { type: 'hostDevice', path: loop.path },
    });
    expect(again.status).toBe(200);

    const del = await daemon.call('DELETE', path);
    expect(del.status).toBe(204);
    await until('the volume gone from the status', async () => {
      const sb = await mySandbox();
      return sb !== undefined && !(sb.volumes ?? []).some((v) => v.volumeId === 'vol-report')
        ? true
        : undefined;
    });
    const detached = await until('the VolumeDetached event on the Pod', async () =>
      (await podEvents()).find((e) => e.reason === 'VolumeDetached'),
    );
    expect(detached.message).toContain('vol-report');
    expect((await podEvents()).filter((e) => e.reason === 'VolumeAttached')).toHaveLength(1);

    // A failing attach (a path that is no block device) is a Warning on the Pod.
    const bad = await daemon.call('PUT', `/v1/sandboxes/${sandbox.id}/volumes/vol-bad`, {
      mode: 'block',
      source: { type: 'hostDevice', path: '/dev/vmplug-test-no-such-device' },
    });
    expect(bad.status).toBeGreaterThanOrEqual(400);
    const failed = await until('the VolumeAttachFailed event on the Pod', async () =>
      (await podEvents()).find((e) => e.reason === 'VolumeAttachFailed'),
    );
    expect(failed.type).toBe('Warning');
    console.log(
      `[daemon-report] attach reply -> VmplugNode status shows the volume: ${Math.round(toStatusMs)} ms; ` +
        `-> Pod event listed (polled after the status): ${Math.round(toEventMs)} ms ` +
        '(a status write in the second before the attach adds up to 1 s; npm run bench:daemon-report separates them)',
    );
  });

  it('a volume published for the Pod by UID: status podVolumes and VolumePublished, VolumeConsumed, VolumeUnpublished Events', async () => {
    const { uid, name, namespace } = cluster.pod;
    const targetPath = `/var/lib/kubelet/pods/${uid}/volumes/kubernetes.io~csi/pvc-report/mount`;
    const url = `/v1/pods/${uid}/volumes/vol-pod`;
    const body = {
      mode: 'block',
      source: { type: 'hostDevice', path: loop.path },
      targetPath,
      fsType: 'ext4',
      pod: { name, namespace },
    };
    const put = await daemon.call<{ state: string }>('PUT', url, body);
    expect(put.status, JSON.stringify(put.body)).toBe(201);
    const podVolume = (state: string) => async () =>
      (await status())?.podVolumes?.find((v) => v.volumeId === 'vol-pod' && v.state === state);
    const published = await until(
      'the pod volume Published in the VmplugNode status',
      podVolume('Published'),
    );
    expect(published).toMatchObject({
      podUid: uid,
      mode: 'block',
      targetPath,
      device: loop.path,
      pod: { name, namespace },
    });
    expect((await status())?.summary?.podVolumes).toBe(1);
    const publishedEvent = await until('the VolumePublished event on the Pod', async () =>
      (await podEvents()).find((e) => e.reason === 'VolumePublished'),
    );
    expect(publishedEvent).toMatchObject({ type: 'Normal', involvedObject: { uid } });
    expect(publishedEvent.message).toContain('vol-pod');
    // A CSI retry of the same publish is no news.
    expect((await daemon.call('PUT', url, body)).status).toBe(200);

    // Kata's runtime at CreateContainer: plugs the device and drops its sandbox-id file.
    const inspector = await QmpClient.connect(sandbox.inspectQmpPath ?? '');
    try {
      const plugged = await plugUntilGuestSees(sandbox.guest, {
        qmp: inspector,
        directVolumeRoot: dvRoot,
        mountSource: targetPath,
        sandboxId: sandbox.id,
        sizeBytes: 16 * MiB,
        guestTimeoutMs: 30_000,
      });
      const consumed = await until('the pod volume Consumed in the status', podVolume('Consumed'));
      expect(consumed.sandboxId).toBe(sandbox.id);
      const consumedEvent = await until('the VolumeConsumed event on the Pod', async () =>
        (await podEvents()).find((e) => e.reason === 'VolumeConsumed'),
      );
      expect(consumedEvent.message).toContain(sandbox.id);
      await unplugUntilGuestDrops(inspector, sandbox.guest, plugged, { guestTimeoutMs: 30_000 });
    } finally {
      await inspector.close();
    }

    expect((await daemon.call('DELETE', url)).status).toBe(204);
    await until('the pod volume gone from the status', async () => {
      const st = await status();
      return st !== undefined && !(st.podVolumes ?? []).some((v) => v.volumeId === 'vol-pod')
        ? true
        : undefined;
    });
    await until('the VolumeUnpublished event on the Pod', async () =>
      (await podEvents()).find((e) => e.reason === 'VolumeUnpublished'),
    );
    expect((await daemon.call('DELETE', url)).status).toBe(204);
    const events = await podEvents();
    expect(events.filter((e) => e.reason === 'VolumePublished')).toHaveLength(1);
    expect(events.filter((e) => e.reason === 'VolumeConsumed')).toHaveLength(1);
    expect(events.filter((e) => e.reason === 'VolumeUnpublished')).toHaveLength(1);
  });

  it('renews the Lease', async () => {
    const renewTime = async (): Promise<string | undefined> => {
      const r = await admin.request({
        method: 'GET',
        path: `/apis/coordination.k8s.io/v1/namespaces/${LEASE_NS}/leases/vmplug-${NODE}`,
      });
      return (r.body as { spec?: { renewTime?: string; holderIdentity?: string } }).spec?.renewTime;
    };
    const first = await until('the Lease', renewTime);
    const later = await until(
      'the Lease renewed',
      async () => {
        const t = await renewTime();
        return t !== undefined && t !== first ? t : undefined;
      },
      60_000,
    );
    expect(Date.parse(later)).toBeGreaterThan(Date.parse(first));
  });

  it('/metrics has the attach counter and latency histogram by mode and frontend', async () => {
    const r = await daemon.call<string>('GET', '/metrics');
    expect(r.status).toBe(200);
    expect(r.contentType).toMatch(/^text\/plain/);
    const text = String(r.body);
    expect(text).toMatch(/^vmplug_attach_total\{mode="block",frontend="(scsi|virtio-blk)",result="ok"\} 2$/m);
    expect(text).toMatch(
      /^vmplug_attach_duration_seconds_count\{mode="block",frontend="(scsi|virtio-blk)"\} 2$/m,
    );
    expect(text).toMatch(
      /^vmplug_attach_duration_seconds_bucket\{le="\+Inf",mode="block",frontend="(scsi|virtio-blk)"\} 2$/m,
    );
    expect(text).toMatch(/^vmplug_detach_total\{mode="block",frontend="(scsi|virtio-blk)",result="ok"\} 1$/m);
    expect(text).toMatch(/^vmplug_operation_errors_total\{op="attach",code="[A-Z_]+"\} 1$/m);
    expect(text).toMatch(/^vmplug_sandboxes\{kind="kata",state="running"\} 1$/m);
    expect(text).toMatch(/^vmplug_reconcile_runs_total\{result="ok"\} [1-9]/m);
    expect(text).toMatch(/^process_resident_memory_bytes \d+/m);
  });
  // Last: the metrics test above counts this file's attaches and running sandboxes.
  it("a sandbox whose runtime records no pod: Events go to the attach request's pod", async () => {
    expect(cluster.pod.namespace).toBe('default');
    podless = await startKataSandbox(root, {});
    const id = podless.id;
    await until('the pod-less sandbox to be served', async () => {
      const r = await daemon.call('GET', `/v1/sandboxes/${id}`);
      return r.status === 200 ? true : undefined;
    });
    const pod = { uid: randomUUID(), name: 'csi-pod-0', namespace: cluster.pod.namespace };
    const path = `/v1/sandboxes/${id}/volumes/vol-csi`;
    const put = await daemon.call<{ pod?: unknown }>('PUT', path, {
      mode: 'block',
      source: { type: 'hostDevice', path: loop.path },
      pod,
    });
    expect(put.status, JSON.stringify(put.body)).toBe(201);
    expect(put.body.pod).toEqual(pod);
    const attached = await until('the VolumeAttached event on the requested Pod', async () =>
      (await podEvents(pod.name)).find((e) => e.reason === 'VolumeAttached'),
    );
    expect(attached.involvedObject).toMatchObject({ name: pod.name, namespace: pod.namespace, uid: pod.uid });
    expect(attached.message).toContain('vol-csi');
    // The detach names only ids: its Event finds the pod recorded with the volume, once the node
    // snapshot has read it (the status showing the volume says it has).
    await until('the volume in the VmplugNode status', async () => {
      const sb = (await status())?.sandboxes?.find((x) => x.id === id);
      return sb?.volumes?.some((v) => v.volumeId === 'vol-csi' && v.state === 'Attached') ? true : undefined;
    });
    const del = await daemon.call('DELETE', path);
    expect(del.status).toBe(204);
    const detached = await until('the VolumeDetached event on the requested Pod', async () =>
      (await podEvents(pod.name)).find((e) => e.reason === 'VolumeDetached'),
    );
    expect(detached.involvedObject.uid).toBe(pod.uid);
  });
});
