import type { SandboxId, VolumeId } from '../../core/ids.js';
import type { Readiness } from '../../core/readiness.js';
import type { SandboxCatalog } from '../../core/sandbox.js';
import type { LibvirtDomains } from '../../libvirt/domains.js';
import type { QmpGreeting } from '../../qmp/messages.js';
import type { ListVolumes } from '../../storage/attach-service.js';
import type { DaemonConfig } from '../config.js';
import type { Logger } from '../logger.js';
import type { SandboxDiscovery } from '../sandboxes/discovery.js';
import type { KubeHttp } from './kube/kube-http.js';
import { createReporter, type Reporter } from './kube/reporter.js';
import type { NicStatus } from './kube/status.js';
import { NodeFactsCache, realSystemInfo } from './node-facts.js';
import { NodeSnapshot } from './node-snapshot.js';
import type { VolumeOperation } from './observed-service.js';
import { type PodVolumeWatch, podVolumeStatus } from './pod-volumes.js';

// The node's status as Kubernetes sees it (the VmplugNode object and the Lease): the Kubernetes
// reporter fed by a snapshot of sandboxes, volumes, NICs, node facts and readiness. Built before
// the engines that tell it of changes, so they are handed its methods at construction; what it
// reads from them (readiness, the NIC list, the pod volumes) is handed to start(). Observes; cannot fail an attach.

export interface StatusFeedDeps {
  config: DaemonConfig;
  logger: Logger;
  version?: string;
  discovery: Pick<SandboxDiscovery, 'onChange'> &
    Partial<Pick<SandboxDiscovery, 'onSessionState' | 'lookup' | 'known'>>;
  /** Every sandbox and domain the REST API shows. */
  catalog: SandboxCatalog;
  listVolumes: ListVolumes;
  /** libvirt domains, whose state changes arrive as events. */
  libvirtDomains?: Pick<LibvirtDomains, 'onChange'>;
  /** Replaces the systeminformation-backed cache (tests). */
  nodeFacts?: NodeFactsCache;
  /** Where the reporter looks for KUBECONFIG and the in-cluster variables (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Reporter tuning beyond the config (tests shorten the Lease period). */
  reporter?: { leaseRenewMs?: number; minWriteIntervalMs?: number; http?: KubeHttp };
  /** How often every sandbox's volume list is re-read for the status (default 30 s). */
  resyncMs?: number;
}

export interface StatusFeedSources {
  readiness: () => Readiness;
  /** The NICs of a sandbox (net/); none when absent. */
  listNics?: (sandboxId: string) => Promise<NicStatus[]>;
  /** The node's pod volumes (DESIGN §5b), kept current by their watch; none when absent. */
  podVolumes?: Pick<PodVolumeWatch, 'current' | 'subscribe'>;
}

export interface StatusFeed {
  reporter: Reporter;
  nodeFacts: NodeFactsCache;
  /** What a volume is (for labelling a detach), as last read; undefined before start(). */
  describe(sandboxId: SandboxId, volumeId: VolumeId): ReturnType<NodeSnapshot['describe']>;
  /** An attach or detach finished: patch the sandbox's volumes from it, then tell the reporter. */
  operationDone(op: VolumeOperation): void;
  /** A sandbox's NICs may have changed: re-read them. */
  nicsChanged(sandboxId: string): void;
  /** Re-read everything (after a reconcile run). */
  refreshAll(): void;
  /** Starts the snapshot, node facts and the reporter once readiness can be asked. */
  start(sources: StatusFeedSources): void;
  /** Flushes (bounded) and stops the reporter, then the rest. */
  stop(): Promise<void>;
}

/** Throws KubeError KUBE_CONFIG when a named kubeconfig cannot be loaded. */
export async function createStatusFeed(deps: StatusFeedDeps): Promise<StatusFeed> {
  const { config, catalog } = deps;
  const log = deps.logger.child({ component: 'report' });
  const nodeFacts =
    deps.nodeFacts ??
    new NodeFactsCache({
      system: realSystemInfo({ libvirt: config.libvirtUri !== null }),
      onError: (part, err) => log.debug({ part, err: err.message }, 'node fact not gathered'),
    });
  let snapshot: NodeSnapshot | undefined;
  const started = (): NodeSnapshot => {
    if (snapshot === undefined) throw new Error('the node snapshot is read before start()');
    return snapshot;
  };
  const reporter = await createReporter({
    nodeName: config.nodeName,
    provider: {
      snapshot: () => started().snapshot(),
      // No status write before the node facts are complete (a half-built first apply left
      // nulls the CRD refuses: 422 after every restart).
      complete: () => nodeFacts.complete(),
      subscribe: (l) => started().subscribe(l),
    },
    logger: log,
    ...(config.kubeconfig !== null ? { kubeconfigPath: config.kubeconfig } : {}),
    env: deps.env ?? process.env,
    leaseNamespace: config.leaseNamespace,
    ...deps.reporter,
  });
  const unsubscribe: (() => void)[] = [];
  let resync: NodeJS.Timeout | undefined;
  let stopping: Promise<void> | undefined;

  return {
    reporter,
    nodeFacts,
    describe: (sandboxId, volumeId) => snapshot?.describe(sandboxId, volumeId),
    operationDone(op) {
      snapshot?.operationDone(op);
    },
    nicsChanged(sandboxId) {
      if (snapshot !== undefined) void snapshot.refreshVolumes(sandboxId);
    },
    refreshAll() {
      void snapshot?.refreshAll();
    },
    start({ readiness, listNics, podVolumes }) {
      if (snapshot !== undefined || stopping !== undefined) return;
      const s = new NodeSnapshot({
        catalog,
        listVolumes: deps.listVolumes,
        ...(listNics !== undefined ? { listNics } : {}),
        ...(podVolumes !== undefined ? { podVolumes: () => podVolumes.current().map(podVolumeStatus) } : {}),
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
        nodeFacts.onChange(() => s.changed()),
      );
      if (podVolumes !== undefined) unsubscribe.push(podVolumes.subscribe(() => s.changed()));
      // libvirt domains: state changes come as events (the catalog is read live by snapshot()).
      if (deps.libvirtDomains !== undefined) {
        unsubscribe.push(
          deps.libvirtDomains.onChange((c) => {
            if (c.kind === 'updated') void s.refreshVolumes(c.domain.name);
            else if (c.kind === 'removed') s.forget(c.name);
            s.changed();
          }),
        );
      }
      // QEMU's version for the status where its binary is not ours to run (the image): from the
      // greeting of a sandbox's monitor, at start (monitors connected before it) and on each connect.
      const noteQemuVersion = (id: SandboxId): void => {
        const found = deps.discovery.lookup?.(id);
        const qmp =
          found?.state === 'present' ? (found.sandbox.qmp as { greeting?: QmpGreeting }) : undefined;
        const q = qmp?.greeting?.QMP.version.qemu;
        if (q !== undefined) nodeFacts.observeQemuVersion(`${q.major}.${q.minor}.${q.micro}`);
      };
      if (deps.discovery.onSessionState !== undefined) {
        unsubscribe.push(
          deps.discovery.onSessionState((id: SandboxId, change) => {
            // Read in a microtask: discovery tells listeners before it marks the sandbox present.
            if (change.state === 'ready') queueMicrotask(() => noteQemuVersion(id));
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
