// A gRPC server that knows every CSI method by name but not the messages: requests and answers
// travel as raw bytes (identity serializers), so a call vmplug-csi does not intercept reaches the
// real plugin exactly as kubelet sent it, unknown fields included, and its answer or status comes
// back unchanged. Intercepted methods get a handler that may decode, answer itself, or forward.
import { lstat, unlink } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { AuthorityMender } from './h2-authority.js';
import { CsiError } from './status.js';

/** Every unary method of the CSI spec (v1.x), by service. kubelet calls Identity and Node. */
export const CSI_SERVICES: Readonly<Record<string, readonly string[]>> = {
  'csi.v1.Identity': ['GetPluginInfo', 'GetPluginCapabilities', 'Probe'],
  'csi.v1.Node': [
    'NodeStageVolume',
    'NodeUnstageVolume',
    'NodePublishVolume',
    'NodeUnpublishVolume',
    'NodeGetVolumeStats',
    'NodeExpandVolume',
    'NodeGetCapabilities',
    'NodeGetInfo',
  ],
  // A node socket normally serves no controller; forwarded so a plugin that does keeps doing so.
  'csi.v1.Controller': [
    'CreateVolume',
    'DeleteVolume',
    'ControllerPublishVolume',
    'ControllerUnpublishVolume',
    'ValidateVolumeCapabilities',
    'ListVolumes',
    'GetCapacity',
    'ControllerGetCapabilities',
    'CreateSnapshot',
    'DeleteSnapshot',
    'ListSnapshots',
    'ControllerExpandVolume',
    'ControllerGetVolume',
    'ControllerModifyVolume',
  ],
  'csi.v1.GroupController': [
    'GroupControllerGetCapabilities',
    'CreateVolumeGroupSnapshot',
    'DeleteVolumeGroupSnapshot',
    'GetVolumeGroupSnapshot',
  ],
};

export interface CallContext {
  /** kubelet's request metadata, forwarded upstream minus transport headers. */
  readonly metadata: grpc.Metadata;
  readonly deadline: grpc.Deadline;
}

/** A handler answers with the raw response bytes, or throws a CsiError or an upstream ServiceError. */
export type RawHandler = (request: Buffer, ctx: CallContext, upstream: Upstream) => Promise<Buffer>;

const identity = (b: Buffer): Buffer => b;

/** A unary method whose messages stay raw bytes on both sides. */
export function rawMethod(path: string): grpc.MethodDefinition<Buffer, Buffer> {
  return {
    path,
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  };
}

/** The real node plugin, moved aside to its own socket. */
export class Upstream {
  readonly #client: grpc.Client;

  constructor(readonly socketPath: string) {
    this.#client = new grpc.Client(`unix:${socketPath}`, grpc.credentials.createInsecure());
  }

  /** Forwards one unary call. `path` is `/csi.v1.Node/NodePublishVolume`. */
  call(path: string, request: Buffer, ctx: CallContext): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.#client.makeUnaryRequest(
        path,
        identity,
        identity,
        request,
        forwardable(ctx.metadata),
        { deadline: ctx.deadline },
        (err, answer) => (err ? reject(err) : resolve(answer ?? Buffer.alloc(0))),
      );
    });
  }

  close(): void {
    this.#client.close();
  }
}

/** Headers the transport sets itself: never copied from kubelet's call to ours. */
const TRANSPORT_KEYS = new Set(['user-agent', 'content-type', 'te', 'host', 'grpc-timeout', 'grpc-encoding']);

function forwardable(md: grpc.Metadata): grpc.Metadata {
  const out = new grpc.Metadata();
  for (const key of Object.keys(md.getMap())) {
    if (TRANSPORT_KEYS.has(key) || key.startsWith(':') || key.startsWith('grpc-')) continue;
    for (const v of md.get(key)) out.add(key, v);
  }
  return out;
}

