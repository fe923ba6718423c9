/**
 * A real single-node Kubernetes on this machine, for tests that need a kubelet: etcd and the
 * apiserver (kube.ts), kube-controller-manager, kube-scheduler, containerd + runc and a kubelet,
 * all from Debian (binaries of the same `kubernetes` source build, test/env/build-kube-node).
 *
 * What it takes care of (FACTS.md, "A container image and a real single-node Kubernetes"):
 * - containerd and kubelet run in one private mount namespace with shared propagation (no systemd
 *   here, so host mounts are private and HostToContainer would fail), made by a holder process
 *   (`unshare -m --propagation shared`); every mount they make stays in it. The kubelet's and
 *   containerd's fixed state paths (/var/lib/kubelet, /var/log/pods, /var/lib/cni, ...) are bind
 *   mounts of temp dirs inside that namespace, so nothing of theirs lands on the host.
 * - No traffic leaves the machine: the apiserver is on 127.0.0.1, the node's address is on a test
 *   bridge made here (kubelet refuses a loopback --node-ip), every registry is mirrored to a
 *   closed local port (a missing image fails, it is never pulled), and pods reach the apiserver
 *   through KUBERNETES_SERVICE_HOST=127.0.0.1 (see `apiserverEnv`).
 * - The controller-manager starts only once the bootstrap RBAC is visible (it dies otherwise);
 *   containerd has restrict_oom_score_adj (runc fails without it here).
 * - Teardown leaves the host as found: pods' tasks killed and deleted before containerd stops,
 *   sysctls the kubelet changes restored, cgroups, the bridge, and every host path it (or a
 *   hostPath volume, `hostPaths`) created removed.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { createKubeHttp, type KubeHttp } from '../../daemon/report/kube/kube-http.js';
import { until } from './kube/manifests.js';
import {
  freePort,
  type KubeApiserver,
  KubeEnvError,
  killAndWait,
  spawnLogged,
  startKubeApiserver,
  waitFor,
} from './kube.js';
import { repoRoot } from './paths.js';

const run = promisify(execFile);

/** Sysctls kubelet sets when --protect-kernel-defaults is false (and ip_forward, to be sure). */
const KUBELET_SYSCTLS = [
  'vm.overcommit_memory',
  'vm.panic_on_oom',
  'kernel.panic',
  'kernel.panic_on_oops',
  'kernel.keys.root_maxkeys',
  'kernel.keys.root_maxbytes',
  'net.ipv4.ip_forward',
];

/** Fixed paths kubelet and containerd write whatever their flags say; private to the namespace. */
const PRIVATE_PATHS = [
  '/var/lib/kubelet',
  '/var/log/pods',
  '/var/log/containers',
  '/var/lib/cni',
  '/run/containerd',
  '/run/netns',
];

export interface KubeNodeOptions {
  /** Node name (default vmplug-node). */
  nodeName?: string;
  /**
   * Host paths the workload may create (hostPath DirectoryOrCreate); removed at teardown when they
   * did not exist before.
   */
  hostPaths?: string[];
  /** Test bridge and its /24 (default vmplugkb0, 10.250.77.0/24; the node IP is .1). */
  bridge?: string;
  subnetPrefix?: string;
  readyTimeoutMs?: number;
}

export interface KubeNode {
  readonly kube: KubeApiserver;
  readonly admin: KubeHttp;
  readonly nodeName: string;
  readonly nodeIp: string;
  readonly dir: string;
  readonly containerdSocket: string;
  /** The pause image in containerd (a container image a test pod can run: it never pulls). */
  readonly pauseImage: string;
  /** Milliseconds from the first process spawned to the Node Ready. */
  readonly bringUpMs: number;
  /** KUBERNETES_SERVICE_HOST/PORT for pods on the host network: the apiserver on 127.0.0.1. */
  readonly apiserverEnv: Record<string, string>;
  /**
   * Where a path kubelet or containerd see lives on the host: /var/lib/kubelet, /var/log/pods...
   * are bind mounts in their mount namespace only (a CSI target path is under the first).
   */
  hostPathOf(path: string): string;
  /** A process in that mount namespace (`nsenter --mount=/proc/<pid>/ns/mnt` to see what they see). */
  readonly mountNamespacePid: number;
  /** `ctr -n k8s.io images import`: the name comes from the archive's reference. */
  importImage(archive: string): Promise<void>;
  /**
   * Starts a process in that mount namespace, where it sees kubelet's paths as a node plugin pod
   * with Bidirectional mounts would (a CSI plugin), logged to `log(name)`. Stopped (SIGTERM,
   * then SIGKILL) by the handle or by `stop()`, before kubelet.
   */
  spawnInNode(name: string, file: string, args: string[]): NodeProcess;
  /** A log of one of its processes (kubelet, containerd, kube-controller-manager, kube-scheduler). */
  log(name: string): string;
  stop(): Promise<void>;
}

