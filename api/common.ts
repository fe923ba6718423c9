// What every route of the REST API shares: the id rule and the error answer.

/** The longest sandbox, volume or NIC id (core/ids.ts holds the same bound; a unit test pins both). */
export const ID_MAX_LENGTH = 128;

/** core/ids.ts's rule written as a pattern: a letter or digit first, then [A-Za-z0-9_.-], no "..". */
export const ID_PATTERN = `^(?!.*\\.\\.)[A-Za-z0-9][A-Za-z0-9_.-]{0,${ID_MAX_LENGTH - 1}}$`;

export const idSchema = (description: string) =>
  ({ type: 'string', minLength: 1, maxLength: ID_MAX_LENGTH, pattern: ID_PATTERN, description }) as const;

/** A collection's answer `{ items: [...] }`, its items by reference to the schema `$id` they name. */
export const listSchema = <const Id extends string, const Ref extends string>(id: Id, itemRef: Ref) =>
  ({
    $id: id,
    type: 'object',
    additionalProperties: false,
    required: ['items'],
    properties: { items: { type: 'array', items: { $ref: itemRef } } },
  }) as const;

/** The last failure of a volume or NIC operation, kept on the record. */
export const lastErrorSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['code', 'message', 'at'],
  properties: { code: { type: 'string' }, message: { type: 'string' }, at: { type: 'string' } },
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
