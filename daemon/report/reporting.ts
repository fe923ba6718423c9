import type { SandboxId } from '../../core/ids.js';
import type { QmpGreeting } from '../../qmp/messages.js';
import type { PodRef } from '../../storage/volume-spec.js';
import type { DaemonConfig } from '../config.js';
import type { AttachService } from '../http/routes/attach-service.js';
import type { Readiness } from '../http/routes/health.js';
import type { SandboxCatalog, SandboxPod } from '../http/routes/sandboxes.js';
import type { Logger } from '../logger.js';
import type { SandboxDiscovery } from '../sandboxes/discovery.js';
import type { EngineHandle } from '../volumes/attach-engine.js';
import type { PodEventTarget } from './kube/events.js';
import type { KubeHttp } from './kube/kube-http.js';
import { createReporter, type Reporter } from './kube/reporter.js';
import type { NicStatus } from './kube/status.js';
import { DaemonMetrics, measuredReconcile } from './metrics.js';
import { NodeFactsCache } from './node-facts.js';
import { NodeSnapshot } from './node-snapshot.js';
import type { NicOperation } from './observed-nics.js';
import { observeAttachService, type VolumeOperation } from './observed-service.js';

// What vmplugd tells the outside about its node, wired around the engine and discovery without
// either knowing: Prometheus metrics, node facts, and the Kubernetes reporter (VmplugNode status,
// Pod events, Lease). Everything here observes; nothing here can fail an attach.

export interface ReportingDeps {
  config: DaemonConfig;
  logger: Logger;
  version?: string;
  discovery: Pick<SandboxDiscovery, 'onChange' | 'onSessionState'> &
    Partial<Pick<SandboxDiscovery, 'lookup' | 'known'>>;
  /** Every sandbox and domain the REST API shows. */
  catalog: SandboxCatalog;
  engine: EngineHandle;
  /** Replaces the systeminformation-backed cache (tests). */
  nodeFacts?: NodeFactsCache;
  /** Where the reporter looks for KUBECONFIG and the in-cluster variables (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Reporter tuning beyond the config (tests shorten the Lease period). */
  reporter?: { leaseRenewMs?: number; minWriteIntervalMs?: number; http?: KubeHttp };
  /** How often every sandbox's volume list is re-read for the status (default 30 s). */
  resyncMs?: number;
  /** The NICs of a sandbox for the status (net/); none when absent. */
  listNics?: (sandboxId: string) => Promise<NicStatus[]>;
}

export interface Reporting {
  /** The engine's service, observed (metrics, events, status). Serve this one. */
  service: AttachService;
  /** The engine's reconcile, measured, refreshing the status after each run. */
  reconcile?: (signal: AbortSignal) => Promise<unknown>;
  metrics: DaemonMetrics;
  nodeFacts: NodeFactsCache;
  reporter: Reporter;
  /** Starts the status provider and the reporter once readiness can be asked. */
  start(readiness: () => Readiness): void;
  /** Flushes (bounded) and stops the reporter, then the rest. */
  stop(): Promise<void>;
  /** A sandbox's NICs may have changed: re-read them for the status. */
  nicsChanged(sandboxId: string): void;
  /** A NIC attach or detach had an outcome: a Pod event where the sandbox maps to a pod. */
  nicOperation(op: NicOperation): void;
}

