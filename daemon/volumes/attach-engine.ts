import { constants } from 'node:fs';
import { access, mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { VmplugError } from '../../core/errors.js';
import type { OperationGate } from '../../core/gate.js';
import type { ReadinessCheck } from '../../core/readiness.js';
import type { SandboxCatalog } from '../../core/sandbox.js';
import { LibvirtDomains } from '../../libvirt/domains.js';
import type { AttachService, ListVolumes } from '../../storage/attach-service.js';
import { AttachEngine } from '../../storage/engine.js';
import { hostDeviceCheck, hostDevicePolicy } from '../../storage/host-device.js';
import { type Journal, loadFingerprintKey } from '../../storage/journal.js';
import { LibvirtAttachService } from '../../storage/libvirt/engine.js';
import { PreflightUnavailableError, RbdPreflight } from '../../storage/rbd-preflight.js';
import type { ReconcileSummary } from '../../storage/reconcile.js';
import type { SandboxDirectory } from '../../storage/sandbox-directory.js';
import { createStorageDaemonBackend, type StorageDaemonBackend } from '../../storage/storage-daemon/index.js';
import type { RbdSource } from '../../storage/volume-spec.js';
import type { DaemonConfig } from '../config.js';
import type { Logger } from '../logger.js';
import { AttachRouter, createSandboxResolver, type SandboxResolver } from './attach-router.js';
import { launcherOptions } from './qsd-launcher.js';

// THE one place where vmplugd constructs its attach engine (storage/). Everything the daemon needs
// from the engine goes through EngineHandle: the REST service, the volume list of a sandbox, the
// reconcile the daemon runs at start-up and every reconcileIntervalMs, readiness and a draining
// close.

export interface EngineDeps {
  config: DaemonConfig;
  logger: Logger;
  journal: Journal;
  sandboxes: SandboxDirectory;
  /**
   * The node's one gate: one lock per sandbox taken by both volume engines, the NIC engine and
   * resizes, so nothing races for a sandbox's root ports (created once, in main.ts).
   */
  gate: OperationGate<string>;
}

export interface EngineHandle {
  service: AttachService;
  /** The engine's volumes of one sandbox (GET /v1/sandboxes). */
  listVolumes: ListVolumes;
  /** Finish or roll back half-done operations; absent when the engine has no reconcile. */
  reconcile?: (signal: AbortSignal) => Promise<unknown>;
  /** For /readyz. */
  readiness(): ReadinessCheck;
  /** Sandboxes the engine manages beyond discovery's (libvirt domains), for GET /v1/sandboxes. */
  catalog?: SandboxCatalog;
  /** Reported on /readyz without gating readiness (libvirtd away must not stop Kata attaches). */
  optionalReadiness?: () => Record<string, ReadinessCheck>;
  /** Which hypervisor runs a sandbox (resize and NIC code use it to reach libvirt). */
  resolveSandbox?: SandboxResolver;
  /** The libvirt domains (onChange for reporting), when --libvirt-uri is set. */
  libvirtDomains?: LibvirtDomains;
  /** After the REST server has drained: let the engine's own work settle. */
  close(): Promise<void>;
}

/**
 * The qemu-storage-daemon backend of rbd hot-attach (DESIGN §5c), in a directory of its own
 * (never the pod volumes' one: each backend stops the daemons its owner does not want), exporting
 * into vmplug's own vhost-user directory (Kata's store is for Kata's records). Absent when the
 * binary is not configured or not installed: rbd then goes through QEMU's librbd.
 */
async function hotAttachBackend(
  config: DaemonConfig,
  logger: Logger,
): Promise<StorageDaemonBackend | undefined> {
  const binary = config.hotAttachQsdBinary;
  if (binary === null) return undefined;
  try {
    await access(binary, constants.X_OK);
  } catch {
    logger.info({ binary }, 'no qemu-storage-daemon: rbd hot-attach goes through QEMU (backend "qemu")');
    return undefined;
  }
  const launcher = await launcherOptions(config, 'hot-attach', logger);
  if (launcher === undefined) return undefined;
  try {
    return createStorageDaemonBackend({
      stateDir: config.hotAttachQsdDir,
      store: config.hotAttachVhostUserStore,
      binary,
      ...launcher,
      rbdConf: { clientMountTimeoutS: 5, osdOpTimeoutS: config.hotAttachOsdTimeoutS },
    });
  } catch (err) {
    logger.error(
      { error: (err as Error).message },
      'storage-daemon backend not created: rbd hot-attach goes through QEMU',
    );
    return undefined;
  }
}

/**
 * Builds the attach engine (storage/engine.ts) over the journal and discovery's sandboxes, with the
 * per-node fingerprint key from the state directory.
 */
export async function createAttachService(deps: EngineDeps): Promise<EngineHandle> {
  const { config, logger, journal, sandboxes, gate } = deps;
  const fingerprintKey = await loadFingerprintKey(config.stateDir);
  // One block-mode check (allow-list and host use) for every engine.
  const checkHostDevice = hostDeviceCheck(hostDevicePolicy(config.allowedDevices));
  const storageDaemon = await hotAttachBackend(config, logger);
  const preflight = await rbdPreflightOf(config.stateDir, config.maxConcurrentOps, logger);
  const engine = new AttachEngine({
    journal,
    sandboxes,
    fingerprintKey,
    stateDir: config.stateDir,
    logger: logger.child({ component: 'engine' }),
    gate,
    qmpTimeoutMs: config.qmpTimeoutMs,
    checkHostDevice,
    ...(storageDaemon === undefined ? {} : { storageDaemon }),
    rbdPreflight: preflight.check,
  });
  const closeEngine = async (): Promise<void> => {
    await engine.close();
    // Its idle throwaway daemons quit; nothing of an attach depends on them.
    await preflight.close();
    // Timers only: the daemons outlive vmplugd by design (adopted again at start).
    await storageDaemon?.close();
  };
  const kataVolumes: ListVolumes = (sandboxId, ctx) => engine.list(sandboxId, { signal: ctx.signal });
  if (config.libvirtUri === null) {
    return {
      service: engine,
      listVolumes: kataVolumes,
      reconcile: (signal) => engine.reconcile({ signal }),
      readiness: () => ({ ok: true, detail: `${gate.inFlight} operation(s) in flight` }),
      resolveSandbox: createSandboxResolver(sandboxes),
      close: closeEngine,
    };
  }
  // libvirt domains: connected in the background (a node without libvirtd starts all the same).
  const domains = LibvirtDomains.start({
    uri: config.libvirtUri,
    logger: logger.child({ component: 'libvirt' }),
  });
  const libvirt = new LibvirtAttachService({
    journal,
    domains,
    fingerprintKey,
    logger: logger.child({ component: 'libvirt-engine' }),
    // Next to the monitor dir (/run/vmplug/libvirt by default): QEMU, running as libvirt's
    // unprivileged user, must reach these files, which the 0700 state dir does not allow.
    cephConfBase: `${dirname(config.monitorDir)}/libvirt`,
    gate,
    checkHostDevice,
  });
  const router = new AttachRouter({
    kata: engine,
    kataVolumes,
    kataSandboxes: sandboxes,
    libvirt,
    domains,
  });
  return {
    service: router,
    listVolumes: router.listVolumes,
    reconcile: async (signal): Promise<ReconcileSummary> => {
      // Both engines converge even when the other one throws; the round fails if either did,
      // with both failures when both did.
      const [kata, lv] = [
        await settle(engine.reconcile({ signal })),
        await settle(libvirt.reconcile({ signal })),
      ];
      if (!kata.ok || !lv.ok) {
        const reasons = [kata, lv].flatMap((x) => (x.ok ? [] : [x.reason]));
        throw reasons.length === 1
          ? reasons[0]
          : new AggregateError(reasons, 'volume reconcile failed in both engines');
      }
      const k = kata.value;
      const l = lv.value;
      return {
        sandboxes: k.sandboxes + l.sandboxes,
        repairs: [...k.repairs, ...l.repairs],
        skipped: [...k.skipped, ...l.skipped],
        pending: [...k.pending, ...l.pending],
        failures: [...k.failures, ...l.failures],
      };
    },
    readiness: () => ({
      ok: true,
      // One gate: its count covers both engines (and NICs and resizes).
      detail: `${gate.inFlight} operation(s) in flight`,
    }),
    catalog: domains.catalog(),
    optionalReadiness: () => ({ libvirt: domains.health() }),
    resolveSandbox: createSandboxResolver(sandboxes, domains),
    libvirtDomains: domains,
    close: async () => {
      await closeEngine();
      await libvirt.close();
      await domains.close();
    },
  };
}

/** Every volume call answers 503 NOT_READY. */
export function unavailableAttachService(): AttachService {
  const refuse = async (): Promise<never> => {
    throw new VmplugError('NOT_READY', 'the attach engine is not available in this build');
  };
  return { attach: refuse, detach: refuse, get: refuse, resize: refuse };
}

async function settle<T>(p: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; reason: unknown }> {
  try {
    return { ok: true, value: await p };
  } catch (reason) {
    return { ok: false, reason };
  }
}

/**
 * The out-of-process rbd open before an rbd attach (storage/rbd-preflight.ts), in
 * <stateDir>/rbd-preflight (0700; daemons a killed vmplugd left there are killed first; idle ones
 * quit after 60 s); without qemu-storage-daemon on the node, attaches go on without it and the
 * first one logs why.
 */
async function rbdPreflightOf(
  stateDir: string,
  maxOps: number,
  logger: Logger,
): Promise<{
  check: (source: RbdSource, signal: AbortSignal, opts?: { ahead?: boolean }) => Promise<unknown>;
  close(): Promise<void>;
}> {
  const runDir = join(stateDir, 'rbd-preflight');
  await mkdir(runDir, { recursive: true, mode: 0o700 });
  // As many idle as attaches can run at once: a burst of rbd attaches starts its daemons once.
  // As many open at once: attaches waiting for a busy sandbox open theirs before their turn.
  const preflight = new RbdPreflight({ runDir, maxIdle: maxOps, maxConcurrent: maxOps });
  const swept = await preflight.sweep();
  if (swept > 0) logger.warn({ killed: swept }, 'rbd preflight: killed daemons a previous vmplugd left');
  let warned = false;
  return {
    check: async (source, signal, opts) => {
      try {
        return await preflight.open(source, signal, opts);
      } catch (err) {
        if (!(err instanceof PreflightUnavailableError)) throw err;
        if (!warned) logger.warn({}, `${err.message}: a stalled OSD can freeze a guest during an rbd attach`);
        warned = true;
        return undefined;
      }
    },
    close: () => preflight.close(),
  };
}
