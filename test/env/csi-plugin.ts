/**
 * CSI test equipment on unix sockets, shared by the unit harness (test/unit/csi/harness.ts), the
 * benchmark and the kubelet end-to-end test:
 * - `TestPlugin`, a small CSI node plugin standing in for the driver's real one (ceph-csi) behind
 *   vmplug-csi: records every call it receives (raw bytes and metadata) and answers with
 *   `answer(path, request)`;
 * - `CallTap`, a recorder on kubelet's side of a CSI socket: every call kubelet makes, as raw
 *   bytes with the times it arrived and was answered, passed on unchanged (so a test can compare
 *   what kubelet sent with what the real plugin received, and time kubelet's calls).
 */
import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import {
  addCsiServices,
  bindUnix,
  CSI_SERVICES,
  type RawHandler,
  rawMethod,
  type UnixListener,
  Upstream,
} from '../../csi/grpc-proxy.js';
import { encode } from '../../csi/messages.js';

export interface SeenCall {
  path: string;
  request: Buffer;
  metadata: grpc.Metadata;
}

/** The test CSI node plugin: records every call and answers with `answer(path, req)`. */
export class TestPlugin {
  readonly calls: SeenCall[] = [];
  answer: (path: string, request: Buffer) => Buffer | grpc.StatusObject = (path) =>
    path.endsWith('/NodeGetCapabilities') ? capabilities([1, 2, 3]) : Buffer.alloc(0);
  readonly server = new grpc.Server();
  #listener: UnixListener | undefined;

  constructor() {
    for (const [service, methods] of Object.entries(CSI_SERVICES)) {
      const def: Record<string, grpc.MethodDefinition<Buffer, Buffer>> = {};
      const impl: grpc.UntypedServiceImplementation = {};
      for (const m of methods) {
        const path = `/${service}/${m}`;
        def[m] = rawMethod(path);
        impl[m] = (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
          this.calls.push({ path, request: Buffer.from(call.request), metadata: call.metadata });
          const a = this.answer(path, call.request);
          if (Buffer.isBuffer(a)) cb(null, a);
          else cb(a);
        };
      }
      this.server.addService(def, impl);
    }
  }

  paths(): string[] {
    return this.calls.map((c) => c.path.split('/')[2]!);
  }

  async listen(socketPath: string): Promise<void> {
    this.#listener = await bindUnix(this.server, socketPath);
  }

  /** Gone: the server stopped and its socket removed. */
  async close(): Promise<void> {
    this.server.forceShutdown();
    await this.#listener?.close();
    this.#listener = undefined;
  }
}

/** NodeGetCapabilitiesResponse with these RPC types. */
export function capabilities(types: number[]): Buffer {
  return Buffer.concat(
    types.map((t) => {
      const cap = encode('csi.v1.NodeServiceCapability', { rpc: { type: t } });
      return Buffer.concat([Buffer.from([0x0a, cap.length]), cap]);
    }),
  );
}

/** NodeGetInfoResponse naming the node (field 1, node_id); kubelet refuses a driver without one. */
export function nodeInfo(nodeId: string): Buffer {
  const id = Buffer.from(nodeId);
  return Buffer.concat([Buffer.from([0x0a, id.length]), id]);
}

export interface TappedCall {
  /** `/csi.v1.Node/NodePublishVolume` */
  path: string;
  request: Buffer;
  /** performance.now() when the call arrived and when its answer went back. */
  startedAt: number;
  endedAt?: number;
  /** gRPC status code of the answer (0 = OK). */
  code?: number;
}

/** Records every CSI call on `socket` and forwards it unchanged to `upstream`'s socket. */
export class CallTap {
  readonly calls: TappedCall[] = [];
  readonly server = new grpc.Server();
  readonly #upstream: Upstream;
  #listener: UnixListener | undefined;

  constructor(upstreamSocket: string) {
    this.#upstream = new Upstream(upstreamSocket);
    const handlers = new Map<string, RawHandler>();
    for (const [service, methods] of Object.entries(CSI_SERVICES)) {
      for (const m of methods) {
        const path = `/${service}/${m}`;
        handlers.set(path, async (request, ctx, up) => {
          const seen: TappedCall = { path, request: Buffer.from(request), startedAt: performance.now() };
          this.calls.push(seen);
          try {
            const answer = await up.call(path, request, ctx);
            seen.code = grpc.status.OK;
            return answer;
          } catch (err) {
            seen.code = (err as grpc.ServiceError).code ?? grpc.status.UNKNOWN;
            throw err;
          } finally {
            seen.endedAt = performance.now();
          }
        });
      }
    }
    addCsiServices(this.server, this.#upstream, handlers);
  }

  async listen(socketPath: string): Promise<void> {
    this.#listener = await bindUnix(this.server, socketPath);
  }

  async close(): Promise<void> {
    this.server.forceShutdown();
    this.#upstream.close();
    await this.#listener?.close();
    this.#listener = undefined;
  }
}
