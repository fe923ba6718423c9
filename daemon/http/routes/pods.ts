import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import { attachBodySchema, attachmentSchema, ID_PATTERN, problemResponses } from '../../../api/index.js';
import { VmplugError } from '../../../core/errors.js';
import { type PodUid, parsePodUid, parseVolumeId, type VolumeId } from '../../../core/ids.js';
import { POD_STATES } from '../../../storage/pod/journal.js';
import { FS_TYPES, POD_LIMITS, type PublishSpec, parsePublishRequest } from '../../../storage/pod/spec.js';
import type { PodVolume } from '../../../storage/pod/view.js';

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
};

const UUID_PATTERN = '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$';

export const podParamsSchema = {
  type: 'object',
  required: ['podUid'],
  properties: {
    podUid: { type: 'string', maxLength: 36, pattern: UUID_PATTERN, description: 'the Pod UID (RFC 4122)' },
  },
} as const;

export const podVolumeParamsSchema = {
  type: 'object',
  required: ['podUid', 'volumeId'],
  properties: {
    ...podParamsSchema.properties,
    volumeId: {
      type: 'string',
      minLength: 1,
      maxLength: 128,
      pattern: ID_PATTERN,
      description: 'Volume id (the CSI volume id or the PV name)',
    },
  },
} as const;

const { bus: _bus, pod: _pod, ...attachProps } = attachBodySchema.properties;

export const publishBodySchema = {
  type: 'object',
  additionalProperties: false,
  required: ['source', 'targetPath'],
  description:
    'The `mode` and `source` of an attach, plus where and how the volume is mounted in the container. `mode` may be left out when `annotations` carries the direct-mode annotation.',
  properties: {
    ...attachProps,
    targetPath: {
      type: 'string',
      maxLength: POD_LIMITS.targetPath,
      description:
        "NodePublishVolume's target_path: <kubeletRoot>/pods/<podUid>/volumes/kubernetes.io~csi/<volume name>/mount, of this pod",
    },
    fsType: {
      type: ['string', 'null'],
      enum: [...FS_TYPES, '', null],
      description: 'default ext4; a blank rbd image is formatted with it once',
    },
    mountOptions: {
      type: ['array', 'null'],
      maxItems: POD_LIMITS.mountOptions,
      items: { type: 'string', maxLength: POD_LIMITS.mountOption },
      description: 'one option each ("name" or "name=value"); ro/rw come from readOnly',
    },
    pod: {
      type: ['object', 'null'],
      description: "The Pod (its uid is the URL's); Events go to it",
      properties: {
        uid: { type: 'string' },
        name: { type: ['string', 'null'] },
        namespace: { type: ['string', 'null'] },
      },
    },
  },
} as const;

const states = ['Publishing', 'Published', 'Consumed', 'Unpublishing', 'Failed'];
const steps = [...POD_STATES];
const stored = attachmentSchema.properties;

export const podVolumeSchema = {
  $id: 'PodVolume',
  type: 'object',
  additionalProperties: false,
  required: [
    'podUid',
    'volumeId',
    'mode',
    'state',
    'step',
    'targetPath',
    'recordPath',
    'fsType',
    'readOnly',
    'mountOptions',
    'source',
    'timeline',
  ],
  properties: {
    podUid: { type: 'string' },
    volumeId: { type: 'string' },
    mode: { type: 'string', enum: ['block', 'rbd'] },
    state: {
      type: 'string',
      enum: states,
      description:
        'Published: record written, backend ready; Consumed: Kata plugged it (sandboxId); Failed: see problem',
    },
    step: { type: 'string', enum: steps, description: 'the journal state underneath' },
    sandboxId: { type: 'string', description: 'the Kata sandbox that consumed the volume' },
    targetPath: { type: 'string' },
    recordPath: { type: 'string', description: "Kata's direct-volume record (mountInfo.json)" },
    device: { type: 'string', description: 'the device the record names' },
    fsType: { type: 'string' },
    readOnly: { type: 'boolean' },
    mountOptions: { type: 'array', items: { type: 'string' } },
    source: stored.source,
    pod: stored.pod,
    problem: {
      type: 'object',
      additionalProperties: false,
      required: ['code', 'detail'],
      properties: { code: { type: 'string' }, detail: { type: 'string' }, at: { type: 'string' } },
    },
    timeline: {
      type: 'array',
      items: {
        ...stored.timeline.items,
        properties: { ...stored.timeline.items.properties, step: { type: 'string', enum: steps } },
      },
    },
  },
} as const;

export const podVolumeListSchema = {
  $id: 'PodVolumeList',
  type: 'object',
  additionalProperties: false,
  required: ['items'],
  properties: { items: { type: 'array', items: { $ref: 'PodVolume#' } } },
} as const;

const podVolumeRef = { $ref: 'PodVolume#' } as const;

export const podRoutes: FastifyPluginAsync<PodRoutesOptions> = async (app, opts) => {
  const { service, kubeletRoot, shutdownSignal } = opts;

  const ids = (request: FastifyRequest): { podUid: PodUid; volumeId: VolumeId } => {
    const p = request.params as Record<string, unknown>;
    return { podUid: parsePodUid(p.podUid), volumeId: parseVolumeId(p.volumeId) };
  };
  const schemaLeftover = (request: FastifyRequest): void => {
    if (request.validationError !== undefined) throw request.validationError;
  };

  app.put(
    '/v1/pods/:podUid/volumes/:volumeId',
    {
      attachValidation: true,
      schema: {
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
      },
    },
    async (request, reply) => {
      const { podUid, volumeId } = ids(request);
      const spec = parsePublishRequest(request.body, podUid, kubeletRoot);
      schemaLeftover(request);
      const { created, volume } = await service.publish(podUid, volumeId, spec, { signal: shutdownSignal });
      if (created) reply.header('location', `/v1/pods/${podUid}/volumes/${volumeId}`);
      return reply.code(created ? 201 : 200).send(volume);
    },
  );

  app.get(
    '/v1/pods/:podUid/volumes/:volumeId',
    {
      attachValidation: true,
      schema: {
        summary: 'State of a pod volume: Published, Consumed (with sandboxId) or Failed (with a problem)',
        tags: ['pods'],
        params: podVolumeParamsSchema,
        response: { 200: podVolumeRef, ...problemResponses },
      },
    },
    async (request) => {
      const { podUid, volumeId } = ids(request);
      schemaLeftover(request);
      return service.get(podUid, volumeId);
    },
  );

  app.get(
    '/v1/pods/:podUid/volumes',
    {
      attachValidation: true,
      schema: {
        summary: 'All published volumes of a pod',
        tags: ['pods'],
        params: podParamsSchema,
        response: { 200: { $ref: 'PodVolumeList#' }, ...problemResponses },
      },
    },
    async (request) => {
      const podUid = parsePodUid((request.params as Record<string, unknown>).podUid);
      schemaLeftover(request);
      return { items: await service.list(podUid) };
    },
  );

  app.delete(
    '/v1/pods/:podUid/volumes/:volumeId',
    {
      attachValidation: true,
      schema: {
        summary: 'Unpublish (idempotent: also 204 when unknown): record removed, backend stopped',
        tags: ['pods'],
        params: podVolumeParamsSchema,
        response: { 204: { type: 'null', description: 'unpublished' }, ...problemResponses },
      },
    },
    async (request, reply) => {
      const { podUid, volumeId } = ids(request);
      schemaLeftover(request);
      await service.unpublish(podUid, volumeId, { signal: shutdownSignal });
      return reply.code(204).send();
    },
  );
};
