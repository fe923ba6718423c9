import { ID_MAX_LENGTH } from '../../../core/ids.js';
import { DIRECT_MODE_ANNOTATION, LIMITS } from '../../../storage/volume-spec.js';

// JSON schemas of the REST API: the contract clients read in /openapi.json. The attach body and
// the ids are checked by the storage parsers (one rule set, with the engine's stable error codes),
// so these schemas must never be stricter than those parsers; they describe, and catch only what
// the parsers would catch too.

/** core/ids.ts's rule written as a pattern: a letter or digit first, then [A-Za-z0-9_.-], no "..". */
export const ID_PATTERN = `^(?!.*\\.\\.)[A-Za-z0-9][A-Za-z0-9_.-]{0,${ID_MAX_LENGTH - 1}}$`;

const id = (description: string) =>
  ({ type: 'string', minLength: 1, maxLength: ID_MAX_LENGTH, pattern: ID_PATTERN, description }) as const;

export const volumeParamsSchema = {
  type: 'object',
  required: ['sandboxId', 'volumeId'],
  properties: {
    sandboxId: id('Kata sandbox id, or libvirt domain name'),
    volumeId: id('Volume id (the CSI volume id or the PV name)'),
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

export const resizeBodySchema = {
  type: 'object',
  additionalProperties: false,
  required: ['sizeBytes'],
  properties: {
    sizeBytes: { type: 'integer', minimum: 1, maximum: Number.MAX_SAFE_INTEGER },
  },
} as const;

const states = [
  'Pending',
  'SecretAdded',
  'BlockdevAdded',
  'DeviceAdded',
  'Attached',
  'Detaching',
  'DetachPending',
  'DeviceDeleted',
  'BlockdevDeleted',
  'Detached',
];

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
    state: { type: 'string', enum: states },
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
          step: { type: 'string', enum: states },
          at: { type: 'string', format: 'date-time' },
          ms: { type: 'number', description: 'duration of the step' },
        },
      },
    },
    lastError: {
      type: 'object',
      additionalProperties: false,
      required: ['code', 'message', 'at'],
      properties: { code: { type: 'string' }, message: { type: 'string' }, at: { type: 'string' } },
    },
    stats: { type: 'object', additionalProperties: { type: 'number' }, description: 'query-blockstats' },
    pod: {
      type: 'object',
      additionalProperties: false,
      required: ['uid'],
      description: 'The Pod the attach request named',
      properties: { uid: { type: 'string' }, name: { type: 'string' }, namespace: { type: 'string' } },
    },
    conditions: {
      type: 'array',
      description:
        'warnings found at reconcile: HostInUse when the host started using an attached block device (it stays attached; an attach of it is refused)',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['type', 'code', 'message', 'since'],
        properties: {
          type: { type: 'string', enum: ['HostInUse'] },
          code: { type: 'string', description: 'DEVICE_IN_USE or DEVICE_NOT_ALLOWED' },
          message: { type: 'string' },
          since: { type: 'string', format: 'date-time' },
        },
      },
    },
  },
} as const;

export const sandboxParamsSchema = {
  type: 'object',
  required: ['sandboxId'],
  properties: { sandboxId: id('Kata sandbox id, or libvirt domain name') },
} as const;

export const sandboxQuerySchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    podUid: { type: 'string', maxLength: 253, description: 'only the sandbox(es) of this pod' },
  },
} as const;

export const sandboxSchema = {
  $id: 'Sandbox',
  type: 'object',
  additionalProperties: false,
  required: ['id', 'kind', 'state', 'discoveredAt', 'volumes'],
  properties: {
    id: { type: 'string', description: 'Kata sandbox id, or libvirt domain name' },
    kind: { type: 'string', enum: ['kata', 'libvirt'] },
    state: {
      type: 'string',
      enum: ['running', 'paused', 'shutdown', 'shutoff', 'crashed', 'unknown', 'unreachable'],
      description: "unreachable: known, but vmplug's monitor does not answer right now",
    },
    reason: { type: 'string', description: 'why it is unreachable' },
    hypervisorStatus: { type: 'string', description: "QEMU's run state (query-status)" },
    pod: {
      type: 'object',
      additionalProperties: false,
      description: "from the runtime's sandbox annotations, where known",
      properties: { uid: { type: 'string' }, name: { type: 'string' }, namespace: { type: 'string' } },
    },
    pid: { type: 'integer', description: 'hypervisor process id, where known' },
    discoveredAt: { type: 'string', format: 'date-time' },
    volumes: { type: 'array', items: { $ref: 'Attachment#' } },
    nics: { type: 'array', items: { $ref: 'Nic#' }, description: 'NICs vmplug hot-plugged' },
  },
} as const;

export const sandboxListSchema = {
  $id: 'SandboxList',
  type: 'object',
  additionalProperties: false,
  required: ['items'],
  properties: { items: { type: 'array', items: { $ref: 'Sandbox#' } } },
} as const;

export const problemSchema = {
  $id: 'Problem',
  type: 'object',
  description: 'RFC 9457 problem details (application/problem+json)',
  additionalProperties: false,
  required: ['type', 'title', 'status', 'detail', 'code'],
  properties: {
    type: { type: 'string' },
    title: { type: 'string' },
    status: { type: 'integer' },
    detail: { type: 'string' },
    code: { type: 'string', description: 'stable error code' },
    field: { type: 'string', description: 'the offending request field' },
    requestId: { type: 'string' },
    retryable: {
      type: 'boolean',
      description:
        'the same request may succeed later unchanged (not ready, Ceph unreachable, detach pending...)',
    },
  },
} as const;

const problemRef = { $ref: 'Problem#' } as const;

/** The error answers every API route may give, for the OpenAPI document. */
export const problemResponses = {
  '4xx': problemRef,
  '5xx': problemRef,
} as const;
