import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import swagger from '@fastify/swagger';
import Fastify, { type FastifyError, type FastifyReply, type FastifyRequest } from 'fastify';
import {
  attachmentSchema,
  nicSchema,
  podVolumeListSchema,
  podVolumeSchema,
  problemSchema,
  sandboxListSchema,
  sandboxSchema,
} from '../../api/index.js';
import { VmplugError } from '../../core/errors.js';
import { isSandboxId } from '../../core/ids.js';
import type { ReadinessProbe } from '../../core/readiness.js';
import { emptyCatalog, type SandboxCatalog } from '../../core/sandbox.js';
import type { NicService } from '../../net/index.js';
import type { AttachService, ListVolumes } from '../../storage/attach-service.js';
import { DEFAULT_KUBELET_ROOT } from '../../storage/pod/spec.js';
import type { Logger } from '../logger.js';
import type { ResourceService } from '../resize/service.js';
import { type AuditOptions, auditFromAddon, auditHooks } from './audit.js';
import { handleClientError } from './client-error.js';
import { DEFAULT_DISCARD_LIMITS, type DiscardLimits, discardBody } from './discard-body.js';
import {
  fieldOfSchemaIssue,
  PROBLEM_CONTENT_TYPE,
  type ProblemDetails,
  problem,
  problemOf,
  type SchemaIssue,
  schemaIssueMessage,
} from './problem.js';
import { healthRoutes } from './routes/health.js';
import { nicRoutes, unavailableNicService } from './routes/nics.js';
import { type NodeRoutesOptions, nodeRoutes } from './routes/node.js';
import { type PodService, podRoutes, unavailablePodService } from './routes/pods.js';
import { resourceRoutes } from './routes/resources.js';
import { type ListNics, sandboxRoutes } from './routes/sandboxes.js';
import { volumeRoutes } from './routes/volumes.js';

export interface ServerDeps {
  logger: Logger;
  attachService: AttachService;
  readiness: ReadinessProbe;
  /** The node's sandboxes (discovery); none when absent. */
  catalog?: SandboxCatalog;
  /** The engine's volumes of a sandbox; none when absent. */
  listVolumes?: ListVolumes;
  /** Guest hot-resize (vCPUs, memory); 503 NOT_READY when absent. */
  resources?: ResourceService;
  /** NIC hot-plug (net/); 503 NOT_READY when absent, and sandboxes show no NICs. */
  nics?: NicService;
  /** Pod volumes (DESIGN §5b); 503 NOT_READY when absent. */
  pods?: { service: PodService; kubeletRoot: string };
  /** GET /v1/node; 503 when absent. */
  nodeFacts?: NodeRoutesOptions['facts'];
  /** GET /metrics; 503 when absent. */
  metrics?: NodeRoutesOptions['metrics'];
  /** Aborted when the daemon stops waiting for in-flight operations (handed to the engine). */
  shutdownSignal?: AbortSignal;
  /** Largest accepted request body; an attach body is well under 4 KiB. */
  bodyLimit?: number;
  /** How much of an oversized body is read and discarded before the 413 goes out. */
  discardLimits?: DiscardLimits;
  /** Shown in the OpenAPI document. */
  version?: string;
  /** Peer credentials for the audit lines; default: the peer-credentials addon (audit.ts). */
  audit?: AuditOptions;
}

export const DEFAULT_BODY_LIMIT = 64 * 1024;

// A client-chosen request id is kept only when it cannot break a log line or a header.
const REQUEST_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

export function requestIdFor(req: IncomingMessage): string {
  const given = req.headers['x-request-id'];
  return typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
}

/** The REST server's type: fastify with vmplug's pino logger. */
export type VmplugServer = Awaited<ReturnType<typeof buildServer>>;

