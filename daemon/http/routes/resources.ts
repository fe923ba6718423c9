import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import {
  guestResourcesSchema,
  problemResponses,
  resizeGuestBodySchema,
  sandboxParamsSchema,
} from '../../../api/index.js';
import { parseSandboxId } from '../../../core/ids.js';
import type { ResourceService } from '../../resize/service.js';
import type { ResizeRequest } from '../../resize/types.js';

// GET / PATCH /v1/sandboxes/{sandboxId}/resources: a guest's vCPUs and memory, resized in place
// (CPU and DIMM hot-plug), never by migration.

export interface ResourceRoutesOptions {
  service: ResourceService;
  /** Aborted when the daemon stops waiting for in-flight operations. */
  shutdownSignal: AbortSignal;
}

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