export interface NodeProcess {
  readonly pid: number;
  stop(): Promise<void>;
}

/**
 * What a node's bring-up could leave on the host (compared before and after by the tests that
 * start one): names in the places kubelet and containerd write, links, sysctls.
 */
export function hostState(): Record<string, string[]> {
  const names = (d: string): string[] => {
    try {
      return readdirSync(d).sort();
    } catch {
      return [];
    }
  };
  const sysctl = (k: string): string => {
    try {
      return `${k}=${readFileSync(`/proc/sys/${k.replaceAll('.', '/')}`, 'utf8').trim()}`;
    } catch {
      return `${k}=?`;
    }
  };
  return {
    ...Object.fromEntries(
      [
        '/var/lib',
        '/var/log',
        '/run',
        '/usr/libexec',
        '/opt',
        '/etc/cni',
        '/sys/fs/cgroup/memory',
        '/sys/fs/cgroup/cpu',
      ].map((d) => [d, names(d)]),
    ),
    links: names('/sys/class/net'),
    sysctls: [
      'vm.overcommit_memory',
      'vm.panic_on_oom',
      'kernel.panic',
      'kernel.panic_on_oops',
      'net.ipv4.ip_forward',
    ].map(sysctl),
  };
}

/** The cached node binaries, building them on first use (about 7 min cold). */
export async function kubeNodeBinaries(): Promise<{ dir: string; pauseImage: string }> {
  const fromEnv = process.env.VMPLUG_KUBE_NODE_DIR;
  let dir = fromEnv;
  if (!dir) {
    const { stdout } = await run(join(repoRoot, 'test', 'env', 'build-kube-node'), [], {
      timeout: 40 * 60_000,
      maxBuffer: 16 * 1024 * 1024,
    });
    dir = stdout.trim().split('\n').pop();
  }
  if (!dir || !existsSync(join(dir, 'kubelet')))
    throw new KubeEnvError(
      'KUBE_NO_APISERVER',
      'test/env/build-kube-node gave no binaries (run test/env/setup)',
    );
  return { dir, pauseImage: readFileSync(join(dir, 'PAUSE_IMAGE'), 'utf8').trim() };
}