/** The daemon's REST API as a fastify instance, not yet listening (see unix-socket.ts). */
export async function buildServer(deps: ServerDeps) {
  const bodyLimit = deps.bodyLimit ?? DEFAULT_BODY_LIMIT;
  const app = Fastify({
    loggerInstance: deps.logger,
    genReqId: requestIdFor,
    requestIdHeader: false,
    bodyLimit,
    clientErrorHandler: handleClientError,
    // Answered with problem+json by the onRequest hook below instead of fastify's plain JSON.
    return503OnClosing: false,
    // Path parameters are ids of at most 128 characters; anything longer (or a malformed URL) is
    // answered here as problem+json, before the router would send its own plain-JSON 414/400.
    frameworkErrors: (err, request, reply) => {
      const tooLong = err.code === 'FST_ERR_MAX_PARAM_LENGTH';
      const p = problem(
        'INVALID_REQUEST',
        tooLong ? 'a path parameter is longer than any valid id' : 'the request URL is malformed',
      );
      p.requestId = request.id;
      request.log.info({ status: 400, code: p.code, router: err.code }, `request refused: ${p.detail}`);
      // The option's reply type is generic over schemas this hook never sees.
      return (reply as FastifyReply).code(400).type(PROBLEM_CONTENT_TYPE).send(p);
    },
    ajv: {
      // Reject, never rewrite: a typo such as `readonly` must not be dropped silently, and a
      // string must not become a number.
      customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false, allErrors: false },
    },
  });

  // Only JSON is spoken; anything else is a 415 rather than a string body.
  app.removeContentTypeParser('text/plain');

  // First hook: every mutating request is audited with its caller's uid/gid/pid, refused or not.
  const audit = deps.audit ?? auditFromAddon();
  if (audit.missing !== undefined) {
    deps.logger.warn({ reason: audit.missing }, 'audit lines will carry no peer credentials');
  }
  const hooks = auditHooks(audit);
  app.server.on('connection', hooks.onConnection);
  app.addHook('onRequest', hooks.onRequest);

  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });

  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id);
    if (closing) {
      reply.header('connection', 'close');
      throw new VmplugError('SHUTTING_DOWN', 'vmplugd is shutting down; retry against the restarted daemon');
    }
  });

  app.setErrorHandler(async (err, request, reply) => {
    const p = problemFor(err as FastifyError, request, bodyLimit);
    // The client may still be sending the body: read it to its end first, or closing the
    // connection resets it and the client never reads the 413 (see discard-body.ts).
    if (p.status === 413) {
      const outcome = await discardBody(request.raw, deps.discardLimits ?? DEFAULT_DISCARD_LIMITS);
      if (outcome !== 'drained') request.log.info({ outcome }, 'oversized body not read to its end');
    }
    p.requestId = request.id;
    if (!(err instanceof VmplugError) && p.status >= 500) request.log.error({ err }, 'request failed');
    else if (p.status >= 500)
      request.log.warn({ status: p.status, code: p.code }, `request failed: ${p.detail}`);
    else request.log.info({ status: p.status, code: p.code, field: p.field }, `request refused: ${p.detail}`);
    return reply.code(p.status).type(PROBLEM_CONTENT_TYPE).send(p);
  });

  app.setNotFoundHandler((request, reply) => {
    const p = problem('ROUTE_NOT_FOUND', `no route ${request.method} ${clip(request.url, 200)}`);
    p.requestId = request.id;
    return reply.code(404).type(PROBLEM_CONTENT_TYPE).send(p);
  });

  await app.register(swagger, {
    // Components named after their $id (Problem, Attachment) rather than def-0, def-1.
    refResolver: {
      buildLocalReference: (json, _base, _fragment, i) =>
        typeof json.$id === 'string' ? json.$id : `def-${i}`,
    },
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'vmplug',
        description:
          'vmplugd REST API, served on a local unix socket (default /run/vmplug/vmplug.sock). Errors are application/problem+json.',
        version: deps.version ?? '0.0.0',
      },
      tags: [
        { name: 'sandboxes', description: 'the VM sandboxes on this node' },
        { name: 'volumes', description: 'hot-attach and detach of volumes' },
        { name: 'nics', description: 'hot-plug and unplug of virtio-net NICs' },
        { name: 'pods', description: "volumes published for Kata pods through Kata's direct-volume records" },
        { name: 'node', description: 'facts about this node' },
        { name: 'health', description: 'liveness, readiness and metrics' },
      ],
    },
  });
  app.addSchema(problemSchema);
  app.addSchema(attachmentSchema);
  app.addSchema(nicSchema);
  app.addSchema(sandboxSchema);
  app.addSchema(sandboxListSchema);
  app.addSchema(podVolumeSchema);
  app.addSchema(podVolumeListSchema);

  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  await app.register(healthRoutes, { readiness: deps.readiness });
  await app.register(nodeRoutes, {
    ...(deps.nodeFacts !== undefined ? { facts: deps.nodeFacts } : {}),
    ...(deps.metrics !== undefined ? { metrics: deps.metrics } : {}),
  });
  await app.register(sandboxRoutes, {
    catalog: deps.catalog ?? emptyCatalog,
    listVolumes: deps.listVolumes ?? (async () => []),
    ...(deps.nics !== undefined ? { listNics: listNicsOf(deps.nics) } : {}),
    shutdownSignal: deps.shutdownSignal ?? new AbortController().signal,
  });
  await app.register(resourceRoutes, {
    service: deps.resources ?? unavailableResources,
    shutdownSignal: deps.shutdownSignal ?? new AbortController().signal,
  });
  await app.register(nicRoutes, {
    service: deps.nics ?? unavailableNicService,
    shutdownSignal: deps.shutdownSignal ?? new AbortController().signal,
  });
  await app.register(podRoutes, {
    service: deps.pods?.service ?? unavailablePodService,
    kubeletRoot: deps.pods?.kubeletRoot ?? DEFAULT_KUBELET_ROOT,
    shutdownSignal: deps.shutdownSignal ?? new AbortController().signal,
  });
  await app.register(volumeRoutes, {
    service: deps.attachService,
    shutdownSignal: deps.shutdownSignal ?? new AbortController().signal,
  });
  return app;
}

