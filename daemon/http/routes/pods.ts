import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import {
  type PodVolume,
  podParamsSchema,
  podVolumeParamsSchema,
  problemResponses,
  publishBodySchema,
  resizeBodySchema,
} from '../../../api/index.js';
import { VmplugError } from '../../../core/errors.js';
import { type PodUid, parsePodUid, parseVolumeId, type VolumeId } from '../../../core/ids.js';
import { type PublishSpec, parsePublishRequest } from '../../../storage/pod/spec.js';
import { putAnswer, schemaLeftover, validatedRoute } from './request.js';

// DESIGN §5b: volumes published per pod (by pod UID, before the pod's sandbox exists) and handed
// to Kata through its direct-volume record. Ids and the body are checked by the storage parsers
// first (INVALID_ID 400, INVALID_FIELD 422 naming the field); a schema error left after them is a
// plain 400.

export interface PodService {
  publish(
    podUid: PodUid,
    volumeId: VolumeId,
    spec: PublishSpec,
    ctx: { signal: AbortSignal },
  ): Promise<{ created: boolean; volume: PodVolume }>;
  unpublish(podUid: PodUid, volumeId: VolumeId, ctx: { signal: AbortSignal }): Promise<void>;
  get(podUid: PodUid, volumeId: VolumeId): Promise<PodVolume>;
  list(podUid?: PodUid): Promise<PodVolume[]>;
  resize(
    podUid: PodUid,
    volumeId: VolumeId,
    sizeBytes: number,
    ctx: { signal: AbortSignal },
  ): Promise<PodVolume>;
}

export interface PodRoutesOptions {
  service: PodService;
  kubeletRoot: string;
  shutdownSignal: AbortSignal;
}

const notReady = (): never => {
  throw new VmplugError('NOT_READY', 'pod volumes are not available in this daemon');
};

export const unavailablePodService: PodService = {
  publish: async () => notReady(),
  unpublish: async () => notReady(),
  get: async () => notReady(),
  list: async () => notReady(),
  resize: async () => notReady(),
};

const podVolumeRef = { $ref: 'PodVolume#' } as const;

export const podRoutes: FastifyPluginAsync<PodRoutesOptions> = async (app, opts) => {
  const { service, kubeletRoot, shutdownSignal } = opts;
  const ctx = { signal: shutdownSignal };

  const ids = (request: FastifyRequest): { podUid: PodUid; volumeId: VolumeId } => {
    const p = request.params as Record<string, unknown>;
    return { podUid: parsePodUid(p.podUid), volumeId: parseVolumeId(p.volumeId) };
  };

  app.put(
    '/v1/pods/:podUid/volumes/:volumeId',
    validatedRoute({
      summary:
        'Publish a volume for a Kata pod (idempotent): prepare the backend, write the Kata direct-volume record',
      tags: ['pods'],
      params: podVolumeParamsSchema,
      body: publishBodySchema,
      response: {
        200: { ...podVolumeRef, description: 'already published with the same spec' },
        201: { ...podVolumeRef, description: 'published' },
        ...problemResponses,
      },
    }),
    async (request, reply) => {
      const { podUid, volumeId } = ids(request);
      const spec = parsePublishRequest(request.body, podUid, kubeletRoot);
      schemaLeftover(request);
      const { created, volume } = await service.publish(podUid, volumeId, spec, ctx);
      return putAnswer(reply, created, `/v1/pods/${podUid}/volumes/${volumeId}`, volume);
    },
  );

  app.get(
    '/v1/pods/:podUid/volumes/:volumeId',
    validatedRoute({
      summary: 'State of a pod volume: Published, Consumed (with sandboxId) or Failed (with a problem)',
      tags: ['pods'],
      params: podVolumeParamsSchema,
      response: { 200: podVolumeRef, ...problemResponses },
    }),
    async (request) => {
      const { podUid, volumeId } = ids(request);
      schemaLeftover(request);
      return service.get(podUid, volumeId);
    },
  );

  app.get(
    '/v1/pods/:podUid/volumes',
    validatedRoute({
      summary: 'All published volumes of a pod',
      tags: ['pods'],
      params: podParamsSchema,
      response: { 200: { $ref: 'PodVolumeList#' }, ...problemResponses },
    }),
    async (request) => {
      const podUid = parsePodUid((request.params as Record<string, unknown>).podUid);
      schemaLeftover(request);
      return { items: await service.list(podUid) };
    },
  );

  app.post(
    '/v1/pods/:podUid/volumes/:volumeId/resize',
    validatedRoute({
      summary:
        "Expand a published rbd volume (CSI NodeExpandVolume): its storage daemon's image grows; the next plug sees it (QEMU 7.2: a plugged guest at the next publish)",
      tags: ['pods'],
      params: podVolumeParamsSchema,
      body: resizeBodySchema,
      response: { 200: podVolumeRef, ...problemResponses },
    }),
    async (request) => {
      const { podUid, volumeId } = ids(request);
      const sizeBytes = (request.body as { sizeBytes: number }).sizeBytes;
      schemaLeftover(request);
      return service.resize(podUid, volumeId, sizeBytes, ctx);
    },
  );

  app.delete(
    '/v1/pods/:podUid/volumes/:volumeId',
    validatedRoute({
      summary: 'Unpublish (idempotent: also 204 when unknown): record removed, backend stopped',
      tags: ['pods'],
      params: podVolumeParamsSchema,
      response: { 204: { type: 'null', description: 'unpublished' }, ...problemResponses },
    }),
    async (request, reply) => {
      const { podUid, volumeId } = ids(request);
      schemaLeftover(request);
      await service.unpublish(podUid, volumeId, ctx);
      return reply.code(204).send();
    },
  );
};
