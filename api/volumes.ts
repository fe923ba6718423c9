import { idSchema, lastErrorSchema } from './common.js';
import type { Assert, Matches } from './schema-type.js';

// The volume routes' wire contract, written once: the JSON schemas fastify checks and serializes
// with (they produce /openapi.json), and the TypeScript types the client, the CLI and the engine's
// API view use, checked against the schemas at compile time. The attach body is fully checked by
// storage/volume-spec.ts (one rule set, with the engine's stable error codes), so the body schema
// must never be stricter than that parser; it describes, and catches only what the parser would.

export const DIRECT_MODE_ANNOTATION = 'volume.katacontainers.io/direct-mode';

/** Length and count bounds of the attach request, shared by the schema and the parser. */
export const LIMITS = {
  monitors: 16,
  cephName: 128,
  cephUser: 64,
  hostDevicePath: 255,
  hostname: 253,
  podName: 253,
  podNamespace: 63,
} as const;

/** The journal's attach states, in the order an attach goes through them. */
export const ATTACH_STATES = ['Pending', 'SecretAdded', 'BlockdevAdded', 'DeviceAdded', 'Attached'] as const;
/** The journal's detach states, in order. */
export const DETACH_STATES = [
  'Detaching',
  'DetachPending',
  'DeviceDeleted',
  'BlockdevDeleted',
  'Detached',
] as const;
/** Every state, attach ones first. */
export const VOLUME_STATES = [...ATTACH_STATES, ...DETACH_STATES] as const;
export type VolumeState = (typeof VOLUME_STATES)[number];

export type Mode = 'block' | 'rbd';
export type Bus = 'auto' | 'scsi' | 'virtio-blk';

/**
 * The Pod a volume is attached for, as a CSI plugin knows it at NodePublish (the volume context
 * `csi.storage.k8s.io/pod.uid|name|namespace` when the CSIDriver sets podInfoOnMount). It only
 * says where Kubernetes Events go: it is not part of what is attached.
 */
export interface PodRef {
  uid: string;
  name?: string;
  namespace?: string;
}

export const volumeParamsSchema = {
  type: 'object',
  required: ['sandboxId', 'volumeId'],
  properties: {
    sandboxId: idSchema('Kata sandbox id, or libvirt domain name'),
    volumeId: idSchema('Volume id (the CSI volume id or the PV name)'),
  },
} as const;

const cephName = { type: 'string', maxLength: LIMITS.cephName } as const;
const optionalCephName = { type: ['string', 'null'], maxLength: LIMITS.cephName } as const;

export const attachBodySchema = {
  type: 'object',
  additionalProperties: false,
  required: ['source'],
  description: `\`mode\` may be left out when \`annotations\` carries ${DIRECT_MODE_ANNOTATION}.`,
  properties: {
    mode: { type: 'string', enum: ['block', 'rbd'] },
    source: {
      type: 'object',
      required: ['type'],
      properties: {
        type: { type: 'string', enum: ['hostDevice', 'rbd'] },
        path: {
          type: 'string',
          maxLength: LIMITS.hostDevicePath,
          description: 'hostDevice: a block device under /dev/',
        },
        pool: cephName,
        namespace: optionalCephName,
        image: cephName,
        snapshot: { ...optionalCephName, description: 'needs readOnly: true' },
        monitors: {
          type: 'array',
          maxItems: LIMITS.monitors,
          items: { type: 'string', description: '"host:port" or "[ipv6]:port"' },
        },
        user: { type: 'string', maxLength: LIMITS.cephUser, description: 'cephx id without "client."' },
        key: {
          type: 'string',
          description: 'base64 cephx key (`ceph auth get-key`); never stored, logged or echoed',
        },
      },
    },
    readOnly: { type: 'boolean', default: false },
    bus: { type: 'string', enum: ['auto', 'scsi', 'virtio-blk'], default: 'auto' },
    annotations: {
      type: 'object',
      additionalProperties: { type: 'string' },
      description: 'PVC annotations; vmplug reads volume.katacontainers.io/direct-mode',
    },
    pod: {
      type: ['object', 'null'],
      description:
        'The Pod the volume is for (a CSI plugin has it at NodePublish from the volume context csi.storage.k8s.io/pod.uid|name|namespace when its CSIDriver sets podInfoOnMount). Kubernetes Events go to this Pod when the runtime records none for the sandbox. Not part of the spec: a retry that adds or leaves it out is the same attach.',
      properties: {
        uid: { type: 'string', description: 'RFC 4122 UUID' },
        name: { type: ['string', 'null'], maxLength: LIMITS.podName, description: 'DNS-1123 subdomain' },
        namespace: {
          type: ['string', 'null'],
          maxLength: LIMITS.podNamespace,
          description: 'DNS-1123 label',
        },
      },
    },
  },
} as const;

/** A host block device (block mode). */
export interface HostDeviceSourceRequest {
  type: 'hostDevice';
  path: string;
}

/** The rbd source of the attach request: the one place it is spelled out. */
export interface RbdSourceRequest {
  type: 'rbd';
  pool: string;
  namespace?: string;
  image: string;
  /** Needs readOnly: true. */
  snapshot?: string;
  /** "host:port" or "[ipv6]:port". */
  monitors: string[];
  /** cephx id without "client.". */
  user: string;
  /** base64 cephx key; sent in the body only, never stored or echoed by vmplugd. */
  key: string;
}

