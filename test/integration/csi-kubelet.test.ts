/**
 * vmplug-csi on a real kubelet (issue 9), one node for the whole file (test/env/kube-node.ts):
 *
 *   kubelet ──> tap ──> vmplug-csi ──> test CSI node plugin   (the driver's "real" node plugin)
 *                           └──HTTP──> vmplugd (host process) ──> qemu-storage-daemon ──> test Ceph
 *
 * vmplug-csi runs in kubelet's mount namespace (as a node plugin pod sees kubelet's paths) and
 * registers the driver rbd.csi.ceph.com through kubelet's plugins_registry itself. The endpoint it
 * registers is a recorder (`CallTap`, test/env/csi-plugin.ts) in front of its socket: it passes
 * every call on unchanged and keeps what kubelet sent, so the test can say which calls kubelet
 * made, with which paths, and compare them byte for byte with what the plugin received.
 *
 * - A static PV of the test Ceph's image whose PVC carries volume.katacontainers.io/direct-mode:
 *   rbd, used by a Pod: vmplugd writes Kata's record for the exact target path kubelet gave, a
 *   storage daemon exports the image; the test's Kata runtime (test/env/kata-runtime.ts) plugs it
 *   into a test guest, which mounts it and reads what was written before. Deleting the Pod
 *   unpublishes: record, storage daemon and device node gone, the guest's write in the image.
 * - The same driver without the annotation: forwarded; the plugin sees exactly kubelet's calls,
 *   vmplugd nothing.
 * Figure (logged, never asserted): kubelet's NodePublish arriving -> the record written.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { decode, NodeRpc } from '../../csi/messages.js';
import { splitFields } from '../../csi/wire.js';
import { KubeError } from '../../daemon/report/kube/kube-http.js';
import { QmpClient } from '../../qmp/index.js';
import { attachCeph } from '../env/ceph.js';
import { CallTap, capabilities, nodeInfo, type TappedCall, TestPlugin } from '../env/csi-plugin.js';
import { type DaemonProcess, startDaemonProcess } from '../env/daemon.js';
import { catOnHost, ext4Image } from '../env/ext4.js';
import { plugUntilGuestSees, unplugUntilGuestDrops } from '../env/kata-plug-seen.js';
import { kataVolumeDirName } from '../env/kata-runtime.js';
import { until } from '../env/kube/manifests.js';
import { alive } from '../env/kube.js';
import { hostState, type KubeNode, type NodeProcess, startKubeNode } from '../env/kube-node.js';
import { repoRoot } from '../env/paths.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../env/sandbox.js';

const DRIVER = 'rbd.csi.ceph.com';
const NS = 'default';
const CLUSTER_ID = 'vmplug-test-ceph';
const LISTEN = `/var/lib/kubelet/plugins/${DRIVER}/csi.sock`;
const MiB = 2 ** 20;

interface PodObject {
  metadata: { uid: string };
  status?: { phase?: string };
}

/** The CSI volume_id of a Node request (field 1 of every one that carries it). */
function volumeIdOf(request: Buffer): string | undefined {
  const f = splitFields(request).find((x) => x.number === 1);
  return f === undefined ? undefined : f.value.toString('utf8');
}

const method = (path: string): string => path.split('/')[2] ?? path;

