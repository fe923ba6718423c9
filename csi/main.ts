// The vmplug-csi process: flags, the CSI proxy socket kubelet knows for the driver, optionally the
// kubelet registration socket, and an orderly stop on SIGTERM/SIGINT. A separate product from
// vmplugd: it talks to vmplugd only through its REST socket (pod-api.ts).
import { mkdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import { monitorsFromFile } from './ceph-clusters.js';
import { addCsiServices, bindUnix, type UnixListener, Upstream } from './grpc-proxy.js';
import { kubeGet, kubeLookup, type VolumeLookup } from './lookup.js';
import { NodeProxy } from './node.js';
import { UnixPodVolumes } from './pod-api.js';
import { addRegistrationService } from './registration.js';
import { stagedDeviceOf } from './staged-device.js';

export const HELP = `vmplug-csi: a CSI node plugin proxy in front of a driver's real node plugin.
Volumes in direct mode (StorageClass parameter vmplug.io/direct-mode, or the PVC annotation
volume.katacontainers.io/direct-mode) are served by vmplugd's pod API; all else is forwarded.

  --driver NAME             CSI driver name, e.g. rbd.csi.ceph.com (required)
  --listen PATH             socket kubelet calls (default <kubelet-root>/plugins/<driver>/csi.sock)
  --upstream PATH           the real plugin's socket, moved aside (default <dir of --listen>/upstream.sock)
  --vmplug-socket PATH      vmplugd's REST socket (default /run/vmplug/vmplug.sock)
  --registration-dir DIR    serve kubelet registration at DIR/<driver>-reg.sock (instead of the
                            node-driver-registrar sidecar), e.g. <kubelet-root>/plugins_registry
  --registration-endpoint P the CSI socket as kubelet sees it on the host (default --listen)
  --ceph-config PATH        ceph-csi config.json: clusterID -> monitors
  --kubeconfig PATH         read PVC annotations with this kubeconfig
  --in-cluster              read PVC annotations with the pod's service account
  --kubelet-root DIR        default /var/lib/kubelet
  --vmplug-timeout-ms N     bound of one vmplugd call (default 110000, under kubelet's 2 min)
  --lookup-timeout-ms N     bound of one PVC annotation lookup (default 5000)
`;

export interface MainIo {
  argv: string[];
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  version?: string;
  /** Resolves when the process should stop (default: SIGTERM or SIGINT). */
  stopSignal?: Promise<void>;
}

function positiveInt(v: string | undefined, name: string, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`--${name} must be a positive integer`);
  return n;
}

