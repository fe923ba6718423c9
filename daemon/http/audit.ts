import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { loadPeerCredentials, type PeerCredentials, type PeerCredentialsReader } from './peer-credentials.js';

// The audit trail: every mutating request (PUT, POST, PATCH, DELETE) is logged, when it arrives,
// with the peer credentials of the unix-socket caller, so a disk or NIC given to a guest can be
// traced to the uid and process that asked. The credentials are read once per connection (the
// kernel fixed them at connect()); fastify's own "request completed" line, under the same request
// id, carries the outcome. Reads (GET, HEAD) are not audited.

const MUTATING = new Set(['PUT', 'POST', 'PATCH', 'DELETE']);

export interface AuditOptions {
  /** Undefined: the addon is missing; audit lines then carry `peer: null` and the reason. */
  read?: PeerCredentialsReader;
  missing?: string;
}

/** The audit options from the addon, when it is built. */
export function auditFromAddon(): AuditOptions {
  const loaded = loadPeerCredentials();
  return 'read' in loaded ? { read: loaded.read } : { missing: loaded.missing };
}

/** What the audit hook reads of a request (any fastify request fits). */
export interface AuditedRequest {
  method: string;
  url: string;
  raw: IncomingMessage;
  log: { info(obj: Record<string, unknown>, msg: string): void };
}

/** A connection listener for the http server and an onRequest hook for fastify. */
export function auditHooks(opts: AuditOptions): {
  onConnection(socket: Socket): void;
  onRequest(request: AuditedRequest): Promise<void>;
} {
  const peers = new WeakMap<Socket, PeerCredentials | { error: string }>();
  const read = opts.read;
  return {
    onConnection(socket) {
      if (read !== undefined) peers.set(socket, read(socket));
    },
    async onRequest(request) {
      if (!MUTATING.has(request.method)) return;
      const got = peers.get(request.raw.socket as Socket);
      const peer = got !== undefined && !('error' in got) ? got : null;
      const why =
        got === undefined
          ? (opts.missing ?? 'no credentials for this connection')
          : 'error' in got
            ? got.error
            : undefined;
      request.log.info(
        {
          audit: true,
          method: request.method,
          url: request.url,
          peer,
          ...(why !== undefined ? { peerError: why } : {}),
        },
        'audit: mutating request',
      );
    },
  };
}
