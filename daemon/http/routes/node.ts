import type { FastifyPluginAsync } from 'fastify';
import { problemResponses } from '../../../api/index.js';
import { VmplugError } from '../../../core/errors.js';
import type { NodeFacts } from '../../report/node-facts.js';

// GET /v1/node (node facts) and GET /metrics (Prometheus text). Both read caches: node facts are
// gathered in the background (daemon/report/node-facts.ts), metrics are counters in memory.

export interface NodeRoutesOptions {
  /** The node facts; may wait a bounded time for a first gathering. Absent: 503. */
  facts?: (signal: AbortSignal) => Promise<NodeFacts>;
  /** Absent: 503. */
  metrics?: { contentType: string; text(): Promise<string> };
}

const NODE_FACTS_ID = 'NodeFacts';

export const nodeFactsSchema = {
  $id: NODE_FACTS_ID,
  type: 'object',
  description: 'Facts about this node (systeminformation). A part not gathered yet is absent.',
  properties: {
    hostname: { type: 'string' },
    os: {
      type: 'object',
      properties: {
        distro: { type: 'string' },
        release: { type: 'string' },
        kernel: { type: 'string' },
        arch: { type: 'string' },
      },
    },
    cpu: {
      type: 'object',
      properties: {
        model: { type: 'string' },
        cores: { type: 'integer', description: 'physical cores' },
        threads: { type: 'integer', description: 'logical CPUs' },
      },
    },
    virtualization: {
      type: 'object',
      properties: {
        cpuFlag: {
          type: 'string',
          enum: ['vmx', 'svm'],
          nullable: true,
          description: 'the CPU flag offering hardware virtualization; null when neither shows',
        },
        kvmDevice: {
          type: 'string',
          enum: ['accessible', 'present', 'missing'],
          description: '/dev/kvm: opened read-write by vmplugd, present but not accessible, or absent',
        },
      },
    },
    memory: {
      type: 'object',
      properties: {
        totalBytes: { type: 'integer' },
        freeBytes: { type: 'integer' },
        availableBytes: { type: 'integer' },
      },
    },
    blockDevices: {
      type: 'array',
      items: {
        type: 'object',
        required: ['name'],
        properties: {
          name: { type: 'string' },
          type: { type: 'string', description: 'lsblk TYPE: disk, part, loop, rom...' },
          sizeBytes: { type: 'integer' },
          model: { type: 'string' },
          serial: { type: 'string' },
          removable: { type: 'boolean' },
        },
      },
    },
    nics: {
      type: 'array',
      description: 'host network interfaces (loopback left out)',
      items: {
        type: 'object',
        required: ['name'],
        properties: {
          name: { type: 'string' },
          mac: { type: 'string' },
          up: { type: 'boolean' },
          speedMbps: { type: 'integer' },
          mtu: { type: 'integer' },
          virtual: { type: 'boolean' },
        },
      },
    },
    refreshedAt: {
      type: 'string',
      format: 'date-time',
      description: 'when memory, block devices and /dev/kvm were last read (cached about 30 s)',
    },
  },
} as const;

export const nodeRoutes: FastifyPluginAsync<NodeRoutesOptions> = async (app, opts) => {
  app.addSchema(nodeFactsSchema);

  app.get(
    '/v1/node',
    {
      schema: {
        summary: 'Node facts: CPU, memory, block devices, NICs, virtualization support',
        tags: ['node'],
        response: { 200: { $ref: `${NODE_FACTS_ID}#` }, ...problemResponses },
      },
    },
    async () => {
      if (opts.facts === undefined) throw notServed('node facts');
      return opts.facts(AbortSignal.timeout(5_000));
    },
  );

  const metrics = opts.metrics;
  app.get(
    '/metrics',
    {
      schema: {
        summary: 'Prometheus metrics (text exposition format)',
        tags: ['health'],
        produces: ['text/plain'],
        response: {
          200: { type: 'string', description: 'Prometheus text format 0.0.4' },
          ...problemResponses,
        },
      },
    },
    async (_request, reply) => {
      if (metrics === undefined) throw notServed('metrics');
      const text = await metrics.text();
      return reply.type(metrics.contentType).send(text);
    },
  );
};

function notServed(what: string): VmplugError {
  return new VmplugError('NOT_READY', `${what} are not served by this daemon instance`);
}
