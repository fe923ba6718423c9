import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import { nicBodySchema, nicParamsSchema, problemResponses } from '../../../api/index.js';
import { VmplugError } from '../../../core/errors.js';
import { type NicId, parseNicId, parseSandboxId, type SandboxId } from '../../../core/ids.js';
import { type NicContext, type NicService, parseNicSpec } from '../../../net/index.js';

// PUT / GET / DELETE /v1/sandboxes/{sandboxId}/nics/{nicId}: NIC hot-plug. As with volumes, ids
// and the body are checked by net/'s parsers first (INVALID_ID 400, INVALID_FIELD 422 naming the
// field), so the schemas below describe and never refuse more than those parsers.

export const unavailableNicService: NicService = {
  attach: async () => {
    throw new VmplugError('NOT_READY', 'NIC hot-plug is not available in this daemon');
  },
  detach: async () => {
    throw new VmplugError('NOT_READY', 'NIC hot-plug is not available in this daemon');
  },
  get: async () => {
    throw new VmplugError('NOT_READY', 'NIC hot-plug is not available in this daemon');
  },
  list: async () => [],
};

export interface NicRoutesOptions {
  service: NicService;
  shutdownSignal: AbortSignal;
}

const nicRef = { $ref: 'Nic#' } as const;

export const nicRoutes: FastifyPluginAsync<NicRoutesOptions> = async (app, opts) => {
  const { service, shutdownSignal } = opts;
  const ctx = (request: FastifyRequest): NicContext => ({ signal: shutdownSignal, log: request.log });
  const ids = (request: FastifyRequest): { sandboxId: SandboxId; nicId: NicId } => {
    const params = request.params as Record<string, unknown>;
    return { sandboxId: parseSandboxId(params.sandboxId), nicId: parseNicId(params.nicId) };
  };
  const schemaLeftover = (request: FastifyRequest): void => {
    if (request.validationError !== undefined) throw request.validationError;
  };

  app.put(
    '/v1/sandboxes/:sandboxId/nics/:nicId',
    {
      attachValidation: true,
      schema: {
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
      },
    },
    async (request, reply) => {
      const { sandboxId, nicId } = ids(request);
      const spec = parseNicSpec(request.body, sandboxId, nicId);
      schemaLeftover(request);
      const { created, nic } = await service.attach(sandboxId, nicId, spec, ctx(request));
      if (created) reply.header('location', `/v1/sandboxes/${sandboxId}/nics/${nicId}`);
      return reply.code(created ? 201 : 200).send(nic);
    },
  );

  app.get(
    '/v1/sandboxes/:sandboxId/nics/:nicId',
    {
      attachValidation: true,
      schema: {
        summary: 'State, MAC, tap, QEMU names and timeline of a NIC',
        tags: ['nics'],
        params: nicParamsSchema,
        response: { 200: nicRef, ...problemResponses },
      },
    },
    async (request) => {
      const { sandboxId, nicId } = ids(request);
      schemaLeftover(request);
      return service.get(sandboxId, nicId);
    },
  );

  app.delete(
    '/v1/sandboxes/:sandboxId/nics/:nicId',
    {
      attachValidation: true,
      schema: {
        summary: 'Hot-unplug a NIC (idempotent)',
        description:
          '204 also when there was no such NIC; 503 DETACH_PENDING (retryable) while the guest has not released the device.',
        tags: ['nics'],
        params: nicParamsSchema,
        response: { 204: { type: 'null', description: 'detached' }, ...problemResponses },
      },
    },
    async (request, reply) => {
      const { sandboxId, nicId } = ids(request);
      schemaLeftover(request);
      await service.detach(sandboxId, nicId, ctx(request));
      return reply.code(204).send();
    },
  );
};
