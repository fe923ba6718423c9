import { idSchema, lastErrorSchema } from './common.js';
import type { Assert, Matches } from './schema-type.js';

// The NIC routes' wire contract: schemas and the types the client and the CLI use, checked
// against each other. net/spec.ts's parser checks the body fully (INVALID_FIELD naming the field),
// so the body schema describes and never refuses more than that parser.

export const nicParamsSchema = {
  type: 'object',
  required: ['sandboxId', 'nicId'],
  properties: {
    sandboxId: idSchema('Kata sandbox id'),
    nicId: idSchema('NIC id, chosen by the caller (e.g. the network attachment name)'),
  },
} as const;

const ifname = { type: 'string', minLength: 1, maxLength: 15 } as const;

export const nicBodySchema = {
  type: 'object',
  additionalProperties: false,
  required: ['hostInterface'],
  properties: {
    mac: {
      type: 'string',
      description:
        'Unicast MAC, xx:xx:xx:xx:xx:xx. Default: derived from a hash of (sandbox, nic), locally administered',
    },
    hostInterface: {
      type: 'object',
      additionalProperties: false,
      required: ['type'],
      description:
        'Exactly one of `name` (an existing tap; vmplug uses it and never deletes it) and `bridge` (vmplug creates a tap vmpt<hash>, enslaves it to this existing bridge, and deletes it on detach)',
      properties: {
        type: { type: 'string', enum: ['tap'] },
        name: { ...ifname, description: 'an existing tap device on the node' },
        bridge: { ...ifname, description: 'an existing Linux bridge on the node' },
      },
    },
    mtu: {
      type: 'integer',
      minimum: 68,
      maximum: 65535,
      description: "set on the tap and offered to the guest's virtio-net driver (host_mtu)",
    },
    queues: { type: 'integer', enum: [1], description: 'only 1 (multiqueue is not supported yet)' },
  },
} as const;

export const nicSchema = {
  $id: 'Nic',
  type: 'object',
  additionalProperties: false,
  required: [
    'sandboxId',
    'nicId',
    'state',
    'mac',
    'spec',
    'tap',
    'tapOwned',
    'netdevId',
    'deviceId',
    'timeline',
  ],
  properties: {
    sandboxId: { type: 'string' },
    nicId: { type: 'string' },
    state: {
      type: 'string',
      enum: [
        'Pending',
        'TapCreated',
        'NetdevAdded',
        'Attached',
        'Detaching',
        'DeviceDeleted',
        'NetdevDeleted',
      ],
    },
    mac: { type: 'string' },
    spec: {
      type: 'object',
      additionalProperties: false,
      required: ['hostInterface', 'queues'],
      properties: {
        mac: { type: 'string' },
        hostInterface: {
          type: 'object',
          additionalProperties: false,
          required: ['type'],
          properties: { type: { type: 'string' }, name: { type: 'string' }, bridge: { type: 'string' } },
        },
        mtu: { type: 'integer' },
        queues: { type: 'integer' },
      },
    },
    tap: { type: 'string', description: 'the host tap QEMU uses' },
    tapOwned: { type: 'boolean', description: 'vmplug created the tap and deletes it on detach' },
    netdevId: { type: 'string', description: 'QEMU netdev id (vmpn-<hash>)' },
    deviceId: { type: 'string', description: 'QEMU virtio-net-pci id (vmpnd-<hash>)' },
    port: { type: 'string', description: 'the vmplug root port the device sits on' },
    timeline: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['step', 'at', 'ms'],
        properties: { step: { type: 'string' }, at: { type: 'string' }, ms: { type: 'number' } },
      },
    },
    lastError: lastErrorSchema,
  },
} as const;

/** PUT .../nics/{nicId} body: exactly one of hostInterface.name and hostInterface.bridge. */
export interface NicRequest {
  mac?: string;
  hostInterface: { type: 'tap'; name?: string; bridge?: string };
  mtu?: number;
  queues?: 1;
}

export type NicState = (typeof nicSchema.properties.state.enum)[number];

/** A NIC as vmplugd shows it. */
export interface Nic {
  sandboxId: string;
  nicId: string;
  state: NicState;
  mac: string;
  /** The request's spec with its defaults filled in. */
  spec: NicRequest & { queues: 1 };
  /** The host tap QEMU uses, and whether vmplug created it (and so deletes it). */
  tap: string;
  tapOwned: boolean;
  netdevId: string;
  deviceId: string;
  /** The vmplug root port the device sits on. */
  port?: string;
  timeline: Array<{ step: NicState; at: string; ms: number }>;
  lastError?: { code: string; message: string; at: string };
}

export type NicWireChecks = [
  Assert<Matches<NicRequest, typeof nicBodySchema>>,
  Assert<Matches<Nic, typeof nicSchema>>,
];
