import { STATUS_CODES } from 'node:http';

// RFC 9457 problem details, the shape of every error the REST API answers with (DESIGN section
// 5): `type`, `title`, `status`, `detail`, a stable `code`, the offending `field` where there is
// one, and the request id so an operator can find the matching log lines. Codes of the attach
// engine come from core/errors.ts; the codes below are the daemon's own. Never rename a code.

export const PROBLEM_CONTENT_TYPE = 'application/problem+json; charset=utf-8';

export type DaemonErrorCode =
  | 'INVALID_REQUEST'
  | 'INVALID_JSON'
  | 'BODY_TOO_LARGE'
  | 'UNSUPPORTED_MEDIA_TYPE'
  | 'ROUTE_NOT_FOUND'
  | 'NOT_READY'
  | 'SHUTTING_DOWN'
  | 'INTERNAL';

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

/** `urn:vmplug:error:body-too-large` for BODY_TOO_LARGE; the same rule as core/errors.ts. */
export function problemType(code: string): string {
  return `urn:vmplug:error:${code.toLowerCase().replaceAll('_', '-')}`;
}

export function problem(status: number, code: string, detail: string, field?: string): ProblemDetails {
  const p: ProblemDetails = {
    type: problemType(code),
    title: STATUS_CODES[status] ?? 'Error',
    status,
    detail,
    code,
  };
  if (field !== undefined) p.field = field;
  return p;
}

/** An error the daemon itself raises with a known status and code. */
export class DaemonError extends Error {
  constructor(
    readonly status: number,
    readonly code: DaemonErrorCode,
    message: string,
    readonly field?: string,
  ) {
    super(message);
    this.name = 'DaemonError';
  }
}

/**
 * Errors carrying their own `code` (upper snake case), HTTP `status` and optional `field`: the
 * attach engine's VmplugError classes and DaemonError. Duck-typed so that any layer can add such
 * errors without the daemon knowing their classes.
 */
export interface CodedError {
  code: string;
  status: number;
  message: string;
  field?: string | undefined;
  retryable?: boolean;
  toProblem?: () => {
    type: string;
    title: string;
    status: number;
    detail: string;
    code: string;
    field?: string;
  };
}

export function isCodedError(err: unknown): err is CodedError {
  if (typeof err !== 'object' || err === null) return false;
  const e = err as Record<string, unknown>;
  return (
    typeof e.code === 'string' &&
    /^[A-Z][A-Z0-9_]*$/.test(e.code) &&
    !e.code.startsWith('FST_') &&
    Number.isInteger(e.status) &&
    (e.status as number) >= 400 &&
    (e.status as number) <= 599 &&
    typeof e.message === 'string' &&
    (e.field === undefined || typeof e.field === 'string')
  );
}

export function problemFromCoded(err: CodedError): ProblemDetails {
  let out: ProblemDetails;
  if (typeof err.toProblem === 'function') {
    const p = err.toProblem();
    out = problem(p.status, p.code, p.detail, p.field);
    // Keep the engine's own type and title (its error class names what went wrong).
    out.type = p.type;
    out.title = p.title;
  } else {
    out = problem(err.status, err.code, err.message, err.field);
  }
  // The engine knows (e.g. a sandbox whose monitor is briefly unreachable: 502, retryable); for
  // the daemon's own errors a 503 is the retryable kind.
  out.retryable = typeof err.retryable === 'boolean' ? err.retryable : err.status === 503;
  return out;
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
