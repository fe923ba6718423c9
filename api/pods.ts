import { listSchema } from './common.js';
import type { Assert, Matches } from './schema-type.js';
import {
  type AttachmentSource,
  type AttachSourceRequest,
  attachBodySchema,
  attachmentSchema,
  volumeParamsSchema,
} from './volumes.js';

// The pod-volume routes' wire contract (DESIGN §5b), written once: the JSON schemas fastify checks
// and serializes with (they produce /openapi.json) and the types the client, the CLI and the
// engine's view use, checked against the schemas at compile time. The publish body is fully
// checked by storage/pod/spec.ts; the schema describes, and catches only what that parser would.

/** File systems a published volume may be mounted with (a blank rbd image is formatted once). */
export const FS_TYPES = ['ext4', 'xfs'] as const;
export type FsType = (typeof FS_TYPES)[number];

/** Length and count bounds of the publish request, shared by the schema and the parser. */
export const POD_LIMITS = {
  mountOptions: 32,
  mountOption: 128,
  targetPath: 1024,
  csiVolumeName: 253,
} as const;

/** The pod journal's states (`step` of a pod volume): publish, then unpublish, then Failed. */
export const POD_STATES = [
  'Publishing',
  'BackendReady',
  'Published',
  'Unpublishing',
  'RecordRemoved',
  'BackendStopped',
  'Failed',
] as const;
export type PodState = (typeof POD_STATES)[number];

/** What GET answers as `state`: what a CSI plugin or an operator acts on. */
export const POD_VOLUME_STATES = ['Publishing', 'Published', 'Consumed', 'Unpublishing', 'Failed'] as const;
export type PodVolumeState = (typeof POD_VOLUME_STATES)[number];

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
    volumeId: volumeParamsSchema.properties.volumeId,
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
      enum: POD_VOLUME_STATES,
      description:
        'Published: record written, backend ready; Consumed: Kata plugged it (sandboxId); Failed: see problem',
    },
    step: { type: 'string', enum: POD_STATES, description: 'the journal state underneath' },
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
        properties: { ...stored.timeline.items.properties, step: { type: 'string', enum: POD_STATES } },
      },
    },
    sizeBytes: { type: 'integer', description: 'in the answer of a resize: the size the backend now sees' },
  },
} as const;

export const podVolumeListSchema = listSchema('PodVolumeList', 'PodVolume#');

/** PUT /v1/pods/{podUid}/volumes/{volumeId} body. */
export interface PublishRequest {
  mode?: 'block' | 'rbd';
  source: AttachSourceRequest;
  readOnly?: boolean;
  /** rbd mode only; default auto. */
  backend?: 'auto' | 'qemu' | 'storage-daemon';
  annotations?: Record<string, string>;
  /** kubelet's NodePublishVolume target_path of this pod. */
  targetPath: string;
  fsType?: FsType;
  mountOptions?: string[];
  /** Where Events go; its uid, when given, is the URL's. */
  pod?: { uid?: string; name?: string; namespace?: string };
}

export interface PodVolumeTimelineEntry {
  step: PodState;
  at: string;
  ms: number;
}

export interface PodVolume {
  podUid: string;
  volumeId: string;
  mode: 'block' | 'rbd';
  state: PodVolumeState;
  /** The journal state underneath. */
  step: PodState;
  /** Set when Consumed: the Kata sandbox that plugged the volume. */
  sandboxId?: string;
  targetPath: string;
  recordPath: string;
  device?: string;
  fsType: string;
  readOnly: boolean;
  mountOptions: string[];
  source: AttachmentSource;
  pod?: { uid: string; name?: string; namespace?: string };
  /** Set when Failed. */
  problem?: { code: string; detail: string; at?: string };
  timeline: PodVolumeTimelineEntry[];
  /** In the answer of a resize: the size the backend now sees. */
  sizeBytes?: number;
}

/** What the client's publish answers (the HTTP status says `created`: 201, or 200 when unchanged). */
export interface PublishResponse {
  /** False when the same volume was already published with the same spec (HTTP 200). */
  created: boolean;
  volume: PodVolume;
}

export function podVolumePath(podUid: string, volumeId?: string): string {
  const base = `/v1/pods/${encodeURIComponent(podUid)}/volumes`;
  return volumeId === undefined ? base : `${base}/${encodeURIComponent(volumeId)}`;
}

// The hand-written types against the schemas: a field in one and not the other fails to compile.
export type PodWireChecks = [
  Assert<Matches<PublishRequest, typeof publishBodySchema>>,
  Assert<Matches<PodVolume, typeof podVolumeSchema>>,
  Assert<Matches<PodVolumeTimelineEntry, typeof podVolumeSchema.properties.timeline.items>>,
];
