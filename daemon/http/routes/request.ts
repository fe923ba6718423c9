import type { FastifyBaseLogger, FastifyReply, FastifyRequest } from 'fastify';
import { parseSandboxId, type SandboxId } from '../../../core/ids.js';

// What every route reads off a request the same way. Routes set attachValidation: ids and bodies
// are checked by our own parsers first (their codes: INVALID_ID 400, INVALID_FIELD 422 naming
// the field); a schema error left over after them is raised as a plain 400.

/**
 * The context of the operations a route starts: the daemon's shutdown signal (a client hanging
 * up does not abort an operation; the journal makes a finished one safe) and the request's logger.
 */
export function operationContext(
  shutdownSignal: AbortSignal,
): (request: FastifyRequest) => { signal: AbortSignal; log: FastifyBaseLogger } {
  return (request) => ({ signal: shutdownSignal, log: request.log });
}

/** The path's `sandboxId`, through its parser (INVALID_ID 400). */
export function sandboxIdOf(request: FastifyRequest): SandboxId {
  return parseSandboxId((request.params as Record<string, unknown>).sandboxId);
}

/** The path's sandbox id and the id of one of its children (a volume, a NIC), each parsed. */
export function childIds<K extends string, C>(
  request: FastifyRequest,
  key: K,
  parse: (raw: unknown) => C,
): { sandboxId: SandboxId } & Record<K, C> {
  const params = request.params as Record<string, unknown>;
  return { sandboxId: parseSandboxId(params.sandboxId), [key]: parse(params[key]) } as {
    sandboxId: SandboxId;
  } & Record<K, C>;
}

/** Raises the schema's verdict once our parsers have passed the request. */
export function schemaLeftover(request: FastifyRequest): void {
  if (request.validationError !== undefined) throw request.validationError;
}

/**
 * A route's options: `attachValidation`, so our parsers judge the request first (their codes)
 * and the schema's verdict comes after them (`schemaLeftover`); the schema describes the route.
 */
export function validatedRoute<S>(schema: S): { attachValidation: true; schema: S } {
  return { attachValidation: true, schema };
}

/** The answer of an idempotent PUT: 201 with the resource's Location when created, else 200. */
export function putAnswer(
  reply: FastifyReply,
  created: boolean,
  location: string,
  body: unknown,
): FastifyReply {
  if (created) reply.header('location', location);
  return reply.code(created ? 201 : 200).send(body);
}