function toServiceError(err: unknown): Partial<grpc.StatusObject> {
  if (err instanceof CsiError) return { code: err.grpcCode, details: err.message };
  const e = err as Partial<grpc.ServiceError>;
  if (typeof e?.code === 'number') {
    const out: Partial<grpc.StatusObject> = { code: e.code, details: e.details ?? '' };
    if (e.metadata !== undefined) out.metadata = e.metadata;
    return out;
  }
  // A bug of ours: say so without echoing anything of the request (it may carry secrets).
  return { code: grpc.status.INTERNAL, details: `vmplug-csi: ${(err as Error)?.name ?? 'error'}` };
}

/**
 * Registers every CSI method on `server`: `handlers` (keyed by full path) for the intercepted
 * ones, a byte-for-byte forward to `upstream` for the rest.
 */
export function addCsiServices(
  server: grpc.Server,
  upstream: Upstream,
  handlers: ReadonlyMap<string, RawHandler>,
  onError: (path: string, err: unknown) => void = () => {},
): void {
  for (const [service, methods] of Object.entries(CSI_SERVICES)) {
    const definition: Record<string, grpc.MethodDefinition<Buffer, Buffer>> = {};
    const implementation: grpc.UntypedServiceImplementation = {};
    for (const method of methods) {
      const path = `/${service}/${method}`;
      definition[method] = rawMethod(path);
      const handler: RawHandler = handlers.get(path) ?? ((req, ctx, up) => up.call(path, req, ctx));
      implementation[method] = (
        call: grpc.ServerUnaryCall<Buffer, Buffer>,
        callback: grpc.sendUnaryData<Buffer>,
      ) => {
        const ctx: CallContext = { metadata: call.metadata, deadline: call.getDeadline() };
        handler(call.request, ctx, upstream).then(
          (answer) => callback(null, answer),
          (err: unknown) => {
            onError(path, err);
            callback(toServiceError(err));
          },
        );
      };
    }
    server.addService(definition, implementation);
  }
}

/** A unix socket a gRPC server is served on; `close` stops accepting and removes the socket. */
export interface UnixListener {
  close(): Promise<void>;
}

/**
 * Serves `server` on a unix socket, replacing a stale socket file (never any other kind of file).
 * Connections are accepted here and handed to the server with their `:authority` mended
 * (h2-authority.ts): kubelets before 1.26 send the socket's path there, which Node's HTTP/2
 * server refuses. Stop the server (tryShutdown / forceShutdown) first, then `close`.
 */
export async function bindUnix(server: grpc.Server, socketPath: string): Promise<UnixListener> {
  const st = await lstat(socketPath).catch(() => undefined);
  if (st?.isSocket()) await unlink(socketPath);
  else if (st !== undefined) throw new Error(`${socketPath} exists and is not a socket`);
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const listener = createServer((socket) => injector.injectConnection(mendedConnection(socket)));
  await new Promise<void>((resolve, reject) => {
    listener.once('error', reject);
    listener.listen(socketPath, () => {
      listener.off('error', reject);
      resolve();
    });
  });
  return {
    close: () =>
      new Promise<void>((resolve) => {
        injector.destroy();
        listener.close(() => resolve());
      }),
  };
}

/** The connection as the HTTP/2 server sees it: the client's bytes through an AuthorityMender. */
function mendedConnection(socket: Socket): Duplex {
  const mender = new AuthorityMender();
  const conn = new Duplex({
    read() {
      socket.resume();
    },
    write(chunk: Buffer, _encoding, callback) {
      socket.write(chunk, callback);
    },
    final(callback) {
      socket.end(callback);
    },
    destroy(err, callback) {
      socket.destroy(err ?? undefined);
      callback(err);
    },
  });
  socket.on('data', (chunk: Buffer) => {
    let more = true;
    for (const part of mender.push(chunk)) more = conn.push(part) && more;
    if (!more) socket.pause();
  });
  socket.on('end', () => conn.push(null));
  socket.on('error', (err) => conn.destroy(err));
  socket.on('close', () => conn.destroy());
  return conn;
}
