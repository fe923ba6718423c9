import type { Assert, Matches } from './schema-type.js';

// GET / PATCH /v1/sandboxes/{sandboxId}/resources: a guest's vCPUs and memory.

export const guestResourcesSchema = {
  type: 'object',
  description: "A guest's vCPUs and memory now, and the ceilings it was started with",
  required: ['vcpus', 'maxVcpus', 'memoryMiB', 'maxMemoryMiB'],
  additionalProperties: false,
  properties: {
    vcpus: { type: 'integer', description: 'vCPUs plugged' },
    maxVcpus: { type: 'integer', description: "the guest's maxcpus" },
    memoryMiB: { type: 'integer', description: 'boot memory plus hot-added DIMMs' },
    maxMemoryMiB: { type: 'integer', description: "the guest's maxmem" },
  },
} as const;

export const resizeGuestBodySchema = {
  type: 'object',
  description:
    'Target vCPU count and/or memory. Memory changes in whole 128 MiB steps (one DIMM per increase); only what vmplug hot-added can be removed again, and only if the guest releases it.',
  additionalProperties: false,
  minProperties: 1,
  properties: {
    vcpus: { type: 'integer', minimum: 1, maximum: 1024, description: "1 up to the guest's maxcpus" },
    memoryMiB: {
      type: 'integer',
      minimum: 1,
      maximum: 16 * 1024 * 1024,
      description: "up to the guest's maxmem, a multiple of 128 MiB away from the current size",
    },
  },
} as const;

/** What the API answers: the guest's vCPUs and memory now, and the ceilings it was started with. */
export interface GuestResources {
  vcpus: number;
  maxVcpus: number;
  memoryMiB: number;
  maxMemoryMiB: number;
}

/** `PATCH .../resources`: absent fields stay as they are. */
export interface GuestResizeRequest {
  vcpus?: number;
  memoryMiB?: number;
}

export type ResourceWireChecks = [
  Assert<Matches<GuestResources, typeof guestResourcesSchema>>,
  Assert<Matches<GuestResizeRequest, typeof resizeGuestBodySchema>>,
];
