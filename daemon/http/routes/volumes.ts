import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import {
  attachBodySchema,
  problemResponses,
  resizeBodySchema,
  volumeParamsSchema,
} from '../../../api/index.js';
import { parseVolumeId } from '../../../core/ids.js';
import type { AttachService, OperationContext } from '../../../storage/attach-service.js';
import { parseAttachRequest } from '../../../storage/volume-spec.js';
import { childIds, operationContext, putAnswer, schemaLeftover, validatedRoute } from './request.js';

export interface VolumeRoutesOptions {
  service: AttachService;
  /** Aborted when the daemon stops waiting for in-flight operations. */
  shutdownSignal: AbortSignal;
}

const attachmentRef = { $ref: 'Attachment#' } as const;

// Every route sets attachValidation: ids and the attach body are checked by the storage parsers
// first (their codes: INVALID_ID 400, INVALID_FIELD/NOT_PASSTHROUGH/MODE_MISMATCH 422); a schema
// error left over after them is raised as a plain 400 (./request.ts).
export const volumeRoutes: FastifyPluginAsync<VolumeRoutesOptions> = async (app, opts) => {
  const { service, shutdownSignal } = opts;

  const ctx: (request: FastifyRequest) => OperationContext = operationContext(shutdownSignal);
  const ids = (request: FastifyRequest) => childIds(request, 'volumeId', parseVolumeId);

  app.put(
    '/v1/sandboxes/:sandboxId/volumes/:volumeId',
    validatedRoute({
      summary: 'Attach a volume (idempotent)',
      description:
        'Block mode: the path is resolved (symlinks followed) and the resolved device is what the guest gets; 403 DEVICE_NOT_ALLOWED when it is outside the allowedDevices setting, 409 DEVICE_IN_USE when the host uses it or one of its partitions (mounted, swap, held by dm/md/LVM, opened exclusively), both naming source.path and refused before anything is done.',
      tags: ['volumes'],
      params: volumeParamsSchema,
      body: attachBodySchema,
      response: {
        200: { ...attachmentRef, description: 'the same volume was already attached with the same spec' },
        201: { ...attachmentRef, description: 'attached' },
        ...problemResponses,
      },
    }),
    async (request, reply) => {
      const { sandboxId, volumeId } = ids(request);
      const spec = parseAttachRequest(request.body);
      schemaLeftover(request);
      const { created, attachment } = await service.attach(sandboxId, volumeId, spec, ctx(request));
      return putAnswer(reply, created, `/v1/sandboxes/${sandboxId}/volumes/${volumeId}`, attachment);
    },
  );

  app.get(
    '/v1/sandboxes/:sandboxId/volumes/:volumeId',
    validatedRoute({
      summary: 'State, QEMU names, guest hint, timeline and stats of a volume',
      tags: ['volumes'],
      params: volumeParamsSchema,
      response: { 200: attachmentRef, ...problemResponses },
    }),
    async (request) => {
      const { sandboxId, volumeId } = ids(request);
      schemaLeftover(request);
      return service.get(sandboxId, volumeId, ctx(request));
    },
  );

  app.delete(
    '/v1/sandboxes/:sandboxId/volumes/:volumeId',
    validatedRoute({
      summary: 'Detach a volume (idempotent: also 204 when unknown)',
      tags: ['volumes'],
      params: volumeParamsSchema,
      response: { 204: { type: 'null', description: 'detached' }, ...problemResponses },
    }),
    async (request, reply) => {
      const { sandboxId, volumeId } = ids(request);
      schemaLeftover(request);
      await service.detach(sandboxId, volumeId, ctx(request));
      return reply.code(204).send();
    },
  );

  app.post(
    '/v1/sandboxes/:sandboxId/volumes/:volumeId/resize',
    validatedRoute({
      summary: 'Online expand of an attached volume',
      tags: ['volumes'],
      params: volumeParamsSchema,
      body: resizeBodySchema,
      response: { 200: attachmentRef, ...problemResponses },
    }),
    async (request) => {
      const { sandboxId, volumeId } = ids(request);
      schemaLeftover(request);
      const { sizeBytes } = request.body as { sizeBytes: number };
      return service.resize(sandboxId, volumeId, sizeBytes, ctx(request));
    },
  );
};