describe('vmplug-csi registered with a real kubelet', () => {
  const ceph = attachCeph(inject('ceph'));
  const image = `csi-kubelet-${randomBytes(4).toString('hex')}`;
  let hostBefore: ReturnType<typeof hostState>;
  let dir = '';
  let dvRoot = '';
  let store = '';
  let node: KubeNode | undefined;
  let root: TestRoot | undefined;
  let sandbox: KataSandbox | undefined;
  let inspector: QmpClient | undefined;
  let daemon: DaemonProcess | undefined;
  let plugin: TestPlugin | undefined;
  let tap: CallTap | undefined;
  let csi: NodeProcess | undefined;

  const kube = () => {
    if (node === undefined) throw new Error('no node');
    return node.admin;
  };
  const create = async (path: string, body: unknown): Promise<void> => {
    await kube().request({ method: 'POST', path, body });
  };
  const getPod = async (name: string): Promise<PodObject | undefined> => {
    try {
      return (await kube().request({ method: 'GET', path: `/api/v1/namespaces/${NS}/pods/${name}` }))
        .body as PodObject;
    } catch (err) {
      if (err instanceof KubeError && err.status === 404) return undefined;
      throw err;
    }
  };
  const tapped = (volumeId: string): TappedCall[] =>
    (tap?.calls ?? []).filter((c) => volumeIdOf(c.request) === volumeId);
  const pluginSaw = (volumeId: string) =>
    (plugin?.calls ?? []).filter((c) => volumeIdOf(c.request) === volumeId);
  /** kubelet's calls for a volume, stats polls aside (their number depends on timing). */
  const kubeletCalls = (volumeId: string): string[] =>
    tapped(volumeId)
      .map((c) => method(c.path))
      .filter((m) => m !== 'NodeGetVolumeStats');
  /**
   * kubelet's calls with a repeat of the call before collapsed: kubelet 1.20 was seen (once in
   * many runs) to run MountVolume twice for one pod within 40 ms, so NodePublishVolume twice, which
   * CSI requires to be idempotent. Each repeat must still have been answered OK.
   */
  const kubeletSequence = (volumeId: string): string[] => {
    const calls = tapped(volumeId).filter((c) => method(c.path) !== 'NodeGetVolumeStats');
    for (const [i, c] of calls.entries()) {
      const repeat = i > 0 && method(c.path) === method(calls[i - 1]?.path ?? '');
      if (repeat && c.endedAt !== undefined) expect(c.code, `repeated ${method(c.path)}`).toBe(0);
    }
    return kubeletCalls(volumeId).filter((m, i, all) => m !== all[i - 1]);
  };
  const waitCall = (volumeId: string, m: string): Promise<TappedCall> =>
    until(
      `kubelet's ${m} of ${volumeId} answered`,
      async () => tapped(volumeId).find((c) => method(c.path) === m && c.endedAt !== undefined),
      90_000,
    );

  /** A static PV of the driver + its PVC, pre-bound to each other, Bound before a pod uses it. */
  async function volume(pv: string, claim: string, handle: string, annotations: Record<string, string>) {
    await create('/api/v1/persistentvolumes', {
      apiVersion: 'v1',
      kind: 'PersistentVolume',
      metadata: { name: pv },
      spec: {
        capacity: { storage: '64Mi' },
        accessModes: ['ReadWriteOnce'],
        persistentVolumeReclaimPolicy: 'Retain',
        storageClassName: '',
        volumeMode: 'Filesystem',
        claimRef: { namespace: NS, name: claim },
        csi: {
          driver: DRIVER,
          volumeHandle: handle,
          fsType: 'ext4',
          // What ceph-csi's static PVs carry, and what vmplug-csi reads (csi/direct-mode.ts).
          volumeAttributes: {
            clusterID: CLUSTER_ID,
            pool: ceph.pool,
            imageName: image,
            staticVolume: 'true',
          },
          nodeStageSecretRef: { name: 'csi-rbd-secret', namespace: NS },
        },
      },
    });
    await create(`/api/v1/namespaces/${NS}/persistentvolumeclaims`, {
      apiVersion: 'v1',
      kind: 'PersistentVolumeClaim',
      metadata: { name: claim, annotations },
      spec: {
        accessModes: ['ReadWriteOnce'],
        resources: { requests: { storage: '64Mi' } },
        storageClassName: '',
        volumeName: pv,
      },
    });
    await until(
      `PVC ${claim} Bound`,
      async () => {
        const r = await kube().request({
          method: 'GET',
          path: `/api/v1/namespaces/${NS}/persistentvolumeclaims/${claim}`,
        });
        return (r.body as { status?: { phase?: string } }).status?.phase === 'Bound' ? true : undefined;
      },
      60_000,
    );
  }

  /** A pod (the pause image, runc) mounting the claim at /data; resolves once Running. */
  async function runPod(name: string, claim: string): Promise<PodObject> {
    if (node === undefined) throw new Error('no node');
    await create(`/api/v1/namespaces/${NS}/pods`, {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name },
      spec: {
        nodeName: node.nodeName,
        automountServiceAccountToken: false,
        enableServiceLinks: false,
        terminationGracePeriodSeconds: 1,
        containers: [
          {
            name: 'app',
            image: node.pauseImage,
            imagePullPolicy: 'Never',
            volumeMounts: [{ name: 'data', mountPath: '/data' }],
          },
        ],
        volumes: [{ name: 'data', persistentVolumeClaim: { claimName: claim } }],
      },
    });
    return until(
      `pod ${name} Running`,
      async () => {
        const p = await getPod(name);
        if (p?.status?.phase === 'Failed') throw new Error(`pod ${name} failed`);
        return p?.status?.phase === 'Running' ? p : undefined;
      },
      120_000,
    );
  }

  /** Deletes a pod as a user does (graceful): gone once kubelet has torn it down. */
  async function deletePod(name: string): Promise<void> {
    await kube().request({ method: 'DELETE', path: `/api/v1/namespaces/${NS}/pods/${name}` });
    await until(
      `pod ${name} gone`,
      async () => ((await getPod(name)) === undefined ? true : undefined),
      120_000,
    );
  }

  const diagnostics = async (): Promise<string> =>
    [
      `kubelet:\n${(node?.log('kubelet') ?? '').split('\n').slice(-40).join('\n')}`,
      `vmplug-csi:\n${(node?.log('vmplug-csi') ?? '').split('\n').slice(-30).join('\n')}`,
      `vmplugd:\n${(daemon?.lines ?? []).slice(-30).join('\n')}`,
      `tap: ${(tap?.calls ?? []).map((c) => `${method(c.path)}=${c.code}`).join(' ')}`,
    ].join('\n');

  beforeAll(async () => {
    hostBefore = hostState();
    dir = await mkdtemp(join(tmpdir(), 'vmp-csik-'));
    dvRoot = join(dir, 'direct-volumes');
    store = join(dir, 'store');
    const imgFile = join(dir, 'image.ext4');
    await ext4Image(imgFile, 64 * MiB, { 'hello.txt': 'in the image before the pod\n' });
    await ceph.importImage(image, await readFile(imgFile));

    // The guest boots while the node comes up (both mostly wait).
    root = await createTestRoot();
    const testRoot = root;
    const [n, sb] = await Promise.all([
      startKubeNode(),
      startKataSandbox(testRoot, { inspectMonitor: true, sharedMemory: true }),
    ]);
    node = n;
    sandbox = sb;
    console.info(`node Ready ${Math.round(n.bringUpMs)} ms after the first process started`);
    inspector = await QmpClient.connect(sb.inspectQmpPath ?? '');

    daemon = await startDaemonProcess({
      dir: join(dir, 'vmplugd'),
      monitorDir: testRoot.monitorDir,
      kataVmRoot: testRoot.kataVmRoot,
      logLevel: 'info',
      extraArgs: ['--kata-direct-volume-root', dvRoot, '--kata-vhost-user-store', store],
    });

    // The driver's real node plugin, moved aside to its own socket as ceph-csi would be.
    const testPlugin = new TestPlugin();
    testPlugin.answer = (path, request) => {
      switch (method(path)) {
        case 'NodeGetCapabilities':
          return capabilities([NodeRpc.STAGE_UNSTAGE_VOLUME, NodeRpc.GET_VOLUME_STATS]);
        case 'NodeGetInfo':
          return nodeInfo(n.nodeName);
        case 'NodePublishVolume': {
          // The spec gives the target directory to the plugin; kubelet (in its mount namespace)
          // removes it after NodeUnpublish.
          const r = decode('csi.v1.NodePublishVolumeRequest', request);
          mkdirSync(n.hostPathOf(r.targetPath ?? '/nonexistent'), { recursive: true, mode: 0o750 });
          return Buffer.alloc(0);
        }
        default:
          return Buffer.alloc(0);
      }
    };
    plugin = testPlugin;
    await testPlugin.listen(join(dir, 'plugin.sock'));
    await writeFile(
      join(dir, 'ceph-csi-config.json'),
      JSON.stringify([{ clusterID: CLUSTER_ID, monitors: ceph.monitors }]),
    );

    // vmplug-csi on the socket kubelet knows for the driver (in kubelet's namespace), the tap as
    // the endpoint it registers.
    mkdirSync(n.hostPathOf(join(LISTEN, '..')), { recursive: true });
    const t = new CallTap(n.hostPathOf(LISTEN));
    tap = t;
    const tapSocket = join(dir, 'kubelet-side.sock');
    await t.listen(tapSocket);
    csi = n.spawnInNode('vmplug-csi', process.execPath, [
      join(repoRoot, 'bin', 'vmplug-csi.js'),
      '--driver',
      DRIVER,
      '--listen',
      LISTEN,
      '--upstream',
      join(dir, 'plugin.sock'),
      '--vmplug-socket',
      daemon.socketPath,
      '--registration-dir',
      '/var/lib/kubelet/plugins_registry',
      '--registration-endpoint',
      tapSocket,
      '--ceph-config',
      join(dir, 'ceph-csi-config.json'),
      '--kubeconfig',
      n.kube.kubeconfigPath,
    ]);

    // No external-attacher runs: the CSIDriver says none is needed, and asks for the pod's info.
    await create('/apis/storage.k8s.io/v1/csidrivers', {
      apiVersion: 'storage.k8s.io/v1',
      kind: 'CSIDriver',
      metadata: { name: DRIVER },
      spec: { attachRequired: false, podInfoOnMount: true, volumeLifecycleModes: ['Persistent'] },
    });
    await create(`/api/v1/namespaces/${NS}/secrets`, {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: 'csi-rbd-secret' },
      stringData: { userID: ceph.clientUser, userKey: ceph.clientKey },
    });
    const registered = performance.now();
    await until(
      'the driver registered with kubelet (CSINode)',
      async () => {
        const r = await kube().request({
          method: 'GET',
          path: `/apis/storage.k8s.io/v1/csinodes/${n.nodeName}`,
        });
        const drivers = (r.body as { spec?: { drivers?: { name: string; nodeID: string }[] } }).spec?.drivers;
        return drivers?.find((d) => d.name === DRIVER);
      },
      90_000,
    ).catch(async (err: Error) => {
      throw new Error(`${err.message}\n${await diagnostics()}`);
    });
    console.info(
      `driver registered ${Math.round(performance.now() - registered)} ms after vmplug-csi started`,
    );
    // Pod admission needs the namespace's default ServiceAccount (the controller makes it).
    await until(
      'the default ServiceAccount',
      async () =>
        (await kube().request({ method: 'GET', path: `/api/v1/namespaces/${NS}/serviceaccounts/default` }))
          ? true
          : undefined,
      60_000,
    );
  }, 600_000);

  /** Everything this file started, last first; each part once, whatever failed before. */
  const teardown = async (): Promise<void> => {
    const n = node;
    node = undefined;
    for (const name of ['kata-direct', 'plain']) {
      await n?.admin
        .request({
          method: 'DELETE',
          path: `/api/v1/namespaces/${NS}/pods/${name}`,
          query: { gracePeriodSeconds: '0' },
        })
        .catch(() => undefined);
    }
    await csi?.stop();
    csi = undefined;
    await tap?.close();
    tap = undefined;
    await plugin?.close();
    plugin = undefined;
    await n?.stop();
    await inspector?.close().catch(() => undefined);
    inspector = undefined;
    await daemon?.stop();
    daemon = undefined;
    await root?.cleanup();
    root = undefined;
    await ceph.removeImage(image).catch(() => undefined);
    if (dir) await rm(dir, { recursive: true, force: true });
  };
  afterAll(teardown, 180_000);

  it('the registration: kubelet asked the real plugin for its node id through vmplug-csi', () => {
    expect(tap?.calls.some((c) => method(c.path) === 'NodeGetInfo' && c.code === 0)).toBe(true);
    expect(plugin?.paths()).toContain('NodeGetInfo');
    expect(node?.log('vmplug-csi')).toContain('registered with kubelet');
  });

  it('a PVC in direct mode: vmplugd publishes it for the exact target path; Kata plugs it; the guest reads it; deleting the pod unpublishes', async () => {
    const handle = 'csi-kubelet-direct';
    try {
      await volume('pv-direct', 'data-direct', handle, { 'volume.katacontainers.io/direct-mode': 'rbd' });
      const pod = await runPod('kata-direct', 'data-direct');
      const uid = pod.metadata.uid;

      // kubelet called vmplug-csi: NodeStage (credentials kept in its memory), NodePublish.
      const publish = await waitCall(handle, 'NodePublishVolume');
      expect(publish.code).toBe(0);
      expect(kubeletSequence(handle)).toEqual(['NodeStageVolume', 'NodePublishVolume']);
      const stageReq = decode('csi.v1.NodeStageVolumeRequest', tapped(handle)[0]?.request ?? Buffer.alloc(0));
      // (Booleans: a failed comparison must not print the key.)
      expect(stageReq.secrets?.userKey === ceph.clientKey).toBe(true);
      const targetPath = decode('csi.v1.NodePublishVolumeRequest', publish.request).targetPath ?? '';
      expect(targetPath).toBe(`/var/lib/kubelet/pods/${uid}/volumes/kubernetes.io~csi/pv-direct/mount`);
      // None of it reached the real plugin.
      expect(pluginSaw(handle)).toEqual([]);

      // vmplugd's pod volume, Kata's record at the path kubelet used, the storage daemon's export.
      const url = `/v1/pods/${uid}/volumes/${handle}`;
      const view = await daemon!.call<{ state: string; device?: string; recordPath: string }>('GET', url);
      expect(view.status).toBe(200);
      expect(view.body.state).toBe('Published');
      const recordFile = join(dvRoot, kataVolumeDirName(targetPath), 'mountInfo.json');
      expect(view.body.recordPath).toBe(recordFile);
      const recordText = await readFile(recordFile, 'utf8');
      expect(recordText.includes(ceph.clientKey)).toBe(false);
      const device = view.body.device ?? '';
      expect(JSON.parse(recordText)).toMatchObject({ 'volume-type': 'directvol', device, fstype: 'ext4' });
      const st = await stat(device);
      expect(st.isBlockDevice()).toBe(true);
      expect(Math.floor(st.rdev / 256) & 0xfff).toBe(241);
      expect((await stat(join(store, 'block', 'sockets', basename(device)))).isSocket()).toBe(true);
      const qsdState = join(daemon!.stateDir, 'qsd', basename(device), 'state.json');
      const qsdPid = Number(/"pid":\s*(\d+)/.exec(await readFile(qsdState, 'utf8'))?.[1]);
      expect(alive(qsdPid)).toBe(true);
      expect((await readFile(`/proc/${qsdPid}/cmdline`, 'utf8')).includes(ceph.clientKey)).toBe(false);

      const written = (await stat(recordFile)).mtimeMs;
      const arrived = performance.timeOrigin + publish.startedAt;
      console.info(
        `figure: kubelet NodePublish -> Kata record written ${(written - arrived).toFixed(1)} ms; NodePublish answered to kubelet in ${((publish.endedAt ?? 0) - publish.startedAt).toFixed(1)} ms (rbd: storage daemon started, image opened, export, device node)`,
      );

      // Kata's runtime at CreateContainer, on the bind mount's source kubelet gave it.
      const guest = sandbox!.guest;
      const plugged = await plugUntilGuestSees(guest, {
        qmp: inspector!,
        directVolumeRoot: dvRoot,
        mountSource: targetPath,
        sandboxId: sandbox!.id,
        vhostUserStore: store,
        pciBus: 'vmplug-rp0',
      });
      expect(plugged.plug.kind).toBe('vhost-user-blk');
      const { disk } = plugged;
      const r = await guest.run(
        `mkdir -p /mnt/k && mount -t ext4 /dev/${disk.name} /mnt/k && cat /mnt/k/hello.txt && echo written-through-kubelet > /mnt/k/guest.txt && sync && umount /mnt/k || { dmesg | tail -20 >&2; exit 1; }`,
        { timeoutMs: 30_000 },
      );
      expect(r.stderr).toBe('');
      expect(r.stdout).toBe('in the image before the pod\n');
      // The container goes: Kata unplugs; then the pod.
      await unplugUntilGuestDrops(inspector!, guest, plugged);

      await deletePod('kata-direct');
      const unpublish = await waitCall(handle, 'NodeUnpublishVolume');
      expect(unpublish.code).toBe(0);
      expect(decode('csi.v1.NodeUnpublishVolumeRequest', unpublish.request).targetPath).toBe(targetPath);
      expect((await waitCall(handle, 'NodeUnstageVolume')).code).toBe(0);
      expect(kubeletSequence(handle)).toEqual([
        'NodeStageVolume',
        'NodePublishVolume',
        'NodeUnpublishVolume',
        'NodeUnstageVolume',
      ]);
      expect(pluginSaw(handle)).toEqual([]);
      expect((await daemon!.call('GET', url)).status).toBe(404);
      await expect(stat(join(dvRoot, kataVolumeDirName(targetPath)))).rejects.toThrow();
      await expect(stat(device)).rejects.toThrow();
      await until('the storage daemon gone', async () => (alive(qsdPid) ? undefined : true), 15_000);

      // What the guest wrote is in the image.
      const out = join(dir, 'after.ext4');
      await writeFile(out, await ceph.exportImage(image));
      expect(await catOnHost(out, '/guest.txt')).toBe('written-through-kubelet\n');
    } catch (err) {
      console.info(await diagnostics());
      throw err;
    }
  }, 300_000);

  it("a PVC without direct mode is forwarded: the plugin sees exactly kubelet's calls, vmplugd nothing", async () => {
    const handle = 'csi-kubelet-plain';
    try {
      await volume('pv-plain', 'data-plain', handle, {});
      const pod = await runPod('plain', 'data-plain');
      const uid = pod.metadata.uid;
      const publish = await waitCall(handle, 'NodePublishVolume');
      expect(publish.code).toBe(0);
      const targetPath = `/var/lib/kubelet/pods/${uid}/volumes/kubernetes.io~csi/pv-plain/mount`;
      expect(decode('csi.v1.NodePublishVolumeRequest', publish.request).targetPath).toBe(targetPath);
      await deletePod('plain');
      await waitCall(handle, 'NodeUnstageVolume');

      expect(kubeletCalls(handle)).toEqual([
        'NodeStageVolume',
        'NodePublishVolume',
        'NodeUnpublishVolume',
        'NodeUnstageVolume',
      ]);
      const stage = decode('csi.v1.NodeStageVolumeRequest', tapped(handle)[0]?.request ?? Buffer.alloc(0));
      expect(stage.stagingTargetPath).toBe(
        '/var/lib/kubelet/plugins/kubernetes.io/csi/pv/pv-plain/globalmount',
      );
      const unpublish = tapped(handle).find((c) => method(c.path) === 'NodeUnpublishVolume');
      expect(
        decode('csi.v1.NodeUnpublishVolumeRequest', unpublish?.request ?? Buffer.alloc(0)).targetPath,
      ).toBe(targetPath);
      // Byte for byte, in order: what kubelet sent is what the real plugin received (calls still
      // in flight aside: a stats poll may be on its way).
      const done = tapped(handle).filter((c) => c.endedAt !== undefined);
      const sent = done.map((c) => [c.path, c.request.toString('base64')]);
      const received = pluginSaw(handle)
        .slice(0, done.length)
        .map((c) => [c.path, c.request.toString('base64')]);
      expect(received).toEqual(sent);
      expect(done.every((c) => c.code === 0)).toBe(true);

      // vmplugd was never asked about it.
      // (Its request log names every URL: the direct volume's are there, this pod's are not.)
      expect(daemon!.lines.some((l) => l.includes(uid))).toBe(false);
      expect(daemon!.lines.some((l) => l.includes('/volumes/csi-kubelet-direct'))).toBe(true);
      expect((await daemon!.call('GET', `/v1/pods/${uid}/volumes`)).body).toEqual({ items: [] });
    } catch (err) {
      console.info(await diagnostics());
      throw err;
    }
  }, 300_000);

  it('tears down leaving the host as found', async () => {
    const t0 = performance.now();
    await teardown();
    console.info(`teardown ${Math.round(performance.now() - t0)} ms`);
    expect(hostState()).toEqual(hostBefore);
  }, 180_000);
});
