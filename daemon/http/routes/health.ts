import type { FastifyPluginAsync } from 'fastify';
import { problemResponses } from '../../../api/index.js';
import { VmplugError } from '../../../core/errors.js';
import type { Readiness, ReadinessProbe } from '../../../core/readiness.js';

export interface HealthRoutesOptions {
  readiness: ReadinessProbe;
  /** Bound on one probe call. */
  probeTimeoutMs?: number;
}

const checksSchema = {
  type: 'object',
  additionalProperties: {
    type: 'object',
    additionalProperties: false,
    required: ['ok'],
    properties: { ok: { type: 'boolean' }, detail: { type: 'string' } },
  },
} as const;

export const healthRoutes: FastifyPluginAsync<HealthRoutesOptions> = async (app, opts) => {
  const probeTimeoutMs = opts.probeTimeoutMs ?? 2_000;

  app.get(
    '/healthz',
    {
      schema: {
        summary: 'Liveness: the process serves requests',
        tags: ['health'],
        response: {
          200: { type: 'object', properties: { status: { type: 'string', enum: ['ok'] } } },
        },
      },
    },
    async () => ({ status: 'ok' as const }),
  );

  app.get(
    '/readyz',
    {
      schema: {
        summary: 'Readiness: the daemon can serve attach requests',
        tags: ['health'],
        response: {
          200: {
            type: 'object',
            properties: { status: { type: 'string', enum: ['ready'] }, checks: checksSchema },
          },
          ...problemResponses,
        },
      },
    },
    async (request) => {
      const signal = AbortSignal.timeout(probeTimeoutMs);
      let readiness: Readiness;
      try {
        readiness = await Promise.race([
          Promise.resolve(opts.readiness(signal)),
          new Promise<never>((_, reject) => {
            signal.addEventListener(
              'abort',
              () => reject(new Error(`no answer within ${probeTimeoutMs} ms`)),
              {
                once: true,
              },
            );
          }),
        ]);
      } catch (err) {
        request.log.warn({ err }, 'readiness probe failed');
        throw new VmplugError('NOT_READY', `readiness probe failed: ${(err as Error).message}`);
      }
      if (!readiness.ready) {
        const failing = Object.entries(readiness.checks)
          .filter(([, c]) => !c.ok)
          .map(([name, c]) => (c.detail === undefined ? name : `${name}: ${c.detail}`));
        throw new VmplugError('NOT_READY', `not ready${failing.length > 0 ? `: ${failing.join('; ')}` : ''}`);
      }
      return { status: 'ready' as const, checks: readiness.checks };
    },
  );
};
