import { AttachEngine } from '../storage/engine.js';
import { type Journal, loadFingerprintKey } from '../storage/journal.js';
import type { SandboxDirectory } from '../storage/sandbox-directory.js';
import type { DaemonConfig } from './config.js';
import type { Logger } from './logger.js';
import { DaemonError } from './problem.js';
import type { AttachService } from './routes/attach-service.js';
import type { ReadinessCheck } from './routes/health.js';
import type { ListVolumes } from './routes/sandboxes.js';

// THE one place where vmplugd constructs its attach engine (storage/). Everything the daemon needs
// from the engine goes through EngineHandle: the REST service, the volume list of a sandbox, the
// reconcile the daemon runs at start-up and every reconcileIntervalMs, readiness and a draining
// close.

export interface EngineDeps {
  config: DaemonConfig;
  logger: Logger;
  journal: Journal;
  sandboxes: SandboxDirectory;
}

export interface EngineHandle {
  service: AttachService;
  /** The engine's volumes of one sandbox (GET /v1/sandboxes). */
  listVolumes: ListVolumes;
  /** Finish or roll back half-done operations; absent when the engine has no reconcile. */
  reconcile?: (signal: AbortSignal) => Promise<unknown>;
  /** For /readyz. */
  readiness(): ReadinessCheck;
  /** After the REST server has drained: let the engine's own work settle. */
  close(): Promise<void>;
}

/**
 * Builds the attach engine (storage/engine.ts) over the journal and discovery's sandboxes, with the
 * per-node fingerprint key from the state directory.
 */
export async function createAttachService(deps: EngineDeps): Promise<EngineHandle> {
  const { config, logger, journal, sandboxes } = deps;
  const fingerprintKey = await loadFingerprintKey(config.stateDir);
  const engine = new AttachEngine({
    journal,
    sandboxes,
    fingerprintKey,
    stateDir: config.stateDir,
    logger: logger.child({ component: 'engine' }),
    maxConcurrentOps: config.maxConcurrentOps,
  });
  return {
    service: engine,
    listVolumes: (sandboxId, ctx) => engine.list(sandboxId, { signal: ctx.signal }),
    reconcile: (signal) => engine.reconcile({ signal }),
    readiness: () => ({ ok: true, detail: `${engine.inFlight} operation(s) in flight` }),
    close: () => engine.close(),
  };
}

/** The stand-in for tests and tools that run the daemon without an engine. */
export function unavailableEngine(): EngineHandle {
  return {
    service: unavailableAttachService(),
    listVolumes: async () => [],
    readiness: () => ({ ok: false, detail: 'not available in this build' }),
    close: async () => {},
  };
}

/** Every volume call answers 503 NOT_READY. */
export function unavailableAttachService(): AttachService {
  const refuse = async (): Promise<never> => {
    throw new DaemonError(503, 'NOT_READY', 'the attach engine is not available in this build');
  };
  return { attach: refuse, detach: refuse, get: refuse, resize: refuse };
}