function problemFor(err: FastifyError, request: FastifyRequest, bodyLimit: number): ProblemDetails {
  if (err instanceof VmplugError) return problemOf(err);
  if (Array.isArray(err.validation) && err.validation.length > 0) {
    const issue = err.validation[0] as SchemaIssue;
    const field = fieldOfSchemaIssue(issue, err.validationContext);
    return problem('INVALID_REQUEST', `${field}: ${schemaIssueMessage(issue)}`, { field });
  }
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return problem('BODY_TOO_LARGE', `the request body exceeds ${bodyLimit} bytes`);
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return problem('UNSUPPORTED_MEDIA_TYPE', 'send the body as application/json');
    // Never the parser's message: it may quote the body, and the body may hold a key.
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return problem('INVALID_JSON', 'the body is not valid JSON');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return problem('INVALID_JSON', 'the body is empty');
  }
  const status = err.statusCode;
  if (typeof status === 'number' && status >= 400 && status < 500) {
    // Fastify's own client errors (bad URL, content length mismatch, proto poisoning): its
    // messages are fixed strings that never quote the body.
    const own = typeof err.code === 'string' && err.code.startsWith('FST_');
    return problem('INVALID_REQUEST', own ? err.message : 'the request was refused', { status });
  }
  return problem('INTERNAL', `internal error; the daemon log has the details under request id ${request.id}`);
}

const unavailableResources: ResourceService = {
  get: async () => {
    throw new VmplugError('NOT_READY', 'guest resize is not available in this daemon');
  },
  resize: async () => {
    throw new VmplugError('NOT_READY', 'guest resize is not available in this daemon');
  },
};

/** A sandbox's NICs for its view; libvirt domains and ids net/ refuses simply have none. */
function listNicsOf(nics: NicService): ListNics {
  return async (sandboxId) => (isSandboxId(sandboxId) ? nics.list(sandboxId) : []);
}

function clip(s: string, max: number): string {
  return s.length > max ? `${s.slice(0, max)}…` : s;
}