export type AttachSourceRequest = HostDeviceSourceRequest | RbdSourceRequest;

/** PUT /v1/sandboxes/{sandboxId}/volumes/{volumeId} body. */
export interface AttachRequest {
  mode?: Mode;
  source: AttachSourceRequest;
  readOnly?: boolean;
  bus?: Bus;
  annotations?: Record<string, string>;
  /**
   * The Pod the volume is for (a CSI plugin's NodePublish has it in the volume context when
   * podInfoOnMount is set): Events go there when the runtime records no pod for the sandbox.
   */
  pod?: PodRef;
}

export const resizeBodySchema = {
  type: 'object',
  additionalProperties: false,
  required: ['sizeBytes'],
  properties: {
    sizeBytes: { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER },
  },
} as const;

export interface ResizeRequest {
  sizeBytes: number;
}

// Serialization goes through this schema, which lists every field a response may carry: anything
// else an engine object holds (a key, by mistake) is dropped, never sent.
export const attachmentSchema = {
  $id: 'Attachment',
  type: 'object',
  additionalProperties: false,
  required: [
    'sandboxId',
    'volumeId',
    'mode',
    'bus',
    'readOnly',
    'state',
    'nodeName',
    'deviceId',
    'serial',
    'guestHint',
    'source',
    'timeline',
  ],
  properties: {
    sandboxId: { type: 'string' },
    volumeId: { type: 'string' },
    mode: { type: 'string', enum: ['block', 'rbd'] },
    bus: { type: 'string', enum: ['scsi', 'virtio-blk'] },
    readOnly: { type: 'boolean' },
    state: { type: 'string', enum: VOLUME_STATES },
    nodeName: { type: 'string', description: 'QEMU block node name' },
    deviceId: { type: 'string', description: 'QEMU device id' },
    serial: { type: 'string' },
    guestHint: { type: 'string', description: 'where a guest with udev finds the disk' },
    source: {
      type: 'object',
      additionalProperties: false,
      required: ['type'],
      properties: {
        type: { type: 'string', enum: ['hostDevice', 'rbd'] },
        path: { type: 'string' },
        pool: { type: 'string' },
        namespace: { type: 'string' },
        image: { type: 'string' },
        snapshot: { type: 'string' },
        monitors: { type: 'array', items: { type: 'string' } },
        user: { type: 'string' },
      },
    },
    timeline: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['step', 'at', 'ms'],
        properties: {
          step: { type: 'string', enum: VOLUME_STATES },
          at: { type: 'string', format: 'date-time' },
          ms: { type: 'number', description: 'duration of the step' },
        },
      },
    },
    lastError: lastErrorSchema,
    stats: { type: 'object', additionalProperties: { type: 'number' }, description: 'query-blockstats' },
    pod: {
      type: 'object',
      additionalProperties: false,
      required: ['uid'],
      description: 'The Pod the attach request named',
      properties: { uid: { type: 'string' }, name: { type: 'string' }, namespace: { type: 'string' } },
    },
  },
} as const;

/** The source in the request's own spelling, without the key. */
export type AttachmentSource = HostDeviceSourceRequest | Omit<RbdSourceRequest, 'key'>;

export interface TimelineEntry {
  step: VolumeState;
  /** ISO 8601 time the step was reached. */
  at: string;
  /** How long the step took. */
  ms: number;
}

/** A volume as the REST API shows it (DESIGN section 5). Never holds a key. */
export interface Attachment {
  sandboxId: string;
  volumeId: string;
  mode: Mode;
  /** The frontend in use ('auto' resolved). */
  bus: 'scsi' | 'virtio-blk';
  readOnly: boolean;
  state: VolumeState;
  /** QEMU block node name. */
  nodeName: string;
  /** QEMU device id. */
  deviceId: string;
  serial: string;
  /** Where the disk shows up in a guest with udev. */
  guestHint: string;
  source: AttachmentSource;
  timeline: TimelineEntry[];
  lastError?: { code: string; message: string; at: string };
  /** From query-blockstats, on GET. */
  stats?: Record<string, number>;
  /** The Pod the attach request named (absent when it named none). */
  pod?: PodRef;
}

export interface AttachResponse {
  /** False when the same volume was already attached with the same spec (HTTP 200, not 201). */
  created: boolean;
  attachment: Attachment;
}

// The hand-written types against the schemas: a field in one and not the other fails to compile.
export type VolumeWireChecks = [
  Assert<Matches<AttachRequest, typeof attachBodySchema>>,
  Assert<Matches<AttachSourceRequest, typeof attachBodySchema.properties.source>>,
  Assert<Matches<PodRef, typeof attachBodySchema.properties.pod>>,
  Assert<Matches<ResizeRequest, typeof resizeBodySchema>>,
  Assert<Matches<Attachment, typeof attachmentSchema>>,
  Assert<Matches<AttachmentSource, typeof attachmentSchema.properties.source>>,
  Assert<Matches<TimelineEntry, typeof attachmentSchema.properties.timeline.items>>,
  Assert<Matches<PodRef, typeof attachmentSchema.properties.pod>>,
];