export async function startKubeNode(opts: KubeNodeOptions = {}): Promise<KubeNode> {
  const nodeName = opts.nodeName ?? 'vmplug-node';
  const bridge = opts.bridge ?? 'vmplugkb0';
  const prefix = opts.subnetPrefix ?? '10.250.77';
  const nodeIp = `${prefix}.1`;
  const readyTimeoutMs = opts.readyTimeoutMs ?? 180_000;
  const bins = await kubeNodeBinaries();
  const t0 = performance.now();
  const kube = await startKubeApiserver();
  const dir = kube.dir;
  const undo: (() => Promise<void> | void)[] = [];
  const pids: number[] = [];
  let containerdSocket = '';
  const ctr = (args: string[], timeout = 120_000) =>
    run('ctr', ['--address', containerdSocket, '--namespace', 'k8s.io', ...args], {
      timeout,
      maxBuffer: 16 * 1024 * 1024,
    });
  const stop = async (): Promise<void> => {
    // Last in, first out; every step runs even when one fails.
    for (const u of undo.splice(0).reverse()) {
      try {
        await u();
      } catch {
        // Teardown goes on: the rest must still be put back.
      }
    }
    await kube.stop();
  };
  try {
    const admin = await createKubeHttp({ kind: 'kubeconfig', path: kube.kubeconfigPath });

    // --- Host state to put back.
    const sysctls = new Map(KUBELET_SYSCTLS.map((k) => [k, readSysctl(k)] as const));
    undo.push(() => {
      for (const [k, v] of sysctls) if (v !== undefined && readSysctl(k) !== v) writeSysctl(k, v);
    });
    const cgroupsBefore = cgroupDirs();
    undo.push(() => removeNewCgroups(cgroupsBefore));
    for (const p of [...PRIVATE_PATHS, ...(opts.hostPaths ?? [])]) {
      const created = firstMissing(p);
      if (created !== undefined) undo.push(() => removeIfCreated(created, p));
    }
    for (const p of PRIVATE_PATHS) mkdirSync(p, { recursive: true });

    // --- The test bridge: the node's address, and the one CNI network (no route off the host).
    await run('ip', ['link', 'add', bridge, 'type', 'bridge']);
    undo.push(() => run('ip', ['link', 'del', bridge]).then(() => {}));
    await run('ip', ['addr', 'add', `${nodeIp}/24`, 'dev', bridge]);
    await run('ip', ['link', 'set', bridge, 'up']);

    // --- The mount namespace containerd and kubelet share.
    const priv = join(dir, 'private');
    const setup = PRIVATE_PATHS.map((p, i) => {
      mkdirSync(join(priv, String(i)), { recursive: true });
      return `mount --bind ${join(priv, String(i))} ${p}`;
    }).join(' && ');
    const holder = spawnLogged(dir, 'mount-ns', 'unshare', [
      '-m',
      '--propagation',
      'shared',
      '--',
      'sh',
      '-c',
      `${setup} && exec sleep infinity`,
    ]);
    pids.push(holder);
    undo.push(() => killAndWait(holder));
    await until(
      'the mount namespace',
      async () => {
        const mine = readFileSync(`/proc/${holder}/mountinfo`, 'utf8');
        return PRIVATE_PATHS.every((p) => mine.includes(` ${p} `)) ? true : undefined;
      },
      10_000,
    );
    const inNs = (name: string, file: string, args: string[]): number =>
      spawnLogged(dir, name, 'nsenter', [`--mount=/proc/${holder}/ns/mnt`, '--', file, ...args]);

    // --- containerd.
    const cd = join(dir, 'containerd');
    mkdirSync(join(dir, 'cni', 'net.d'), { recursive: true });
    containerdSocket = join(cd, 'c.sock');
    mkdirSync(cd, { recursive: true });
    writeFileSync(
      join(dir, 'cni', 'net.d', '10-vmplug-test.conflist'),
      JSON.stringify({
        cniVersion: '0.4.0',
        name: 'vmplug-test',
        plugins: [
          {
            type: 'bridge',
            bridge,
            // No gateway and no masquerade: nothing to route off the host, no ip_forward, no NAT rules.
            isGateway: false,
            ipMasq: false,
            ipam: {
              type: 'host-local',
              ranges: [[{ subnet: `${prefix}.0/24`, rangeStart: `${prefix}.10` }]],
              dataDir: join(dir, 'cni', 'ipam'),
            },
          },
        ],
      }),
    );
    writeFileSync(join(cd, 'config.toml'), containerdConfig(cd, containerdSocket, dir, bins.pauseImage));
    const containerd = inNs('containerd', '/usr/bin/containerd', ['--config', join(cd, 'config.toml')]);
    pids.push(containerd);
    await waitFor('containerd', 60_000, containerd, join(dir, 'containerd.log'), async () => {
      await ctr(['version'], 5_000);
      return true;
    });
    undo.push(async () => {
      // Pods' tasks go before containerd: its shims would outlive it, holding cgroups.
      await removeAllTasks(ctr);
      await killAndWait(containerd);
    });
    await ctr(['images', 'import', join(bins.dir, 'pause.oci.tar')]);

    // --- Controllers, once bootstrap RBAC answers for them.
    await until(
      'bootstrap RBAC',
      async () => {
        const r = await admin.request({
          method: 'POST',
          path: '/apis/authorization.k8s.io/v1/subjectaccessreviews',
          body: {
            apiVersion: 'authorization.k8s.io/v1',
            kind: 'SubjectAccessReview',
            spec: {
              user: 'system:kube-controller-manager',
              resourceAttributes: { verb: 'get', resource: 'configmaps', namespace: 'kube-system' },
            },
          },
        });
        return (r.body as { status?: { allowed?: boolean } }).status?.allowed ? true : undefined;
      },
      60_000,
    );
    const kcm = spawnLogged(dir, 'kube-controller-manager', join(bins.dir, 'kube-controller-manager'), [
      `--kubeconfig=${kube.kubeconfigPath}`,
      `--service-account-private-key-file=${join(dir, 'sa.key')}`,
      `--root-ca-file=${kube.caFile}`,
      // Its default, /usr/libexec/kubernetes/..., would be created on the host.
      `--flex-volume-plugin-dir=${join(dir, 'volume-plugins')}`,
      '--leader-elect=false',
      '--port=0',
      '--secure-port=0',
      '--v=1',
    ]);
    pids.push(kcm);
    undo.push(() => killAndWait(kcm));
    const scheduler = spawnLogged(dir, 'kube-scheduler', join(bins.dir, 'kube-scheduler'), [
      `--kubeconfig=${kube.kubeconfigPath}`,
      '--leader-elect=false',
      '--port=0',
      '--secure-port=0',
      '--v=1',
    ]);
    pids.push(scheduler);
    undo.push(() => killAndWait(scheduler));

    // --- kubelet.
    const kubeletPort = await freePort();
    const kubelet = inNs('kubelet', join(bins.dir, 'kubelet'), [
      `--kubeconfig=${kube.kubeconfigPath}`,
      '--container-runtime=remote',
      `--container-runtime-endpoint=unix://${containerdSocket}`,
      '--runtime-request-timeout=5m',
      '--cgroup-driver=cgroupfs',
      // No QoS cgroup tree to leave behind.
      '--cgroups-per-qos=false',
      '--enforce-node-allocatable=',
      `--node-ip=${nodeIp}`,
      `--address=${nodeIp}`,
      `--port=${kubeletPort}`,
      '--read-only-port=0',
      '--healthz-port=0',
      `--hostname-override=${nodeName}`,
      '--fail-swap-on=false',
      `--cert-dir=${join(dir, 'kubelet-pki')}`,
      `--volume-plugin-dir=${join(dir, 'volume-plugins')}`,
      `--pod-infra-container-image=${bins.pauseImage}`,
      // No iptables chains of the kubelet's on the host.
      '--make-iptables-util-chains=false',
      '--eviction-hard=memory.available<64Mi,nodefs.available<1%,imagefs.available<1%,nodefs.inodesFree<1%',
      '--image-gc-high-threshold=100',
      '--image-gc-low-threshold=99',
      '--resolv-conf=/etc/resolv.conf',
      '--v=1',
    ]);
    pids.push(kubelet);
    // Stopped before containerd (pushed after it), so it restarts nothing meanwhile.
    undo.push(() => killAndWait(kubelet));
    await waitFor('the Node Ready', readyTimeoutMs, kubelet, join(dir, 'kubelet.log'), async () => {
      const n = (await admin.request({ method: 'GET', path: `/api/v1/nodes/${nodeName}` })).body as {
        status?: { conditions?: { type: string; status: string }[] };
      };
      return n.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false;
    });
    const bringUpMs = performance.now() - t0;
    return {
      kube,
      admin,
      nodeName,
      nodeIp,
      dir,
      containerdSocket,
      pauseImage: bins.pauseImage,
      bringUpMs,
      apiserverEnv: { KUBERNETES_SERVICE_HOST: '127.0.0.1', KUBERNETES_SERVICE_PORT: String(kube.port) },
      mountNamespacePid: holder,
      hostPathOf: (path) => {
        const i = PRIVATE_PATHS.findIndex((p) => path === p || path.startsWith(`${p}/`));
        return i < 0 ? path : join(priv, String(i), path.slice((PRIVATE_PATHS[i] ?? '').length));
      },
      spawnInNode: (name, file, args) => {
        const pid = inNs(name, file, args);
        let stopped: Promise<void> | undefined;
        const stopIt = (): Promise<void> => {
          stopped ??= killAndWait(pid);
          return stopped;
        };
        undo.push(stopIt);
        return { pid, stop: stopIt };
      },
      importImage: async (archive) => {
        await ctr(['images', 'import', archive], 300_000);
      },
      log: (name) => {
        try {
          return readFileSync(join(dir, `${name}.log`), 'utf8');
        } catch {
          return '';
        }
      },
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

function containerdConfig(cd: string, socket: string, dir: string, pauseImage: string): string {
  const cri = 'plugins."io.containerd.grpc.v1.cri"';
  return `version = 2
root = "${join(cd, 'root')}"
state = "${join(cd, 'state')}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "${socket}"

[ttrpc]
  address = "${socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "${join(cd, 'opt')}"

[${cri}]
  sandbox_image = "${pauseImage}"
  # runc fails "can't get final child's PID" here without it.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  # Pod network namespaces under the state dir, not /run/netns.
  netns_mounts_under_state_dir = true
  [${cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [${cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [${cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "${join(cd, 'runc')}"
  [${cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${join(dir, 'cni', 'net.d')}"
  # Nothing is ever pulled from off this machine: every registry is a closed local port.
  [${cri}.registry.mirrors."docker.io"]
    endpoint = ["http://127.0.0.1:9"]
  [${cri}.registry.mirrors."registry.k8s.io"]
    endpoint = ["http://127.0.0.1:9"]
  [${cri}.registry.mirrors."k8s.gcr.io"]
    endpoint = ["http://127.0.0.1:9"]
  [${cri}.registry.mirrors."*"]
    endpoint = ["http://127.0.0.1:9"]
`;
}

type Ctr = (args: string[], timeout?: number) => Promise<{ stdout: string }>;

/** Kills and deletes every task and container of the k8s.io namespace (pods' processes, shims). */
async function removeAllTasks(ctr: Ctr): Promise<void> {
  const ids = (await ctr(['tasks', 'ls', '-q'], 30_000)).stdout.split('\n').filter(Boolean);
  await Promise.allSettled(ids.map((id) => ctr(['tasks', 'kill', '--signal', 'SIGKILL', id], 30_000)));
  for (const id of ids) {
    for (let i = 0; i < 50; i++) {
      try {
        await ctr(['tasks', 'delete', id], 30_000);
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }
  const containers = (await ctr(['containers', 'ls', '-q'], 30_000)).stdout.split('\n').filter(Boolean);
  for (const id of containers) await ctr(['containers', 'delete', id], 30_000).catch(() => {});
}

function readSysctl(key: string): string | undefined {
  try {
    return readFileSync(`/proc/sys/${key.replaceAll('.', '/')}`, 'utf8').trim();
  } catch {
    return undefined;
  }
}

function writeSysctl(key: string, value: string): void {
  writeFileSync(`/proc/sys/${key.replaceAll('.', '/')}`, value);
}

/** The shallowest missing ancestor of `path` (what mkdir -p would create), or undefined. */
function firstMissing(path: string): string | undefined {
  if (existsSync(path)) return undefined;
  const parts = path.split('/').filter(Boolean);
  for (let i = 1; i <= parts.length; i++) {
    const p = `/${parts.slice(0, i).join('/')}`;
    if (!existsSync(p)) return p;
  }
  return path;
}

/** Removes what we created: only empty directories on the way for the private mountpoints. */
function removeIfCreated(created: string, path: string): void {
  if (PRIVATE_PATHS.includes(path)) {
    // Mountpoints only: they are empty on the host (everything went into the namespace).
    for (let p = path; p.length >= created.length; p = p.slice(0, p.lastIndexOf('/'))) {
      try {
        rmdirSync(p);
      } catch {
        return;
      }
    }
    return;
  }
  // A hostPath the workload created (its socket, its journal): ours to remove whole.
  rmSync(created, { recursive: true, force: true });
}

const CGROUP_ROOT = '/sys/fs/cgroup';

function cgroupDirs(): Set<string> {
  const out = new Set<string>();
  for (const ctl of safeReaddir(CGROUP_ROOT)) {
    for (const d of safeReaddir(join(CGROUP_ROOT, ctl))) out.add(join(CGROUP_ROOT, ctl, d));
  }
  return out;
}

/** rmdir, depth first, every top-level cgroup that appeared (their processes are gone by now). */
function removeNewCgroups(before: Set<string>): void {
  const rmTree = (p: string): void => {
    for (const d of safeReaddir(p)) rmTree(join(p, d));
    try {
      rmdirSync(p);
    } catch {
      // Not a cgroup dir (a file), or still busy: left as is.
    }
  };
  for (const d of cgroupDirs()) if (!before.has(d)) rmTree(d);
}

function safeReaddir(p: string): string[] {
  try {
    return readdirSync(p, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => e.name);
  } catch {
    return [];
  }
}
