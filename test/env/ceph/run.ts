import { execFile } from 'node:child_process';
import { CephEnvError } from './errors.js';

export interface RunOptions {
  timeoutMs: number;
  signal?: AbortSignal | undefined;
  env?: NodeJS.ProcessEnv;
  /** Return stdout as raw bytes (for `rbd export -`) instead of text. */
  binary?: boolean;
}

export interface RunResult {
  stdout: Buffer;
  stderr: string;
}

// A ceph CLI error must stay readable, but stderr may be long: keep its tail.
const stderrTail = (s: string): string => (s.length > 2000 ? `…${s.slice(-2000)}` : s).trim();

/**
 * Runs one program without a shell. Callers never put a cephx key in `args`: keys travel in
 * keyring files, so an error message quoting the command line cannot leak one.
 */
export function runProgram(file: string, args: readonly string[], opts: RunOptions): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(
      file,
      args,
      {
        timeout: opts.timeoutMs,
        killSignal: 'SIGKILL',
        maxBuffer: 256 * 1024 * 1024,
        encoding: 'buffer',
        env: opts.env ?? cephClientEnv(),
        ...(opts.signal ? { signal: opts.signal } : {}),
      },
      (error, stdout, stderr) => {
        const errText = stderr.toString('utf8');
        if (error) {
          const e = error as NodeJS.ErrnoException & { killed?: boolean; code?: unknown };
          const what = `${file} ${args.join(' ')}`;
          if (e.name === 'AbortError') {
            reject(new CephEnvError('CEPH_ABORTED', `${what}: aborted`, { cause: error }));
          } else if (e.killed) {
            reject(new CephEnvError('CEPH_TIMEOUT', `${what}: no answer in ${opts.timeoutMs} ms`));
          } else if (e.code === 'ENOENT') {
            reject(new CephEnvError('CEPH_NO_BINARY', `${file} not found: run test/env/setup`));
          } else {
            reject(
              new CephEnvError(
                'CEPH_COMMAND_FAILED',
                `${what} failed (${String(e.code)}): ${stderrTail(errText)}`,
              ),
            );
          }
          return;
        }
        resolve({ stdout, stderr: errText });
      },
    );
  });
}

/**
 * The environment for ceph tools: without CEPH_ARGS/CEPH_CONF from the caller's shell, which
 * would silently point them at another cluster or keyring.
 */
export function cephClientEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('CEPH_')) env[k] = v;
  }
  return env;
}
