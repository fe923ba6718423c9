import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import { parseSandboxId } from '../../../core/ids.js';
import type { ResourceService } from '../../resize/service.js';
import type { ResizeRequest } from '../../resize/types.js';
import { problemResponses, sandboxParamsSchema } from './schemas.js';

// GET / PATCH /v1/sandboxes/{sandboxId}/resources: a guest's vCPUs and memory, resized in place
// (CPU and DIMM hot-plug), never by migration.

export interface ResourceRoutesOptions {
  service: ResourceService;
  /** Aborted when the daemon stops waiting for in-flight operations. */
  shutdownSignal: AbortSignal;
}

export const guestResourcesSchema = {
  type: 'object',
  description: "A guest's vCPUs and memory now, and the ceilings it was started with",
  required: ['vcpus', 'maxVcpus', 'memoryMiB', 'maxMemoryMiB'],
  additionalProperties: false,
  properties: {
    vcpus: { type: 'integer', description: 'vCPUs plugged' },
    maxVcpus: { type: 'integer', description: "the guest's maxcpus" },
    memoryMiB: { type: 'integer', description: 'boot memory plus hot-added DIMMs' },
    maxMemoryMiB: { type: 'integer', description: "the guest's maxmem" },
  },
} as const;

export const resizeGuestBodySchema = {
  type: 'object',
  description:
    'Target vCPU count and/or memory. Memory changes in whole 128 MiB steps (one DIMM per increase); only what vmplug hot-added can be removed again, and only if the guest releases it.',
  additionalProperties: false,
  minProperties: 1,
  properties: {
    vcpus: { type: 'integer', minimum: 1, maximum: 1024, description: "1 up to the guest's maxcpus" },
    memoryMiB: {
      type: 'integer',
      minimum: 1,
      maximum: 16 * 1024 * 1024,
      description: "up to the guest's maxmem, a multiple of 128 MiB away from the current size",
    },
  },
} as const;

export const resourceRoutes: FastifyPluginAsync<ResourceRoutesOptions> = async (app, opts) => {
  const { service, shutdownSignal } = opts;
  const ctx = (): { signal: AbortSignal } => ({ signal: shutdownSignal });
  const sandboxIdOf = (request: FastifyRequest) =>
    parseSandboxId((request.params as Record<string, unknown>).sandboxId);

  app.get(
    '/v1/sandboxes/:sandboxId/resources',
    {
      attachValidation: true,
      schema: {
        summary: "A guest's vCPUs and memory, and their maxima",
        tags: ['sandboxes'],
        params: sandboxParamsSchema,
        response: { 200: guestResourcesSchema, ...problemResponses },
      },
    },
    async (request) => {
      const sandboxId = sandboxIdOf(request);
      if (request.validationError !== undefined) throw request.validationError;
      return service.get(sandboxId, ctx());
    },
  );

  app.patch(
    '/v1/sandboxes/:sandboxId/resources',
    {
      attachValidation: true,
      schema: {
        summary: 'Hot-resize a guest (vCPUs, memory) in place',
        description:
          '422 RESOURCE_OUT_OF_RANGE / MEMORY_MISALIGNED / SHRINK_UNSUPPORTED and 409 NO_MEMORY_SLOT name the refused `field` and change nothing; 409 GUEST_REFUSED_UNPLUG: the guest kept a CPU or DIMM (it stays plugged, GET shows what the guest has).',
        tags: ['sandboxes'],
        params: sandboxParamsSchema,
        body: resizeGuestBodySchema,
        response: { 200: guestResourcesSchema, ...problemResponses },
      },
    },
    async (request) => {
      const sandboxId = sandboxIdOf(request);
      if (request.validationError !== undefined) throw request.validationError;
      return service.resize(sandboxId, request.body as ResizeRequest, ctx());
    },
  );
};
