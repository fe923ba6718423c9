import { UsageError } from './args.js';
import { VmplugApiError, VmplugTransportError } from './client.js';

// What `vmplug` exits with, so a CSI plugin can act without parsing text. Stable: documented in
// `vmplug --help` and docs/cli.md.

export const EXIT = {
  OK: 0,
  /** Anything else: internal errors, QEMU refused a step, an unknown route. */
  OTHER: 1,
  /** Bad command line or input the daemon refused (400, 413, 415, 422). Fix the request. */
  USAGE: 2,
  /** No such sandbox or volume (404). */
  NOT_FOUND: 3,
  /** Conflict (409): attached with another spec, lanes full, an operation in the way. */
  CONFLICT: 4,
  /** Try again later unchanged: 503 (not ready, shutting down, Ceph unreachable, detach pending), timeouts, daemon not reachable. */
  RETRY: 5,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

export function exitCodeFor(err: unknown): ExitCode {
  if (err instanceof UsageError) return EXIT.USAGE;
  if (err instanceof VmplugApiError) {
    if (err.retryable) return EXIT.RETRY;
    if (err.code === 'ROUTE_NOT_FOUND') return EXIT.OTHER;
    if (err.status === 404) return EXIT.NOT_FOUND;
    if (err.status === 409) return EXIT.CONFLICT;
    if (err.status === 400 || err.status === 413 || err.status === 415 || err.status === 422)
      return EXIT.USAGE;
    return EXIT.OTHER;
  }
  if (err instanceof VmplugTransportError) return err.retryable ? EXIT.RETRY : EXIT.OTHER;
  if (err instanceof KeyFileError) return EXIT.USAGE;
  return EXIT.OTHER;
}

/** The key file could not be read or holds no key. */
export class KeyFileError extends Error {
  readonly code = 'KEY_FILE';
  constructor(message: string) {
    super(message);
    this.name = 'KeyFileError';
  }
}

export const EXIT_CODES_HELP = `Exit codes:
  0  success
  1  other error (internal error, QEMU refused a step, route not served by this vmplugd)
  2  usage error or input refused by vmplugd (HTTP 400, 413, 415, 422): fix the request
  3  sandbox or volume not found (HTTP 404)
  4  conflict (HTTP 409): attached with another spec, no free lane, operation in the way
  5  retryable: try again unchanged (HTTP 503: not ready, shutting down, Ceph unreachable,
     detach pending; a sandbox monitor briefly unreachable; timeouts; vmplugd not reachable)
`;
