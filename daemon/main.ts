import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError, type DaemonConfig, describeSource, helpText, loadConfig } from './config.js';
import { createLogger, type Logger } from './logger.js';
import { openApiText } from './openapi.js';
import { DaemonError } from './problem.js';
import type { AttachService } from './routes/attach-service.js';
import type { ReadinessProbe } from './routes/health.js';
import { buildServer, type VmplugServer } from './server.js';
import { listenOnUnixSocket, type UnixListener } from './unix-socket.js';

// The vmplugd process: configuration, the REST server on its socket, and an orderly stop.

export interface DaemonOptions {
  config: DaemonConfig;
  logger: Logger;
  attachService: AttachService;
  readiness: ReadinessProbe;
  version?: string;
}

export interface StopResult {
  /** False when in-flight requests outlived the grace period and were cut off. */
  clean: boolean;
  ms: number;
}

export interface Daemon {
  app: VmplugServer;
  socketPath: string;
  /** Stops accepting, lets in-flight requests finish within `config.shutdownTimeoutMs`, closes. */
  stop(): Promise<StopResult>;
}

// After the grace period the engine's operations are aborted; this is how long they get to
// unwind (journal the abort, answer the client) before their connections are cut.
const ABORT_UNWIND_MS = 3_000;

export async function startDaemon(opts: DaemonOptions): Promise<Daemon> {
  const { config, logger } = opts;
  const shutdown = new AbortController();
  const serverDeps = {
    logger,
    attachService: opts.attachService,
    readiness: opts.readiness,
    shutdownSignal: shutdown.signal,
  };
  const app = await buildServer(
    opts.version === undefined ? serverDeps : { ...serverDeps, version: opts.version },
  );
  const listener: UnixListener = await listenOnUnixSocket(app, {
    path: config.socket,
    mode: config.socketMode,
    group: config.socketGroup,
    log: logger,
  });

  let stopping: Promise<StopResult> | undefined;
  const stop = (): Promise<StopResult> => {
    stopping ??= (async () => {
      const started = performance.now();
      logger.info(
        { graceMs: config.shutdownTimeoutMs },
        'shutting down: no new requests, finishing in-flight ones',
      );
      const closed = listener.close();
      let clean = await settlesWithin(closed, config.shutdownTimeoutMs);
      if (!clean) {
        logger.warn('in-flight requests outlived the grace period: aborting their operations');
        shutdown.abort(new DaemonError(503, 'SHUTTING_DOWN', 'vmplugd is shutting down'));
        if (!(await settlesWithin(closed, ABORT_UNWIND_MS))) {
          app.server.closeAllConnections();
          await closed;
        }
      } else {
        clean = true;
      }
      const ms = Math.round(performance.now() - started);
      logger.info({ clean, ms }, 'stopped');
      return { clean, ms };
    })();
    return stopping;
  };
  return { app, socketPath: listener.path, stop };
}

async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Stand-in until the attach engine is wired in: every volume call answers 503, and readiness
 * says why, so the daemon shell can run and be probed on its own.
 */
export function unavailableAttachService(): AttachService {
  const refuse = async (): Promise<never> => {
    throw new DaemonError(503, 'NOT_READY', 'the attach engine is not available in this build');
  };
  return { attach: refuse, detach: refuse, get: refuse, resize: refuse };
}

const engineMissing: ReadinessProbe = () => ({
  ready: false,
  checks: { attachEngine: { ok: false, detail: 'not available in this build' } },
});

export async function packageVersion(): Promise<string> {
  // Walk up from this file: it runs from daemon/ (sources) or dist/daemon/ (build).
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    try {
      const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as {
        name?: string;
        version?: string;
      };
      if (pkg.name === 'vmplug' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // not here; go up
    }
    dir = dirname(dir);
  }
  return '0.0.0';
}

export interface MainIo {
  argv: readonly string[];
  env: Readonly<Record<string, string | undefined>>;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
}

/** Runs vmplugd until SIGTERM or SIGINT; resolves with the process exit code. */
export async function main(io: MainIo): Promise<number> {
  let loaded: Awaited<ReturnType<typeof loadConfig>>;
  try {
    loaded = await loadConfig({ argv: io.argv, env: io.env });
  } catch (err) {
    if (err instanceof ConfigError) {
      io.stderr.write(`vmplugd: configuration error: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  const version = await packageVersion();
  if (loaded.action === 'help') {
    io.stdout.write(helpText());
    return 0;
  }
  if (loaded.action === 'version') {
    io.stdout.write(`${version}\n`);
    return 0;
  }
  if (loaded.action === 'print-openapi') {
    io.stdout.write(await openApiText(version));
    return 0;
  }

  const { config, sources } = loaded;
  const logger = createLogger({ level: config.logLevel, base: { node: config.nodeName } });
  logger.info(
    {
      version,
      configFile: loaded.file,
      config,
      sources: Object.fromEntries(Object.entries(sources).map(([k, s]) => [k, describeSource(s)])),
    },
    'vmplugd starting',
  );
  if (config.kubeconfig === null) logger.info('no kubeconfig configured');

  let daemon: Daemon;
  try {
    daemon = await startDaemon({
      config,
      logger,
      attachService: unavailableAttachService(),
      readiness: engineMissing,
      version,
    });
  } catch (err) {
    logger.fatal({ err }, 'vmplugd could not start');
    return 1;
  }

  const signalled = await new Promise<NodeJS.Signals>((resolve) => {
    const onSignal = (signal: NodeJS.Signals): void => {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
      // A second signal while draining means "now".
      const now = (again: NodeJS.Signals): void => {
        logger.warn({ signal: again }, 'second signal during shutdown: exiting at once');
        process.exit(1);
      };
      process.once('SIGTERM', now);
      process.once('SIGINT', now);
      resolve(signal);
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
  logger.info({ signal: signalled }, 'signal received');
  const result = await daemon.stop();
  return result.clean ? 0 : 1;
}
