/**
 * A real kube-apiserver with its own etcd on loopback, for the reporter's integration tests.
 * The binary is built from Debian's `kubernetes` source package by test/env/build-kube-apiserver
 * (cached outside the checkout); each test file starts its own pair in a temp dir and stops it.
 */
import { execFile, spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { kubeconfigYaml, makeCredentials } from './kube/certs.js';
import { repoRoot } from './paths.js';

const run = promisify(execFile);

export class KubeEnvError extends Error {
  override readonly name = 'KubeEnvError';
  constructor(
    readonly code:
      | 'KUBE_NO_APISERVER'
      | 'KUBE_SPAWN'
      | 'KUBE_NOT_READY'
      | 'KUBE_DIED'
      | 'KUBE_NO_PORT'
      | 'KUBE_STOPPED',
    message: string,
  ) {
    super(message);
  }
}

export interface KubeApiserverOptions {
  /** Parent of the temp dir holding etcd's data, certificates, logs. Default: the OS temp dir. */
  dir?: string;
  /** How long to wait for etcd and for /readyz. Generous: the machine is shared. */
  readyTimeoutMs?: number;
}

export interface KubeApiserver {
  /** https://127.0.0.1:<port> */
  readonly url: string;
  readonly port: number;
  /** CA of the serving certificate (TLS is verified, never skipped). */
  readonly caFile: string;
  /** Bearer token of a cluster-admin user (group system:masters). */
  readonly token: string;
  /** A kubeconfig file with that token user, for clients that read kubeconfigs. */
  readonly kubeconfigPath: string;
  /** The temp dir with etcd data, certificates and the two processes' logs. */
  readonly dir: string;
  /** Milliseconds from spawning kube-apiserver to /readyz answering ok, for the last start. */
  readonly lastStartMs: number;
  /** Kills the apiserver only (etcd and its data stay), e.g. to test an outage. */
  stopApiserver(): Promise<void>;
  /** Starts the apiserver again on the same port and etcd, waiting for /readyz. */
  startApiserver(): Promise<void>;
  /** stopApiserver + startApiserver. */
  restartApiserver(): Promise<void>;
  /** Kills both processes and removes the temp dir. Safe to call twice. */
  stop(): Promise<void>;
}

/** Path of the cached kube-apiserver binary, building it on first use (about 5 min cold). */
export async function kubeApiserverBinary(signal?: AbortSignal): Promise<string> {
  const fromEnv = process.env.VMPLUG_KUBE_APISERVER;
  if (fromEnv) return fromEnv;
  try {
    const { stdout } = await run(join(repoRoot, 'test', 'env', 'build-kube-apiserver'), [], {
      timeout: 30 * 60_000,
      maxBuffer: 16 * 1024 * 1024,
      ...(signal ? { signal } : {}),
    });
    const last = stdout.trim().split('\n').pop();
    if (!last) throw new Error('no path printed');
    return last;
  } catch (err) {
    throw new KubeEnvError(
      'KUBE_NO_APISERVER',
      `test/env/build-kube-apiserver failed (run test/env/setup): ${(err as Error).message}`,
    );
  }
}

export async function startKubeApiserver(opts: KubeApiserverOptions = {}): Promise<KubeApiserver> {
  const readyTimeoutMs = opts.readyTimeoutMs ?? 120_000;
  const binary = await kubeApiserverBinary();
  const dir = mkdtempSync(join(opts.dir ?? tmpdir(), 'vmplug-kube-'));
  const children = new Set<number>();
  const killAllSync = (): void => {
    for (const pid of children) killGroup(pid, 'SIGKILL');
    children.clear();
  };
  // The runner may exit without calling stop() (a crash in a hook): pdeathsig covers a dying
  // runner, this covers an exiting one.
  process.on('exit', killAllSync);

  let apiserverPid: number | undefined;
  let lastStartMs = 0;
  let stopped = false;
  try {
    const setup = AbortSignal.timeout(60_000);
    const creds = await makeCredentials(dir, setup);
    const [etcdClient, etcdPeer, port] = await distinctFreePorts();
    const url = `https://127.0.0.1:${port}`;
    const kubeconfigPath = join(dir, 'kubeconfig');
    writeFileSync(kubeconfigPath, kubeconfigYaml(url, creds.caFile, creds.token), { mode: 0o600 });

    const etcdUrl = `http://127.0.0.1:${etcdClient}`;
    const peerUrl = `http://127.0.0.1:${etcdPeer}`;
    const etcdPid = spawnLogged(dir, 'etcd', 'etcd', [
      '--name=vmplug-test',
      `--data-dir=${join(dir, 'etcd')}`,
      `--listen-client-urls=${etcdUrl}`,
      `--advertise-client-urls=${etcdUrl}`,
      `--listen-peer-urls=${peerUrl}`,
      `--initial-advertise-peer-urls=${peerUrl}`,
      `--initial-cluster=vmplug-test=${peerUrl}`,
      '--log-level=warn',
      '--logger=zap',
    ]);
    children.add(etcdPid);
    await waitFor(
      'etcd',
      readyTimeoutMs,
      etcdPid,
      join(dir, 'etcd.log'),
      async (signal) => (await httpGetStatus(`${etcdUrl}/health`, signal)) === 200,
    );

    const apiserverArgs = [
      `--etcd-servers=${etcdUrl}`,
      '--bind-address=127.0.0.1',
      '--advertise-address=127.0.0.1',
      `--secure-port=${port}`,
      // 1.20 still opens an unauthenticated port on 8080 by default; tests sharing the machine
      // would fight over it.
      '--insecure-port=0',
      `--cert-dir=${join(dir, 'apiserver-certs')}`,
      `--tls-cert-file=${creds.certFile}`,
      `--tls-private-key-file=${creds.keyFile}`,
      `--token-auth-file=${creds.tokenFile}`,
      '--authorization-mode=RBAC',
      '--service-account-issuer=https://kubernetes.default.svc',
      `--service-account-key-file=${creds.serviceAccountKeyFile}`,
      `--service-account-signing-key-file=${creds.serviceAccountKeyFile}`,
      '--service-cluster-ip-range=10.96.0.0/16',
      // As on kubeadm clusters; the default (false) refuses any privileged pod template.
      '--allow-privileged=true',
      // Logs and exec go to a kubelet's InternalIP: by its name, the apiserver would ask DNS,
      // and no test traffic may leave this machine.
      '--kubelet-preferred-address-types=InternalIP',
      '--v=1',
    ];
    const startApiserver = async (): Promise<void> => {
      if (stopped) throw new KubeEnvError('KUBE_STOPPED', 'the test apiserver was stopped');
      if (apiserverPid !== undefined) return;
      const t0 = performance.now();
      const pid = spawnLogged(dir, 'kube-apiserver', binary, apiserverArgs);
      children.add(pid);
      apiserverPid = pid;
      await waitFor(
        'kube-apiserver',
        readyTimeoutMs,
        pid,
        join(dir, 'kube-apiserver.log'),
        // /readyz can answer before the bootstrap controller has created the `default` namespace
        // (seen on a loaded machine): tests that use it right away would get a 404.
        async (signal) =>
          (await httpGetStatus(`${url}/readyz`, signal, creds)) === 200 &&
          (await httpGetStatus(`${url}/api/v1/namespaces/default`, signal, creds)) === 200,
      );
      lastStartMs = performance.now() - t0;
    };
    const stopApiserver = async (): Promise<void> => {
      const pid = apiserverPid;
      if (pid === undefined) return;
      apiserverPid = undefined;
      children.delete(pid);
      await killAndWait(pid);
    };

    await startApiserver();
    return {
      url,
      port,
      caFile: creds.caFile,
      token: creds.token,
      kubeconfigPath,
      dir,
      get lastStartMs() {
        return lastStartMs;
      },
      stopApiserver,
      startApiserver,
      restartApiserver: async () => {
        await stopApiserver();
        await startApiserver();
      },
      stop: async () => {
        if (stopped) return;
        stopped = true;
        const pids = [...children];
        children.clear();
        apiserverPid = undefined;
        await Promise.all(pids.map((pid) => killAndWait(pid)));
        process.off('exit', killAllSync);
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    killAllSync();
    process.off('exit', killAllSync);
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/** Spawns a child in its own process group, tied to the runner's life, logging to <dir>/<name>.log. */
export function spawnLogged(dir: string, name: string, file: string, args: string[]): number {
  const out = openSync(join(dir, `${name}.log`), 'a', 0o600);
  try {
    const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', file, ...args], {
      cwd: dir,
      detached: true,
      stdio: ['ignore', out, out],
    });
    child.on('error', () => {
      // Seen by the readiness wait (the process is not alive).
    });
    child.unref();
    if (child.pid === undefined) throw new KubeEnvError('KUBE_SPAWN', `could not start ${name}`);
    return child.pid;
  } finally {
    closeSync(out);
  }
}

export function killGroup(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pid, sig);
  } catch {
    // Gone already.
  }
}

export function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** SIGTERM, then SIGKILL after 5 s; resolves once the process is gone. */
export async function killAndWait(pid: number): Promise<void> {
  killGroup(pid, 'SIGTERM');
  const t0 = Date.now();
  while (alive(pid)) {
    if (Date.now() - t0 > 5_000) killGroup(pid, 'SIGKILL');
    if (Date.now() - t0 > 30_000) throw new KubeEnvError('KUBE_DIED', `process ${pid} does not die`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export async function waitFor(
  what: string,
  timeoutMs: number,
  pid: number,
  logPath: string,
  ready: (signal: AbortSignal) => Promise<boolean>,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (!alive(pid)) {
      throw new KubeEnvError('KUBE_DIED', `${what} exited during start-up:\n${logTail(logPath)}`);
    }
    try {
      if (await ready(AbortSignal.timeout(2_000))) return;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      throw new KubeEnvError(
        'KUBE_NOT_READY',
        `${what} not ready after ${timeoutMs} ms:\n${logTail(logPath)}`,
      );
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

function logTail(path: string): string {
  try {
    return readFileSync(path, 'utf8').split('\n').slice(-20).join('\n');
  } catch {
    return '(no log)';
  }
}

/** GET returning the status code; https with our CA and token, or plain http (etcd). */
async function httpGetStatus(
  url: string,
  signal: AbortSignal,
  tls?: { caFile: string; token: string },
): Promise<number> {
  if (!tls) {
    const res = await fetch(url, { signal });
    await res.arrayBuffer();
    return res.status;
  }
  const ca = readFileSync(tls.caFile);
  return new Promise((resolve, reject) => {
    const req = request(url, { ca, signal, headers: { authorization: `Bearer ${tls.token}` } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => {
      const addr = srv.address();
      srv.close(() => {
        if (addr && typeof addr === 'object') resolve(addr.port);
        else reject(new KubeEnvError('KUBE_NO_PORT', 'could not pick a free port'));
      });
    });
  });
}

async function distinctFreePorts(): Promise<[number, number, number]> {
  const ports = new Set<number>();
  while (ports.size < 3) ports.add(await freePort());
  const [a, b, c] = [...ports] as [number, number, number];
  return [a, b, c];
}
