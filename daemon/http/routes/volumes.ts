import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import {
  attachBodySchema,
  problemResponses,
  resizeBodySchema,
  volumeParamsSchema,
} from '../../../api/index.js';
import { parseSandboxId, parseVolumeId, type SandboxId, type VolumeId } from '../../../core/ids.js';
import type { AttachService, OperationContext } from '../../../storage/attach-service.js';
import { parseAttachRequest } from '../../../storage/volume-spec.js';

export interface VolumeRoutesOptions {
  service: AttachService;
  /** Aborted when the daemon stops waiting for in-flight operations. */
  shutdownSignal: AbortSignal;
}

const attachmentRef = { $ref: 'Attachment#' } as const;

// Every route sets attachValidation: ids and the attach body are checked by the storage parsers
// first (their codes: INVALID_ID 400, INVALID_FIELD/NOT_PASSTHROUGH/MODE_MISMATCH 422); a schema
// error left over after them is raised as a plain 400.
export const volumeRoutes: FastifyPluginAsync<VolumeRoutesOptions> = async (app, opts) => {
  const { service, shutdownSignal } = opts;

  const ctx = (request: FastifyRequest): OperationContext => ({ signal: shutdownSignal, log: request.log });

  const ids = (request: FastifyRequest): { sandboxId: SandboxId; volumeId: VolumeId } => {
    const params = request.params as Record<string, unknown>;
    return { sandboxId: parseSandboxId(params.sandboxId), volumeId: parseVolumeId(params.volumeId) };
  };

  const schemaLeftover = (request: FastifyRequest): void => {
    if (request.validationError !== undefined) throw request.validationError;
  };

  app.put(
    '/v1/sandboxes/:sandboxId/volumes/:volumeId',
    {
      attachValidation: true,
      schema: {
        summary: 'Attach a volume (idempotent)',
        tags: ['volumes'],
        params: volumeParamsSchema,
        body: attachBodySchema,
        response: {
          200: { ...attachmentRef, description: 'the same volume was already attached with the same spec' },
          201: { ...attachmentRef, description: 'attached' },
          ...problemResponses,
        },
      },
    },
    async (request, reply) => {
      const { sandboxId, volumeId } = ids(request);
      const spec = parseAttachRequest(request.body);
      schemaLeftover(request);
      const { created, attachment } = await service.attach(sandboxId, volumeId, spec, ctx(request));
      if (created) reply.header('location', `/v1/sandboxes/${sandboxId}/volumes/${volumeId}`);
      return reply.code(created ? 201 : 200).send(attachment);
    },
  );

  app.get(
    '/v1/sandboxes/:sandboxId/volumes/:volumeId',
    {
      attachValidation: true,
      schema: {
        summary: 'State, QEMU names, guest hint, timeline and stats of a volume',
        tags: ['volumes'],
        params: volumeParamsSchema,
        response: { 200: attachmentRef, ...problemResponses },
      },
    },
    async (request) => {
      const { sandboxId, volumeId } = ids(request);
      schemaLeftover(request);
      return service.get(sandboxId, volumeId, ctx(request));
    },
  );

  app.delete(
    '/v1/sandboxes/:sandboxId/volumes/:volumeId',
    {
      attachValidation: true,
      schema: {
        summary: 'Detach a volume (idempotent: also 204 when unknown)',
        tags: ['volumes'],
        params: volumeParamsSchema,
        response: { 204: { type: 'null', description: 'detached' }, ...problemResponses },
      },
    },
    async (request, reply) => {
      const { sandboxId, volumeId } = ids(request);
      schemaLeftover(request);
      await service.detach(sandboxId, volumeId, ctx(request));
      return reply.code(204).send();
    },
  );

  app.post(
    '/v1/sandboxes/:sandboxId/volumes/:volumeId/resize',
    {
      attachValidation: true,
      schema: {
        summary: 'Online expand of an attached volume',
        tags: ['volumes'],
        params: volumeParamsSchema,
        body: resizeBodySchema,
        response: { 200: attachmentRef, ...problemResponses },
      },
    },
    async (request) => {
      const { sandboxId, volumeId } = ids(request);
      schemaLeftover(request);
      const { sizeBytes } = request.body as { sizeBytes: number };
      return service.resize(sandboxId, volumeId, sizeBytes, ctx(request));
    },
  );
};
