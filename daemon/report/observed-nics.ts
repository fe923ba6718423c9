import type { NicId, SandboxId } from '../../core/ids.js';
import type { NicService, NicView } from '../../net/index.js';

// The NIC engine as the daemon's observers see it (Pod events), the same way observed-service.ts
// wraps the attach engine: every attach and detach with its outcome and duration, told to a
// listener that must neither throw nor block. net/ knows nothing of it.

interface NicOperationBase {
  sandboxId: SandboxId;
  nicId: NicId;
  ms: number;
}

export type NicOperation =
  | (NicOperationBase & { op: 'attach'; ok: true; created: boolean; nic: NicView })
  | (NicOperationBase & { op: 'detach'; ok: true; detached: boolean })
  | (NicOperationBase & { op: 'attach' | 'detach'; ok: false; code: string; message: string });

export function observeNicService(inner: NicService, onOperation: (op: NicOperation) => void): NicService {
  const tell = (op: NicOperation): void => {
    try {
      onOperation(op);
    } catch {
      // An observer's bug must not turn a done attach into a failed request.
    }
  };
  const failed = (err: unknown): { code: string; message: string } => ({
    code: typeof (err as { code?: unknown }).code === 'string' ? (err as { code: string }).code : 'INTERNAL',
    message: (err as Error).message ?? String(err),
  });
  return {
    async attach(sandboxId, nicId, spec, ctx) {
      const t = performance.now();
      try {
        const r = await inner.attach(sandboxId, nicId, spec, ctx);
        tell({
          op: 'attach',
          ok: true,
          sandboxId,
          nicId,
          ms: performance.now() - t,
          created: r.created,
          nic: r.nic,
        });
        return r;
      } catch (err) {
        tell({ op: 'attach', ok: false, sandboxId, nicId, ms: performance.now() - t, ...failed(err) });
        throw err;
      }
    },
    async detach(sandboxId, nicId, ctx) {
      const t = performance.now();
      try {
        const detached = await inner.detach(sandboxId, nicId, ctx);
        tell({ op: 'detach', ok: true, sandboxId, nicId, ms: performance.now() - t, detached });
        return detached;
      } catch (err) {
        tell({ op: 'detach', ok: false, sandboxId, nicId, ms: performance.now() - t, ...failed(err) });
        throw err;
      }
    },
    get: (sandboxId, nicId) => inner.get(sandboxId, nicId),
    list: (sandboxId) => inner.list(sandboxId),
  };
}
