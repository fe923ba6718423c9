// A real vmplug-csi between a real gRPC client (kubelet's role) and a small test CSI node plugin
// (the real plugin's role), all on temp unix sockets, with a fake vmplugd pod API (an HTTP server
// on a temp unix socket) behind the direct-mode volumes.
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import {
  addCsiServices,
  bindUnix,
  CSI_SERVICES,
  type UnixListener,
  Upstream,
} from '../../../csi/grpc-proxy.js';
import type { VolumeLookup } from '../../../csi/lookup.js';
import { NodeProxy, type NodeProxyOptions } from '../../../csi/node.js';
import { UnixPodVolumes } from '../../../csi/pod-api.js';
import { TestPlugin } from '../../env/csi-plugin.js';

const identity = (b: Buffer): Buffer => b;

export { capabilities, type SeenCall, TestPlugin } from '../../env/csi-plugin.js';

export interface ApiCall {
  method: string;
  url: string;
  body: unknown;
}

/** The fake vmplugd: records calls; `respond` decides status and body. */
export class FakeVmplugd {
  readonly calls: ApiCall[] = [];
  respond: (call: ApiCall) => { status: number; body?: unknown } = (c) =>
    c.method === 'PUT'
      ? { status: 201, body: { state: 'Published' } }
      : c.method === 'DELETE'
        ? { status: 204 }
        : { status: 404, body: { code: 'NOT_FOUND', detail: 'volume not found', status: 404 } };
  readonly server: Server = createServer((req, res) => {
    void readBody(req).then((text) => {
      const call = {
        method: req.method ?? '',
        url: req.url ?? '',
        body: text ? JSON.parse(text) : undefined,
      };
      this.calls.push(call);
      const out = this.respond(call);
      const type = out.status >= 400 ? 'application/problem+json' : 'application/json';
      res.writeHead(out.status, out.body === undefined ? {} : { 'content-type': type });
      res.end(out.body === undefined ? undefined : JSON.stringify(out.body));
    });
  });
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

export interface Bed {
  dir: string;
  plugin: TestPlugin;
  vmplugd: FakeVmplugd;
  proxy: NodeProxy;
  /** Target directories vmplug-csi created (a fake: unit tests never touch /var/lib/kubelet). */
  madeDirs: string[];
  /** Calls vmplug-csi as kubelet does: raw bytes in, raw bytes out. */
  call(method: string, request: Buffer, metadata?: grpc.Metadata): Promise<Buffer>;
  /** A fresh vmplug-csi on the same sockets (a restart: memory lost). */
  restart(): Promise<void>;
  close(): Promise<void>;
}

export const KUBELET = '/var/lib/kubelet';
export const POD_UID = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';
export const targetPath = (pv: string, uid = POD_UID) =>
  `${KUBELET}/pods/${uid}/volumes/kubernetes.io~csi/${pv}/mount`;

export async function startBed(
  opts: Partial<Pick<NodeProxyOptions, 'lookup' | 'monitorsOf' | 'stagedDeviceOf' | 'version'>> & {
    lookup?: VolumeLookup;
  } = {},
): Promise<Bed> {
  const dir = await mkdtemp(join(tmpdir(), 'vmplug-csi-'));
  const plugin = new TestPlugin();
  await plugin.listen(join(dir, 'upstream.sock'));
  const vmplugd = new FakeVmplugd();
  await new Promise<void>((resolve) => vmplugd.server.listen(join(dir, 'vmplug.sock'), resolve));

  const madeDirs: string[] = [];
  let server: grpc.Server;
  let listener: UnixListener | undefined;
  let upstream: Upstream;
  let proxy!: NodeProxy;
  const start = async () => {
    upstream = new Upstream(join(dir, 'upstream.sock'));
    proxy = new NodeProxy({
      driver: 'rbd.csi.ceph.com',
      pods: new UnixPodVolumes({ socketPath: join(dir, 'vmplug.sock'), timeoutMs: 5_000 }),
      monitorsOf: opts.monitorsOf ?? (async (id) => (id === 'ceph1' ? ['127.0.0.1:6789'] : undefined)),
      stagedDeviceOf: opts.stagedDeviceOf ?? (async () => '/dev/rbd7'),
      makeTargetDir: async (path) => {
        madeDirs.push(path);
      },
      kubeletRoot: KUBELET,
      ...(opts.lookup ? { lookup: opts.lookup } : {}),
      ...(opts.version ? { version: opts.version } : {}),
    });
    server = new grpc.Server();
    addCsiServices(server, upstream, proxy.handlers());
    listener = await bindUnix(server, join(dir, 'csi.sock'));
  };
  const stop = async () => {
    server.forceShutdown();
    upstream.close();
    await listener?.close();
  };
  await start();
  const client = new grpc.Client(`unix:${join(dir, 'csi.sock')}`, grpc.credentials.createInsecure());
  const bed: Bed = {
    dir,
    plugin,
    vmplugd,
    madeDirs,
    get proxy() {
      return proxy;
    },
    call: (method, request, metadata = new grpc.Metadata()) =>
      new Promise((resolve, reject) => {
        const service = Object.entries(CSI_SERVICES).find(([, ms]) => ms.includes(method))![0];
        client.makeUnaryRequest(
          `/${service}/${method}`,
          identity,
          identity,
          request,
          metadata,
          { deadline: Date.now() + 8_000 },
          (err, res) => (err ? reject(err) : resolve(res!)),
        );
      }),
    restart: async () => {
      await stop();
      await start();
    },
    close: async () => {
      client.close();
      await stop();
      await plugin.close();
      await new Promise((r) => vmplugd.server.close(r));
      await rm(dir, { recursive: true, force: true });
    },
  };
  return bed;
}
