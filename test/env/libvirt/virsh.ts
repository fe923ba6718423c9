/**
 * Runs `virsh` for the test bed (the product talks to libvirt through a binding, never virsh).
 * Arguments go as an array: nothing is ever interpreted by a shell.
 */
import { execFile } from 'node:child_process';
import { LibvirtTestbedError } from './errors.js';

export const defaultLibvirtUri = 'qemu:///system';
const defaultTimeoutMs = 30_000;

export interface VirshOptions {
  uri?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface VirshResult {
  stdout: string;
  stderr: string;
}

export class VirshError extends LibvirtTestbedError {
  readonly args: readonly string[];
  readonly stderr: string;
  constructor(args: readonly string[], stderr: string, options?: { cause?: unknown }) {
    super('LIBVIRT_VIRSH_FAILED', `virsh ${args.join(' ')} failed: ${stderr.trim().slice(-2000)}`, options);
    this.name = 'VirshError';
    this.args = args;
    this.stderr = stderr;
  }
}

export function virsh(args: readonly string[], opts: VirshOptions = {}): Promise<VirshResult> {
  const full = ['-q', '-c', opts.uri ?? defaultLibvirtUri, ...args];
  return new Promise((resolve, reject) => {
    execFile(
      'virsh',
      full,
      {
        timeout: opts.timeoutMs ?? defaultTimeoutMs,
        killSignal: 'SIGKILL',
        maxBuffer: 8 * 1024 * 1024,
        ...(opts.signal ? { signal: opts.signal } : {}),
      },
      (err, stdout, stderr) => {
        if (err) {
          const why = (err as { killed?: boolean }).killed
            ? `${String(stderr)} (killed: timeout or abort)`
            : String(stderr);
          reject(new VirshError(args, why || err.message, { cause: err }));
        } else {
          resolve({ stdout: String(stdout), stderr: String(stderr) });
        }
      },
    );
  });
}