export async function main(io: MainIo): Promise<number> {
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({
      args: io.argv,
      strict: true,
      options: {
        driver: { type: 'string' },
        listen: { type: 'string' },
        upstream: { type: 'string' },
        'vmplug-socket': { type: 'string' },
        'registration-dir': { type: 'string' },
        'registration-endpoint': { type: 'string' },
        'ceph-config': { type: 'string' },
        kubeconfig: { type: 'string' },
        'in-cluster': { type: 'boolean' },
        'kubelet-root': { type: 'string' },
        'vmplug-timeout-ms': { type: 'string' },
        'lookup-timeout-ms': { type: 'string' },
        help: { type: 'boolean' },
      },
    }).values;
  } catch (err) {
    io.stderr.write(`vmplug-csi: ${(err as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (values.help) {
    io.stdout.write(HELP);
    return 0;
  }
  const str = (k: string) => values[k] as string | undefined;
  const driver = str('driver');
  if (!driver || !/^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$/.test(driver)) {
    io.stderr.write(
      `vmplug-csi: --driver must be a CSI driver name (domain notation, <= 63 chars)\n\n${HELP}`,
    );
    return 2;
  }
  const kubeletRoot = str('kubelet-root') ?? '/var/lib/kubelet';
  const listen = str('listen') ?? join(kubeletRoot, 'plugins', driver, 'csi.sock');
  const upstreamPath = str('upstream') ?? join(listen, '..', 'upstream.sock');
  if (upstreamPath === listen) {
    io.stderr.write('vmplug-csi: --upstream must differ from --listen\n');
    return 2;
  }
  let vmplugTimeoutMs: number;
  let lookupTimeoutMs: number;
  try {
    vmplugTimeoutMs = positiveInt(str('vmplug-timeout-ms'), 'vmplug-timeout-ms', 110_000);
    lookupTimeoutMs = positiveInt(str('lookup-timeout-ms'), 'lookup-timeout-ms', 5_000);
  } catch (err) {
    io.stderr.write(`vmplug-csi: ${(err as Error).message}\n`);
    return 2;
  }
  const log = pino({ name: 'vmplug-csi', base: { driver } }, pino.destination({ dest: 2, sync: true }));

  let lookup: VolumeLookup | undefined;
  const kubeconfig = str('kubeconfig');
  if (kubeconfig !== undefined || values['in-cluster']) {
    try {
      lookup = kubeLookup(await kubeGet(kubeconfig !== undefined ? { kubeconfig } : 'in-cluster'));
    } catch (err) {
      io.stderr.write(`vmplug-csi: cannot load the cluster config: ${(err as Error).message}\n`);
      return 2;
    }
  }

  const upstream = new Upstream(upstreamPath);
  const proxy = new NodeProxy({
    driver,
    pods: new UnixPodVolumes({
      socketPath: str('vmplug-socket') ?? '/run/vmplug/vmplug.sock',
      timeoutMs: vmplugTimeoutMs,
    }),
    monitorsOf: monitorsFromFile(str('ceph-config')),
    stagedDeviceOf: stagedDeviceOf(),
    makeTargetDir: async (path) => {
      await mkdir(path, { mode: 0o750, recursive: true });
    },
    lookupTimeoutMs,
    kubeletRoot,
    ...(lookup ? { lookup } : {}),
    ...(io.version ? { version: io.version } : {}),
    log: { info: (f, m) => log.info(f, m), warn: (f, m) => log.warn(f, m) },
  });
  const server = new grpc.Server();
  addCsiServices(server, upstream, proxy.handlers(), (path, err) => {
    // Codes and messages only: a request may hold secrets, and is never logged.
    const e = err as { grpcCode?: number; code?: number; message?: string };
    log.warn({ call: path, code: e.grpcCode ?? e.code, detail: e.message }, 'call failed');
  });
  const listeners: UnixListener[] = [];
  let regServer: grpc.Server | undefined;
  let regSocket: string | undefined;
  try {
    listeners.push(await bindUnix(server, listen));
    const regDir = str('registration-dir');
    if (regDir !== undefined) {
      regSocket = join(regDir, `${driver}-reg.sock`);
      regServer = new grpc.Server();
      addRegistrationService(regServer, {
        driver,
        endpoint: str('registration-endpoint') ?? listen,
        onStatus: (ok, error) =>
          ok
            ? log.info({}, 'registered with kubelet')
            : log.warn({ error }, 'kubelet refused the registration'),
      });
      listeners.push(await bindUnix(regServer, regSocket));
    }
  } catch (err) {
    io.stderr.write(`vmplug-csi: cannot listen: ${(err as Error).message}\n`);
    server.forceShutdown();
    regServer?.forceShutdown();
    for (const l of listeners) await l.close();
    upstream.close();
    return 1;
  }
  log.info({ listen, upstream: upstreamPath, registration: regSocket ?? 'sidecar' }, 'serving');

  await (io.stopSignal ??
    new Promise<void>((resolve) => {
      process.once('SIGTERM', () => resolve());
      process.once('SIGINT', () => resolve());
    }));
  log.info({ credentialsDropped: proxy.credentialsHeld }, 'stopping');
  // The registration socket goes first in kubelet's eyes: removing it deregisters the driver.
  // Each server drains its calls (5 s at most), then its socket is closed (and removed).
  const stops: [grpc.Server | undefined, UnixListener | undefined][] = [
    [regServer, listeners[1]],
    [server, listeners[0]],
  ];
  for (const [s, l] of stops) {
    if (s !== undefined) {
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => s.forceShutdown(), 5_000);
        s.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
    }
    await l?.close();
  }
  upstream.close();
  for (const p of [regSocket, listen]) if (p !== undefined) await unlink(p).catch(() => {});
  return 0;
}
