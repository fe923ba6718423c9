export class LibvirtTestbedError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'LibvirtTestbedError';
    this.code = code;
  }
}
