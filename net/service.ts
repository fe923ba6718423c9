import type { NicId, SandboxId } from '../core/ids.js';
import type { NicAttachResult, NicContext, NicView } from './engine.js';
import type { NicSpec } from './spec.js';

/** What the daemon (routes, reporting) needs of the NIC engine; NicEngine fits. */
export interface NicService {
  attach(sandboxId: SandboxId, nicId: NicId, spec: NicSpec, ctx: NicContext): Promise<NicAttachResult>;
  /** True when there was a NIC to detach. */
  detach(sandboxId: SandboxId, nicId: NicId, ctx: NicContext): Promise<boolean>;
  get(sandboxId: SandboxId, nicId: NicId): Promise<NicView>;
  list(sandboxId: SandboxId): Promise<NicView[]>;
}
