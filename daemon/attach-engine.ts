import type { Journal } from '../storage/journal.js';
import type { SandboxDirectory } from '../storage/sandbox-directory.js';
import type { DaemonConfig } from './config.js';
import type { Logger } from './logger.js';
import { DaemonError } from './problem.js';
import type { AttachService } from './routes/attach-service.js';
import type { ReadinessCheck } from './routes/health.js';
import type { ListVolumes } from './routes/sandboxes.js';

// THE one place where vmplugd constructs its attach engine (storage/). Everything the daemon needs
// from the engine goes through EngineHandle, so swapping the stand-in for the real engine touches
// only createAttachService() below.

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
 * Builds the attach engine. Until storage/'s engine is wired in, every volume call answers 503
 * NOT_READY and readiness says why, so the daemon shell runs and can be probed on its own.
 */
export async function createAttachService(_deps: EngineDeps): Promise<EngineHandle> {
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
