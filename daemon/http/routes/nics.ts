import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import { nicBodySchema, nicParamsSchema, problemResponses } from '../../../api/index.js';
import { VmplugError } from '../../../core/errors.js';
import { parseNicId } from '../../../core/ids.js';
import { type NicContext, type NicService, parseNicSpec } from '../../../net/index.js';
import { childIds, operationContext, putAnswer, schemaLeftover, validatedRoute } from './request.js';

// PUT / GET / DELETE /v1/sandboxes/{sandboxId}/nics/{nicId}: NIC hot-plug. As with volumes, ids
// and the body are checked by net/'s parsers first (INVALID_ID 400, INVALID_FIELD 422 naming the
// field), so the schemas below describe and never refuse more than those parsers.

const unavailable = async (): Promise<never> => {
  throw new VmplugError('NOT_READY', 'NIC hot-plug is not available in this daemon');
};

export const unavailableNicService: NicService = {
  attach: unavailable,
  detach: unavailable,
  get: unavailable,
  list: async () => [],
};

export interface NicRoutesOptions {
  service: NicService;
  shutdownSignal: AbortSignal;
}

const nicRef = { $ref: 'Nic#' } as const;

export const nicRoutes: FastifyPluginAsync<NicRoutesOptions> = async (app, opts) => {
  const { service, shutdownSignal } = opts;
  const ctx: (request: FastifyRequest) => NicContext = operationContext(shutdownSignal);
  const ids = (request: FastifyRequest) => childIds(request, 'nicId', parseNicId);

  app.put(
    '/v1/sandboxes/:sandboxId/nics/:nicId',
    validatedRoute({
      summary: 'Hot-plug a virtio-net NIC (idempotent)',
      description:
        '201 attached, 200 the same NIC already attached with the same spec; 409 SPEC_CONFLICT another spec, 409 LANES_FULL no free vmplug root port, 422 INVALID_FIELD names the field (also for a bridge or tap the node lacks), 502 HOST_NETWORK_FAILED / BACKEND_FAILED.',
      tags: ['nics'],
      params: nicParamsSchema,
      body: nicBodySchema,
      response: {
        200: { ...nicRef, description: 'already attached with the same spec' },
        201: { ...nicRef, description: 'attached' },
        ...problemResponses,
      },
    }),
    async (request, reply) => {
      const { sandboxId, nicId } = ids(request);
      const spec = parseNicSpec(request.body, sandboxId, nicId);
      schemaLeftover(request);
      const { created, nic } = await service.attach(sandboxId, nicId, spec, ctx(request));
      return putAnswer(reply, created, `/v1/sandboxes/${sandboxId}/nics/${nicId}`, nic);
    },
  );

  app.get(
    '/v1/sandboxes/:sandboxId/nics/:nicId',
    validatedRoute({
      summary: 'State, MAC, tap, QEMU names and timeline of a NIC',
      tags: ['nics'],
      params: nicParamsSchema,
      response: { 200: nicRef, ...problemResponses },
    }),
    async (request) => {
      const { sandboxId, nicId } = ids(request);
      schemaLeftover(request);
      return service.get(sandboxId, nicId);
    },
  );

  app.delete(
    '/v1/sandboxes/:sandboxId/nics/:nicId',
    validatedRoute({
      summary: 'Hot-unplug a NIC (idempotent)',
      description:
        '204 also when there was no such NIC; 503 DETACH_PENDING (retryable) while the guest has not released the device.',
      tags: ['nics'],
      params: nicParamsSchema,
      response: { 204: { type: 'null', description: 'detached' }, ...problemResponses },
    }),
    async (request, reply) => {
      const { sandboxId, nicId } = ids(request);
      schemaLeftover(request);
      await service.detach(sandboxId, nicId, ctx(request));
      return reply.code(204).send();
    },
  );
};