/** Throws KubeError KUBE_CONFIG when a named kubeconfig cannot be loaded. */
export async function createReporting(deps: ReportingDeps): Promise<Reporting> {
  const { config, logger, catalog, engine } = deps;
  const log = logger.child({ component: 'report' });
  const nodeFacts =
    deps.nodeFacts ??
    new NodeFactsCache({
      onError: (part, err) => log.debug({ part, err: err.message }, 'node fact not gathered'),
    });
  const metrics = new DaemonMetrics({ sandboxes: () => catalog.list() });
  let snapshot: NodeSnapshot | undefined;
  const provider = {
    snapshot: () => {
      if (snapshot === undefined) throw new Error('the node snapshot is read before start()');
      return snapshot.snapshot();
    },
    complete: () => nodeFacts.complete(),
    subscribe: (listener: () => void) => {
      if (snapshot === undefined) throw new Error('subscribed before start()');
      return snapshot.subscribe(listener);
    },
  };
  const reporter = await createReporter({
    nodeName: config.nodeName,
    provider,
    logger: log,
    ...(config.kubeconfig !== null ? { kubeconfigPath: config.kubeconfig } : {}),
    env: deps.env ?? process.env,
    leaseNamespace: config.leaseNamespace,
    ...deps.reporter,
  });

  const onOperation = (op: VolumeOperation): void => {
    metrics.observeOperation(op);
    // Told once the volume list is re-read: a notice before it would spend the next write (and
    // its 1 s bound) on the old list.
    const s = snapshot;
    if (s !== undefined) void s.refreshVolumes(op.sandboxId).then(() => s.changed());
    podEvent(op);
  };

  const podEvent = (op: VolumeOperation): void => {
    // An idempotent repeat of a done attach, or a detach of a volume never seen, is not news.
    if (op.ok && op.op === 'attach' && !op.created) return;
    if (op.ok && op.op === 'detach' && op.mode === 'unknown') return;
    const target = podEventTarget(catalog.get(op.sandboxId)?.pod, op.pod);
    if (target === undefined) return;
    const ms = Math.round(op.ms);
    if (op.ok && op.op === 'attach') {
      const a = op.attachment;
      reporter.recordPodEvent(
        target,
        'VolumeAttached',
        `volume ${op.volumeId} attached (${a.mode}, ${a.bus}${a.readOnly ? ', read-only' : ''}) as ${a.guestHint} in ${ms} ms`,
      );
    } else if (op.ok) {
      reporter.recordPodEvent(target, 'VolumeDetached', `volume ${op.volumeId} detached in ${ms} ms`);
    } else {
      reporter.recordPodEvent(
        target,
        op.op === 'attach' ? 'VolumeAttachFailed' : 'VolumeDetachFailed',
        `${op.op} of volume ${op.volumeId} failed after ${ms} ms: ${op.code}: ${op.message}`,
        'Warning',
      );
    }
  };

  const service = observeAttachService(engine.service, {
    onOperation,
    describe: (sandboxId, volumeId) => snapshot?.describe(sandboxId, volumeId),
  });

  // QEMU's version for the status where its binary is not ours to run (the image): from the
  // greeting of a sandbox's monitor, at start (monitors connected before it) and on each connect.
  const noteQemuVersion = (id: SandboxId): void => {
    const found = deps.discovery.lookup?.(id);
    const qmp = found?.state === 'present' ? (found.sandbox.qmp as { greeting?: QmpGreeting }) : undefined;
    const q = qmp?.greeting?.QMP.version.qemu;
    if (q !== undefined) nodeFacts.observeQemuVersion(`${q.major}.${q.minor}.${q.micro}`);
  };

  const unsubscribe: (() => void)[] = [];
  let resync: NodeJS.Timeout | undefined;
  let stopping: Promise<void> | undefined;

  const reconcile =
    engine.reconcile === undefined
      ? undefined
      : (() => {
          const measured = measuredReconcile(engine.reconcile, metrics);
          return async (signal: AbortSignal) => {
            try {
              return await measured(signal);
            } finally {
              void snapshot?.refreshAll();
            }
          };
        })();

  return {
    service,
    ...(reconcile !== undefined ? { reconcile } : {}),
    metrics,
    nodeFacts,
    reporter,
    start(readiness) {
      if (snapshot !== undefined || stopping !== undefined) return;
      const s = new NodeSnapshot({
        catalog,
        listVolumes: engine.listVolumes,
        ...(deps.listNics !== undefined ? { listNics: deps.listNics } : {}),
        facts: () => nodeFacts.current(),
        readiness,
        log,
        ...(deps.version !== undefined ? { vmplugVersion: deps.version } : {}),
      });
      snapshot = s;
      unsubscribe.push(
        deps.discovery.onChange((event) => {
          if (event.type === 'removed') s.forget(event.id);
          else void s.refreshVolumes(event.sandbox.id);
          s.changed();
        }),
        deps.discovery.onSessionState((id: SandboxId, change) => {
          metrics.observeQmpState(change);
          // Read in a microtask: discovery tells listeners before it marks the sandbox present.
          if (change.state === 'ready') queueMicrotask(() => noteQemuVersion(id));
        }),
        nodeFacts.onChange(() => s.changed()),
      );
      // libvirt domains: state changes come as events (the catalog is read live by snapshot()).
      const domains = engine.libvirtDomains;
      if (domains !== undefined) {
        unsubscribe.push(
          domains.onChange((c) => {
            if (c.kind === 'updated') void s.refreshVolumes(c.domain.name);
            else if (c.kind === 'removed') s.forget(c.name);
            s.changed();
          }),
        );
      }
      for (const id of deps.discovery.known?.() ?? []) noteQemuVersion(id);
      void nodeFacts.start();
      void s.refreshAll();
      // Volume changes made behind the REST API's back (other than by reconcile runs, which
      // refresh on their own) are caught up by this slow resync.
      resync = setInterval(() => void s.refreshAll(), deps.resyncMs ?? 30_000);
      resync.unref();
      reporter.start();
    },
    nicOperation(op) {
      // An idempotent repeat, or a detach of a NIC never seen, is not news.
      if (op.ok && ((op.op === 'attach' && !op.created) || (op.op === 'detach' && !op.detached))) return;
      // Ids net/ accepted pass storage's rule too (the same rule, restated there).
      const pod = catalog.get(op.sandboxId as string as SandboxId)?.pod;
      if (pod?.name === undefined || pod.namespace === undefined) return;
      const target = {
        podName: pod.name,
        namespace: pod.namespace,
        ...(pod.uid !== undefined ? { podUid: pod.uid } : {}),
      };
      const ms = Math.round(op.ms);
      if (op.ok && op.op === 'attach') {
        reporter.recordPodEvent(
          target,
          'NicAttached',
          `NIC ${op.nicId} attached (mac ${op.nic.mac}, tap ${op.nic.tap}) in ${ms} ms`,
        );
      } else if (op.ok) {
        reporter.recordPodEvent(target, 'NicDetached', `NIC ${op.nicId} detached in ${ms} ms`);
      } else {
        reporter.recordPodEvent(
          target,
          op.op === 'attach' ? 'NicAttachFailed' : 'NicDetachFailed',
          `${op.op} of NIC ${op.nicId} failed after ${ms} ms: ${op.code}: ${op.message}`,
          'Warning',
        );
      }
    },
    nicsChanged(sandboxId) {
      if (snapshot !== undefined) void snapshot.refreshVolumes(sandboxId);
    },
    stop() {
      stopping ??= (async () => {
        clearInterval(resync);
        for (const u of unsubscribe) u();
        await reporter.stop();
        snapshot?.close();
        nodeFacts.close();
      })();
      return stopping;
    },
  };
}

/**
 * Where a volume's Pod event goes. The runtime's record of the sandbox (Kata's persist.json) is
 * read from the sandbox itself, so it wins whenever it names the pod; the pod the attach request
 * named (the CSI plugin's pod info) is the fallback for sandboxes whose runtime records none. The
 * request only adds the uid to a runtime identity without one, and only when both name the same
 * pod. An Event needs a name and a namespace: a pod known by its uid alone gets none.
 */
export function podEventTarget(
  runtime: SandboxPod | undefined,
  requested: PodRef | undefined,
): PodEventTarget | undefined {
  if (runtime?.name !== undefined && runtime.namespace !== undefined) {
    const sameAsRequested =
      requested !== undefined && requested.name === runtime.name && requested.namespace === runtime.namespace;
    const uid = runtime.uid ?? (sameAsRequested ? requested.uid : undefined);
    return {
      podName: runtime.name,
      namespace: runtime.namespace,
      ...(uid !== undefined ? { podUid: uid } : {}),
    };
  }
  if (requested?.name !== undefined && requested.namespace !== undefined) {
    return { podName: requested.name, namespace: requested.namespace, podUid: requested.uid };
  }
  return undefined;
}
