import { VmplugError, type VmplugErrorCode } from '../../core/errors.js';

// RFC 9457 problem details, the shape of every error the REST API answers with (DESIGN section
// 5): `type`, `title`, `status`, `detail`, a stable `code`, the offending `field` where there is
// one, and the request id so an operator can find the matching log lines. Every code, its status
// and title come from the one table in core/errors.ts. Never rename a code.

export const PROBLEM_CONTENT_TYPE = 'application/problem+json; charset=utf-8';

export interface ProblemDetails {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: string;
  field?: string;
  requestId?: string;
  /** True when the same request may succeed later unchanged (the CLI exits 5, a CSI plugin requeues). */
  retryable?: boolean;
}

/** The problem for an error of ours: everything by its code, `retryable` included. */
export function problemOf(err: VmplugError): ProblemDetails {
  return { ...err.toProblem(), retryable: err.retryable };
}

/**
 * The problem for a request refused before any handler ran (schema, parser, routing). `status`
 * overrides the code's own only for fastify's assorted 4xx client errors.
 */
export function problem(
  code: VmplugErrorCode,
  detail: string,
  options: { field?: string; status?: number } = {},
): ProblemDetails {
  return new VmplugError(code, detail, options).toProblem();
}

/** Fastify's schema validation error entry (ajv's ErrorObject, the parts we read). */
export interface SchemaIssue {
  instancePath?: string;
  keyword?: string;
  message?: string;
  params?: Record<string, unknown>;
}

/**
 * The request field a schema error is about, in the request's own spelling: `source.monitors[1]`
 * for a body property, the parameter name for a path or query parameter.
 */
export function fieldOfSchemaIssue(issue: SchemaIssue, context: string | undefined): string {
  const segments = (issue.instancePath ?? '')
    .split('/')
    .slice(1)
    .map((s) => s.replaceAll('~1', '/').replaceAll('~0', '~'));
  const params = issue.params ?? {};
  const extra =
    typeof params.missingProperty === 'string'
      ? params.missingProperty
      : typeof params.additionalProperty === 'string'
        ? params.additionalProperty
        : undefined;
  if (extra !== undefined) segments.push(extra);
  let field = '';
  for (const s of segments) {
    if (/^[0-9]+$/.test(s)) field += `[${s}]`;
    else if (/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(s)) field += field === '' ? s : `.${s}`;
    else field += `[${JSON.stringify(s)}]`;
  }
  if (field === '') return context === 'body' || context === undefined ? '(body)' : `(${context})`;
  return field;
}

export function schemaIssueMessage(issue: SchemaIssue): string {
  const params = issue.params ?? {};
  switch (issue.keyword) {
    case 'required':
      return 'is required';
    case 'additionalProperties':
      return 'is not a known field';
    case 'enum':
      return `must be one of ${(params.allowedValues as unknown[] | undefined)?.map((v) => JSON.stringify(v)).join(', ') ?? 'the allowed values'}`;
    default:
      return issue.message ?? 'is invalid';
  }
}
