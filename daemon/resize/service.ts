import { NotFoundError } from '../../core/errors.js';
import { OperationGate } from '../../core/gate.js';
import type { SandboxId } from '../../core/ids.js';
import { ResizeError } from './errors.js';
import { type GuestResizer, type GuestResources, type ResizeRequest, resourcesOf } from './types.js';
import { planResize } from './validate.js';

// GET and PATCH of a sandbox's resources, one operation at a time per sandbox. Which resizer serves
// a sandbox (Kata monitor or libvirt domain) is the resolver's decision, injected by the daemon.
// Resizes take the sandbox's one lock with its volumes and NICs (the node's OperationGate, handed
// in by the daemon; KubeVirt's domainModifyLock): one change to a guest's devices at a time, so
// whatever one operation reads of the guest (QOM, query-pci, the domain XML) still holds when it acts.

export type ResolvedResizer =
  | { state: 'present'; resizer: GuestResizer }
  | { state: 'unreachable'; reason: string }
  | { state: 'gone' };

export type ResolveResizer = (sandboxId: SandboxId) => ResolvedResizer | Promise<ResolvedResizer>;

export interface ResourceOpContext {
  signal?: AbortSignal;
}

export interface ResourceService {
  get(sandboxId: SandboxId, ctx: ResourceOpContext): Promise<GuestResources>;
  resize(sandboxId: SandboxId, request: ResizeRequest, ctx: ResourceOpContext): Promise<GuestResources>;
}

export interface ResourceServiceOptions {
  resolve: ResolveResizer;
  /** Bound on waiting for the guest to release a CPU or DIMM. */
  unplugTimeoutMs?: number;
  /** The node's one gate; default: a private one (resizes then only exclude each other). */
  gate?: OperationGate<string>;
}

export function createResourceService(opts: ResourceServiceOptions): ResourceService {
  const gate = opts.gate ?? new OperationGate<string>(8);

  const resizerOf = async (sandboxId: SandboxId): Promise<GuestResizer> => {
    const found = await opts.resolve(sandboxId);
    if (found.state === 'gone') throw new NotFoundError('sandbox', sandboxId);
    if (found.state === 'unreachable')
      throw new ResizeError(
        'SANDBOX_UNAVAILABLE',
        `sandbox ${sandboxId} cannot be resized now: ${found.reason}`,
      );
    return found.resizer;
  };

  const locked = async <T>(sandboxId: SandboxId, ctx: ResourceOpContext, fn: () => Promise<T>): Promise<T> =>
    gate.run(sandboxId, ctx.signal, fn);

  return {
    get: (sandboxId, ctx) =>
      locked(sandboxId, ctx, async () => {
        const resizer = await resizerOf(sandboxId);
        return resourcesOf(await resizer.inspect(callOpts(ctx, opts)));
      }),
    resize: (sandboxId, request, ctx) =>
      locked(sandboxId, ctx, async () => {
        const resizer = await resizerOf(sandboxId);
        const call = callOpts(ctx, opts);
        let view = await resizer.inspect(call);
        // Both fields are checked before either is changed: a refused request changes nothing.
        const plan = planResize(request, view);
        if (plan.vcpus !== undefined) {
          await resizer.setVcpus(plan.vcpus, view, call);
          if (plan.memoryMiB !== undefined) view = await resizer.inspect(call);
        }
        if (plan.memoryMiB !== undefined) await resizer.setMemory(plan.memoryMiB, view, call);
        return resourcesOf(await resizer.inspect(call));
      }),
  };
}

function callOpts(
  ctx: ResourceOpContext,
  opts: ResourceServiceOptions,
): { signal?: AbortSignal; unplugTimeoutMs?: number } {
  return {
    ...(ctx.signal ? { signal: ctx.signal } : {}),
    ...(opts.unplugTimeoutMs !== undefined ? { unplugTimeoutMs: opts.unplugTimeoutMs } : {}),
  };
}
