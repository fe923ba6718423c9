/** Errors of the test Ceph cluster; `code` is stable so tests and the CLI can act on it. */
export class CephEnvError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CephEnvError';
    this.code = code;
  }
}
