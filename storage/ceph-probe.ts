import net from 'node:net';
import { CephUnreachableError } from '../core/errors.js';
import { type AttachSpec, formatMonitor, type Monitor } from './volume-spec.js';

// Before an rbd blockdev-add, vmplug checks that a Ceph monitor answers: librbd's connect runs
// inside QEMU's main loop, so a dead cluster would freeze the guest's monitor (and I/O
// completion) for as long as client_mount_timeout. A monitor is taken as answering when it
// accepts a TCP connection and sends the messenger banner: both msgr1 ("ceph v027") and msgr2
// ("ceph v2\n") servers send theirs first, unasked. A port that accepts but stays silent (a
// hung daemon, a foreign service) does not count.

const BANNER_PREFIX = Buffer.from('ceph v');

export const DEFAULT_CEPH_PROBE_TIMEOUT_MS = 3_000;

export interface CephProbeOptions {
  /** Bound of the whole probe (all monitors are tried at once). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface CephProbeResult {
  /** The first monitor that answered. */
  monitor: string;
  ms: number;
}

/** Resolves when any monitor answers; throws CephUnreachableError when none does in time. */
export async function probeMonitors(
  monitors: readonly Monitor[],
  opts: CephProbeOptions = {},
): Promise<CephProbeResult> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_CEPH_PROBE_TIMEOUT_MS;
  const names = monitors.map(formatMonitor);
  const started = performance.now();
  const stop = new AbortController();
  const timer = setTimeout(() => stop.abort(new Error('timeout')), timeoutMs);
  const onAbort = (): void => stop.abort(opts.signal?.reason);
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    opts.signal?.throwIfAborted();
    const winner = await Promise.any(monitors.map((m, i) => probeOne(m, names[i] as string, stop.signal)));
    return { monitor: winner, ms: Math.round(performance.now() - started) };
  } catch (err) {
    if (opts.signal?.aborted) throw opts.signal.reason;
    const causes = err instanceof AggregateError ? err.errors : [err];
    throw new CephUnreachableError(names, Math.round(performance.now() - started), {
      cause: new AggregateError(causes, 'no monitor answered'),
    });
  } finally {
    clearTimeout(timer);
    opts.signal?.removeEventListener('abort', onAbort);
    stop.abort();
  }
}

function probeOne(m: Monitor, name: string, signal: AbortSignal): Promise<string> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(new Error(`${name}: not tried`));
    const socket = net.createConnection({ host: m.host, port: m.port });
    let got = Buffer.alloc(0);
    const done = (err?: Error): void => {
      signal.removeEventListener('abort', onAbort);
      socket.destroy();
      if (err) reject(err);
      else resolve(name);
    };
    const onAbort = (): void => done(new Error(`${name}: no banner in time`));
    signal.addEventListener('abort', onAbort, { once: true });
    socket.on('data', (chunk: Buffer) => {
      got = Buffer.concat([got, chunk]).subarray(0, BANNER_PREFIX.length);
      if (got.length < BANNER_PREFIX.length) return;
      if (got.equals(BANNER_PREFIX)) done();
      else done(new Error(`${name}: not a Ceph monitor (unexpected banner)`));
    });
    socket.on('error', (e: NodeJS.ErrnoException) => done(new Error(`${name}: ${e.code ?? e.message}`)));
    socket.on('end', () => done(new Error(`${name}: closed before its banner`)));
  });
}

/**
 * The check of an rbd attach before anything exists, its journal record included: with Ceph down
 * the attach fails here and leaves nothing behind. Block mode has nothing to check.
 */
export async function checkCephFirst(
  spec: AttachSpec,
  opts: CephProbeOptions,
  log: { debug(obj: Record<string, unknown>, msg?: string): void },
): Promise<void> {
  if (spec.mode !== 'rbd') return;
  const probe = await probeMonitors(spec.source.monitors, opts);
  log.debug({ monitor: probe.monitor, ms: probe.ms }, 'ceph monitor answered');
}
