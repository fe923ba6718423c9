import type { FastifyPluginAsync, FastifyRequest } from 'fastify';
import { problemResponses, sandboxParamsSchema, sandboxQuerySchema } from '../../../api/index.js';
import { NotFoundError } from '../../../core/errors.js';
import { parseSandboxId, type SandboxId } from '../../../core/ids.js';
import type { SandboxCatalog, SandboxRecord } from '../../../core/sandbox.js';
import type { NicView } from '../../../net/index.js';
import type { Attachment, ListVolumes, OperationContext } from '../../../storage/attach-service.js';

// What the node runs, as the API shows it: the catalogs' sandboxes (core/sandbox.ts) with the
// volumes and NICs the engines have attached to each.

/** api/ Sandbox as the engines hold it (net/'s NicView; the schema serializes it). */
export interface SandboxView extends SandboxRecord {
  volumes: Attachment[];
  nics?: NicView[];
}

/** The NIC engine's NICs of a sandbox. */
export type ListNics = (sandboxId: string) => Promise<NicView[]>;

export interface SandboxRoutesOptions {
  catalog: SandboxCatalog;
  listVolumes: ListVolumes;
  listNics?: ListNics;
  shutdownSignal: AbortSignal;
}

export const sandboxRoutes: FastifyPluginAsync<SandboxRoutesOptions> = async (app, opts) => {
  const { catalog, listVolumes, listNics, shutdownSignal } = opts;
  const ctx = (request: FastifyRequest): OperationContext => ({ signal: shutdownSignal, log: request.log });

  const withVolumes = async (record: SandboxRecord, request: FastifyRequest): Promise<SandboxView> => {
    const view: SandboxView = { ...record, volumes: await listVolumes(record.id as SandboxId, ctx(request)) };
    if (listNics !== undefined) view.nics = await listNics(record.id);
    return view;
  };

  app.get(
    '/v1/sandboxes',
    {
      schema: {
        summary: 'Sandboxes on this node with their state, pod and volumes',
        tags: ['sandboxes'],
        querystring: sandboxQuerySchema,
        response: { 200: { $ref: 'SandboxList#' }, ...problemResponses },
      },
    },
    async (request) => {
      const { podUid } = request.query as { podUid?: string };
      const records = catalog.list().filter((s) => podUid === undefined || s.pod?.uid === podUid);
      return { items: await Promise.all(records.map((r) => withVolumes(r, request))) };
    },
  );

  app.get(
    '/v1/sandboxes/:sandboxId',
    {
      attachValidation: true,
      schema: {
        summary: 'One sandbox',
        tags: ['sandboxes'],
        params: sandboxParamsSchema,
        response: { 200: { $ref: 'Sandbox#' }, ...problemResponses },
      },
    },
    async (request) => {
      const sandboxId = parseSandboxId((request.params as Record<string, unknown>).sandboxId);
      if (request.validationError !== undefined) throw request.validationError;
      const record = catalog.get(sandboxId);
      if (record === undefined) throw new NotFoundError('sandbox', sandboxId);
      return withVolumes(record, request);
    },
  );
};
