import { constants } from 'node:fs';
import { access, mkdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { VmplugError } from '../core/errors.js';
import { OperationGate } from '../core/gate.js';
import { isSandboxId } from '../core/ids.js';
import type { Readiness, ReadinessCheck } from '../core/readiness.js';
import { NicEngine, type NicView } from '../net/index.js';
import type { AttachService } from '../storage/attach-service.js';
import { Journal } from '../storage/journal.js';
import type { PodVolumeEngine } from '../storage/pod/engine.js';
import { ListenFdsError, parseListenFds } from '../systemd/listen-fds.js';
import { canSendAsParent, NotifyEnvError, parseNotifyEnv, SystemdNotifier } from '../systemd/notify.js';
import {
  ConfigError,
  type DaemonConfig,
  describeSource,
  helpText,
  kataSbsRootOf,
  loadConfig,
} from './config.js';
import { FAILPOINT_ENV, failpointHook, parseFailpoint, type StateWriteHook } from './failpoints.js';
import { openApiText } from './http/openapi.js';
import { buildServer, type ServerDeps, type VmplugServer } from './http/server.js';
import {
  listenOnInheritedSocket,
  listenOnUnixSocket,
  removeStaleSocket,
  type UnixListener,
} from './http/unix-socket.js';
import { createLogger, type Logger } from './logger.js';
import { ReconcileLoop } from './reconcile-loop.js';
import type { NicStatus } from './report/kube/status.js';
import { DaemonMetrics, measuredReconcile } from './report/metrics.js';
import { observeNicService } from './report/observed-nics.js';
import { observePodService } from './report/observed-pods.js';
import { observeAttachService } from './report/observed-service.js';
import { PodEvents } from './report/pod-events.js';
import { PodVolumeWatch } from './report/pod-volumes.js';
import { createStatusFeed, type StatusFeed, type StatusFeedDeps } from './report/status-feed.js';
import { resizerResolver } from './resize/resolve.js';
import { createResourceService } from './resize/service.js';
import { combineCatalogs, discoveryCatalog } from './sandboxes/catalog.js';
import { type DiscoveryOptions, SandboxDiscovery } from './sandboxes/discovery.js';
import { createAttachService, type EngineDeps, type EngineHandle } from './volumes/attach-engine.js';
import { createPodEngine } from './volumes/pod-engine.js';

// The vmplugd process: configuration, the REST server on its socket, and an orderly stop.

/** What the REST server serves (its deps but the shutdown signal, which the daemon owns), plus the process's own. */
export interface DaemonOptions extends Omit<ServerDeps, 'shutdownSignal' | 'bodyLimit'> {
  config: DaemonConfig;
  /** A listening socket passed by systemd (socket activation): served instead of binding config.socket. */
  inheritedSocketFd?: number;
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
  const { config: _config, inheritedSocketFd: _fd, ...served } = opts;
  const app = await buildServer({ ...served, shutdownSignal: shutdown.signal });
  const listener: UnixListener =
    opts.inheritedSocketFd !== undefined
      ? await listenOnInheritedSocket(app, { fd: opts.inheritedSocketFd, path: config.socket, log: logger })
      : await listenOnUnixSocket(app, {
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
      const clean = await settlesWithin(closed, config.shutdownTimeoutMs);
      if (!clean) {
        logger.warn('in-flight requests outlived the grace period: aborting their operations');
        shutdown.abort(new VmplugError('SHUTTING_DOWN', 'vmplugd is shutting down'));
        if (!(await settlesWithin(closed, ABORT_UNWIND_MS))) {
          app.server.closeAllConnections();
          await closed;
        }
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

export interface VmplugdOptions {
  config: DaemonConfig;
  logger: Logger;
  version?: string;
  /** Runs around each journal write (the crash failpoints, daemon/failpoints.ts). */
  onJournalWrite?: StateWriteHook;
  /** Replaces createAttachService (tests run the daemon with a stub engine). */
  createEngine?: (deps: EngineDeps) => Promise<EngineHandle>;
  /** Discovery tuning beyond the config (tests shorten the QMP backoff). */
  discovery?: Partial<Omit<DiscoveryOptions, 'monitorDir' | 'kata' | 'logger'>>;
  /** Node facts/Kubernetes reporter tuning (tests inject node facts, shorten periods). */
  reporting?: Partial<Pick<StatusFeedDeps, 'nodeFacts' | 'env' | 'reporter' | 'resyncMs'>>;
  /** Serve this inherited listening fd (systemd socket activation) instead of binding config.socket. */
  inheritedSocketFd?: number;
}

const STARTUP_SETTLE_MS = 5_000;

/** The whole daemon: journal, discovery, engine, reconcile loop and the REST server. */
export interface Vmplugd {
  daemon: Daemon;
  discovery: SandboxDiscovery;
  engine: EngineHandle;
  /** NIC hot-plug (net/), journalled under <stateDir>/nics. */
  nics: NicEngine;
  /** Pod volumes (DESIGN §5b), journalled under <stateDir>/pods. */
  pods: PodVolumeEngine;
  journal: Journal;
  /** Prometheus metrics of the served operations, discovery and reconcile. */
  metrics: DaemonMetrics;
  /** Node facts and the Kubernetes reporter (VmplugNode status, Lease). */
  statusFeed: StatusFeed;
  /** Resolves once the start-up reconcile has run (either way): the moment systemd hears READY=1. */
  startupDone: Promise<void>;
  /** The REST server drains first, then the reconcile loop, the engine, the reporter (flushed) and discovery stop. */
  stop(): Promise<StopResult>;
}

/**
 * Starts vmplugd's parts in dependency order: the state directory and journal, sandbox discovery
 * over --monitor-dir (first scan done), the attach engine, the REST server, then the reconcile
 * loop (start-up run, then every reconcileIntervalMs). Readiness is false until the start-up
 * reconcile has run and while discovery cannot read its directory or the engine is missing.
 */
export async function startVmplugd(opts: VmplugdOptions): Promise<Vmplugd> {
  const { config, logger } = opts;
  // A second vmplugd (a DaemonSet's replacement pod starts while the old one still stops) must not
  // read the journal or dial the sandboxes' monitors: the socket says whether another one runs.
  if (opts.inheritedSocketFd === undefined) await removeStaleSocket(config.socket, 1_000, logger);
  await prepareStateDir(config.stateDir);
  const journal = new Journal({
    stateDir: config.stateDir,
    logger: logger.child({ component: 'journal' }),
    ...(opts.onJournalWrite !== undefined ? { onWrite: opts.onJournalWrite } : {}),
  });
  const discovery = await SandboxDiscovery.start({
    monitorDir: config.monitorDir,
    kata: { vmRoot: config.kataVmRoot, sbsRoot: kataSbsRootOf(config) },
    logger: logger.child({ component: 'discovery' }),
    rescanIntervalMs: config.discoveryRescanMs,
    goneGraceMs: config.sandboxGoneGraceMs,
    ...opts.discovery,
  });
  // One lock per sandbox for every engine (volumes of both kinds, NICs, resizes): they compete
  // for the same root ports, and the node's bound on operations in flight covers them all.
  const gate = new OperationGate<string>(config.maxConcurrentOps);
  const pods = await createPodEngine({
    config,
    logger,
    ...(opts.onJournalWrite !== undefined ? { onWrite: opts.onJournalWrite } : {}),
  });
  let engine: EngineHandle | undefined;
  let feed: StatusFeed | undefined;
  let nics: NicEngine | undefined;
  let loop: ReconcileLoop | undefined;
  /** Sandboxes the last volume reconcile skipped because their monitor did not answer. */
  let skipped = new Set<string>();
  const unwatch: (() => void)[] = [];
  try {
    // vvv the attach engine is constructed here, and only here (daemon/volumes/attach-engine.ts) vvv
    engine = await (opts.createEngine ?? createAttachService)({
      config,
      logger,
      journal,
      sandboxes: discovery,
      gate,
    });
    const e = engine;
    const catalog =
      e.catalog !== undefined
        ? combineCatalogs(discoveryCatalog(discovery), e.catalog)
        : discoveryCatalog(discovery);
    // What vmplugd tells the outside, built before the engines that feed it: metrics, the status
    // feed (VmplugNode, Lease) and Pod events. They observe; none of them can fail an attach.
    const metrics = new DaemonMetrics({ sandboxes: () => catalog.list() });
    unwatch.push(discovery.onSessionState((_id, change) => metrics.observeQmpState(change)));
    const f = await createStatusFeed({
      config,
      logger,
      discovery,
      catalog,
      listVolumes: e.listVolumes,
      ...(e.libvirtDomains !== undefined ? { libvirtDomains: e.libvirtDomains } : {}),
      ...(opts.version !== undefined ? { version: opts.version } : {}),
      ...opts.reporting,
    });
    feed = f;
    const podEvents = new PodEvents(f.reporter, catalog);
    // The pod volumes as the status and Events see them: re-read after each publish/unpublish
    // and when Kata consumes one (its sandbox-id file beside the record).
    const podWatch = new PodVolumeWatch({
      list: () => pods.list(),
      onConsumed: (v) => podEvents.podVolumeConsumed(v),
      log: logger.child({ component: 'report' }),
    });
    unwatch.push(() => podWatch.close());
    // Kata sandboxes only: libvirt domains would get NICs through libvirt's device XML (not built).
    const n = new NicEngine({
      stateDir: config.stateDir,
      sandboxes: discovery,
      logger: logger.child({ component: 'nic' }),
      onChange: (id) => f.nicsChanged(id),
      gate,
    });
    nics = n;
    // What the REST API serves: the engines, observed.
    const attachService = servedAttachService(e.service, { metrics, feed: f, podEvents });
    const nicService = observeNicService(n, (op) => podEvents.nic(op));
    const podService = observePodService(pods, (op) => {
      podEvents.podVolume(op);
      void podWatch.refresh();
    });
    if (e.reconcile !== undefined) {
      const volumes = measuredReconcile(e.reconcile, metrics);
      loop = new ReconcileLoop({
        // Volumes and NICs each converge even when the other fails; the run fails if either did.
        reconcile: async (signal) => {
          const [volumeRun, nicRun, podRun] = await Promise.allSettled([
            volumes(signal),
            n.reconcile({ signal }),
            pods.reconcile(signal),
          ]);
          f.refreshAll();
          void podWatch.refresh();
          if (volumeRun.status === 'rejected') throw volumeRun.reason;
          if (nicRun.status === 'rejected') throw nicRun.reason;
          if (podRun.status === 'rejected') throw podRun.reason;
          skipped = new Set(skippedSandboxes(volumeRun.value));
          return volumeRun.value;
        },
        intervalMs: config.reconcileIntervalMs,
        logger: logger.child({ component: 'reconcile' }),
      });
    }
    const l = loop;
    const journalCheck: ReadinessCheck = { ok: true, detail: config.stateDir };
    const readiness = (): Readiness => {
      const checks: Record<string, ReadinessCheck> = {
        journal: journalCheck,
        discovery: discovery.health(),
        attachEngine: e.readiness(),
      };
      if (l !== undefined) checks.reconcile = l.readiness();
      const ready = Object.values(checks).every((c) => c.ok);
      // Shown, but not gating: libvirtd being away must not stop Kata attaches.
      return { ready, checks: { ...checks, ...e.optionalReadiness?.() } };
    };
    const daemon = await startDaemon({
      config,
      logger,
      attachService,
      readiness,
      catalog,
      listVolumes: e.listVolumes,
      nodeFacts: (signal) => f.nodeFacts.get({ signal }),
      metrics,
      resources: createResourceService({ resolve: resizerResolver(discovery, e.resolveSandbox), gate }),
      nics: nicService,
      pods: { service: podService, kubeletRoot: config.kubeletRoot },
      ...(opts.version !== undefined ? { version: opts.version } : {}),
      ...(opts.inheritedSocketFd !== undefined ? { inheritedSocketFd: opts.inheritedSocketFd } : {}),
    });
    // Let the monitors found by the first scan connect, so the start-up reconcile can act on them
    // instead of skipping them as unreachable (bounded: a wedged QEMU must not delay start-up).
    if (l !== undefined) {
      // A sandbox found gone (its QEMU exited) has its records released now, not at the next round.
      unwatch.push(
        discovery.onChange((event) => {
          if (event.type === 'removed') l.kick();
          // A sandbox the last round skipped (a QEMU stopped or stuck while vmplugd restarted,
          // e.g. after a kill with a command in doubt) is reconciled once its monitor answers,
          // not a whole interval later.
          else if (
            event.type === 'changed' &&
            event.sandbox.reachability === 'present' &&
            skipped.delete(event.sandbox.id)
          )
            l.kick();
        }),
      );
      void discovery.settled(STARTUP_SETTLE_MS).then(() => l.start());
    }
    f.start({
      readiness,
      listNics: async (id) => (isSandboxId(id) ? (await n.list(id)).map(nicStatus) : []),
      podVolumes: podWatch,
    });
    podWatch.start();
    let stopping: Promise<StopResult> | undefined;
    const stop = (): Promise<StopResult> => {
      stopping ??= (async () => {
        const result = await daemon.stop();
        await l?.stop();
        await Promise.all([e.close(), n.close(), pods.close()]);
        await f.stop();
        for (const u of unwatch) u();
        await discovery.close();
        return result;
      })();
      return stopping;
    };
    const startupDone = l !== undefined ? l.firstRun() : Promise.resolve();
    return {
      daemon,
      discovery,
      engine: e,
      nics: n,
      pods,
      journal,
      metrics,
      statusFeed: f,
      startupDone,
      stop,
    };
  } catch (err) {
    await loop?.stop();
    await feed?.stop();
    await engine?.close().catch(() => {});
    await nics?.close();
    for (const u of unwatch) u();
    await pods.close();
    await discovery.close();
    throw err;
  }
}

/** The attach service vmplugd serves: the engine's, each outcome told to metrics, the status feed and Pod events. */
export function servedAttachService(
  engine: AttachService,
  o: { metrics: DaemonMetrics; feed: Pick<StatusFeed, 'operationDone' | 'describe'>; podEvents: PodEvents },
): AttachService {
  return observeAttachService(engine, {
    onOperation: (op) => {
      o.metrics.observeOperation(op);
      o.feed.operationDone(op);
      o.podEvents.volume(op);
    },
    describe: (sandboxId, volumeId) => o.feed.describe(sandboxId, volumeId),
  });
}

function nicStatus(n: NicView): NicStatus {
  return { id: n.nicId, mac: n.mac, tap: n.tap, model: 'virtio-net-pci', state: n.state };
}

/** The state directory must exist and be writable before anything is attached (0700: it holds the journal). */
async function prepareStateDir(stateDir: string): Promise<void> {
  try {
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
    await access(stateDir, constants.W_OK | constants.X_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new VmplugError('INTERNAL', `state directory ${stateDir} is not usable (${code})`);
  }
}

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

  const failpoint = parseFailpoint(io.env[FAILPOINT_ENV]);
  if (failpoint instanceof Error) {
    io.stderr.write(`vmplugd: configuration error: ${failpoint.message}\n`);
    return 2;
  }
  const onJournalWrite = failpointHook(failpoint, logger);

  const systemd = systemdFromEnv(io.env, logger);
  if (systemd instanceof Error) {
    io.stderr.write(`vmplugd: configuration error: ${systemd.message}\n`);
    return 2;
  }
  const { notifier, inheritedSocketFd } = systemd;
  if (notifier !== undefined && !(await canSendAsParent().catch(() => false))) {
    logger.warn(
      'no CAP_SYS_ADMIN: systemd-notify will send from its own pid, which NotifyAccess=main rejects (use NotifyAccess=all)',
    );
  }
  // Pinged from the start: a start-up that wedges the event loop is caught too.
  notifier?.startWatchdog();

  let vmplugd: Vmplugd;
  try {
    vmplugd = await startVmplugd({
      config,
      logger,
      version,
      ...(onJournalWrite !== undefined ? { onJournalWrite } : {}),
      ...(inheritedSocketFd !== undefined ? { inheritedSocketFd } : {}),
    });
  } catch (err) {
    logger.fatal({ err }, 'vmplugd could not start');
    notifier?.close();
    return 1;
  }
  let signalledYet = false;
  if (notifier !== undefined) {
    void notifier.status('start-up reconcile running');
    void vmplugd.startupDone.then(() => {
      if (!signalledYet) void notifier.ready(`serving on ${config.socket}`);
    });
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
  signalledYet = true;
  logger.info({ signal: signalled }, 'signal received');
  await notifier?.stopping('finishing in-flight operations');
  const result = await vmplugd.stop();
  notifier?.close();
  return result.clean ? 0 : 1;
}

/**
 * systemd's part of the environment: the notifier when NOTIFY_SOCKET is set, and the listening
 * socket when systemd passed exactly one for this process. An Error for malformed values.
 */
export function systemdFromEnv(
  env: Readonly<Record<string, string | undefined>>,
  logger: Logger,
  pid = process.pid,
): { notifier?: SystemdNotifier; inheritedSocketFd?: number } | Error {
  try {
    const notify = parseNotifyEnv(env, pid);
    const fds = parseListenFds(env, pid);
    if (fds.kind === 'inherited' && fds.fds.length !== 1) {
      return new ListenFdsError(
        `systemd passed ${fds.fds.length} sockets (LISTEN_FDS); vmplugd serves exactly one (ListenStream= once)`,
      );
    }
    return {
      ...(notify !== null ? { notifier: new SystemdNotifier({ env: notify, log: logger }) } : {}),
      ...(fds.kind === 'inherited' ? { inheritedSocketFd: fds.fds[0] } : {}),
    };
  } catch (err) {
    if (err instanceof NotifyEnvError || err instanceof ListenFdsError) return err;
    throw err;
  }
}

/** The ids of the sandboxes a volume reconcile summary lists as skipped (unreachable). */
function skippedSandboxes(summary: unknown): string[] {
  const skipped = (summary as { skipped?: unknown } | undefined)?.skipped;
  if (!Array.isArray(skipped)) return [];
  return skipped.flatMap((s: unknown) => {
    const id = (s as { sandboxId?: unknown }).sandboxId;
    return typeof id === 'string' ? [id] : [];
  });
}
