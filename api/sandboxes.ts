import { idSchema, listSchema } from './common.js';
import type { Nic } from './nics.js';
import type { Assert, Matches } from './schema-type.js';
import type { Attachment } from './volumes.js';

// The sandbox routes' wire contract: what the node runs, with the volumes and NICs vmplug put there.

export const sandboxParamsSchema = {
  type: 'object',
  required: ['sandboxId'],
  properties: { sandboxId: idSchema('Kata sandbox id, or libvirt domain name') },
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

export const sandboxListSchema = listSchema('SandboxList', 'Sandbox#');

/** The API's coarse state of a sandbox. */
export type SandboxState = (typeof sandboxSchema.properties.state.enum)[number];

export interface SandboxPod {
  uid?: string;
  name?: string;
  namespace?: string;
}

/** One sandbox as a catalog knows it, before volumes are added. */
export interface SandboxRecord {
  id: string;
  kind: 'kata' | 'libvirt';
  state: SandboxState;
  /** Why it is unreachable. */
  reason?: string;
  /** The hypervisor's own run state (QEMU's query-status) when known. */
  hypervisorStatus?: string;
  pod?: SandboxPod;
  pid?: number;
  /** When vmplugd first saw it (ISO 8601). */
  discoveredAt: string;
}

/** A sandbox as the API shows it. */
export interface Sandbox extends SandboxRecord {
  volumes: Attachment[];
  /** NICs vmplug hot-plugged; absent when the daemon serves no NIC engine. */
  nics?: Nic[];
}

export type SandboxWireChecks = [
  Assert<Matches<Sandbox, typeof sandboxSchema>>,
  Assert<Matches<{ podUid?: string }, typeof sandboxQuerySchema>>,
];
