import type { SandboxId } from '../../core/ids.js';
import { ListenerSet } from '../../core/listeners.js';
import type { Readiness } from '../../core/readiness.js';
import type { SandboxCatalog } from '../../core/sandbox.js';
import type { Attachment, ListVolumes, OperationLogger } from '../../storage/attach-service.js';
import type { PodRef } from '../../storage/volume-spec.js';
import type {
  Condition,
  NicStatus,
  NodeStatusSnapshot,
  PodVolumeStatus,
  SandboxStatus,
  VolumeStatus,
} from './kube/status.js';
import type { NodeFacts } from './node-facts.js';
import { statusNodeFacts } from './node-facts.js';
import type { Frontend, VolumeOperation } from './observed-service.js';

// The node's state as the Kubernetes reporter reads it (its SnapshotProvider): the catalog's
// sandboxes (Kata discovery, libvirt domains), each with the engine's volumes, the node facts and
// a Ready condition. The reporter calls snapshot() synchronously, so the engine's volume lists
// (read from the journal) are cached here and re-read when something may have changed them behind
// an operation's back: a sandbox appearing or changing, a reconcile run, the slow resync. An
// attach or detach that succeeded patches the cached list from its own outcome instead (operation
// applied): re-reading every record of the sandbox after each one was the largest CPU cost of a
// burst of attaches. Pod volumes come from their own cache (pod-volumes.ts), read as they are.

export interface NodeSnapshotOptions {
  catalog: SandboxCatalog;
  listVolumes: ListVolumes;
  /** The NICs vmplug hot-plugged into a sandbox (net/); none when absent. */
  listNics?: (sandboxId: string) => Promise<NicStatus[]>;
  /** The pod volumes (DESIGN §5b) as last read; none when absent. */
  podVolumes?: () => PodVolumeStatus[];
  facts: () => NodeFacts;
  readiness: () => Readiness;
  log: OperationLogger;
  vmplugVersion?: string;
  /** How often readiness is checked for a change of the Ready condition (default 2 s). */
  readinessPollMs?: number;
  /** Bound on one volume list read (default 5 s). */
  listTimeoutMs?: number;
}

export class NodeSnapshot {
  readonly #o: NodeSnapshotOptions;
  readonly #volumes = new Map<string, VolumeStatus[]>();
  /** The Pod each volume's attach request named, by sandbox then volume (Events of a detach). */
  readonly #pods = new Map<string, Map<string, PodRef>>();
  readonly #nics = new Map<string, NicStatus[]>();
  readonly #listeners = new ListenerSet<[]>();
  readonly #refreshing = new Map<string, Promise<void>>();
  readonly #again = new Set<string>();
  /** Sandboxes whose list was read at least once: only such a list can be patched. */
  readonly #listed = new Set<string>();
  /** Per sandbox, counts patches: a read that saw a patch land while it ran is stale. */
  readonly #patches = new Map<string, number>();
  readonly #stopper = new AbortController();
  #ready: { status: Condition['status']; reason: string; message: string; since: string } | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(o: NodeSnapshotOptions) {
    this.#o = o;
    this.#ready = undefined;
    this.#checkReadiness();
    this.#timer = setInterval(() => this.#checkReadiness(), o.readinessPollMs ?? 2_000);
    this.#timer.unref();
  }

  snapshot(): NodeStatusSnapshot {
    const sandboxes: SandboxStatus[] = this.#o.catalog.list().map((r) => {
      const s: SandboxStatus = {
        id: r.id,
        kind: r.kind,
        state: r.state,
        volumes: this.#volumes.get(r.id) ?? [],
        nics: this.#nics.get(r.id) ?? [],
      };
      if (r.reason !== undefined) s.reason = r.reason;
      if (r.pod !== undefined && Object.keys(r.pod).length > 0) s.pod = { ...r.pod };
      return s;
    });
    const conditions: Condition[] = [];
    if (this.#ready !== undefined) {
      conditions.push({
        type: 'Ready',
        status: this.#ready.status,
        reason: this.#ready.reason,
        message: this.#ready.message,
        lastTransitionTime: this.#ready.since,
      });
    }
    return {
      node: statusNodeFacts(this.#o.facts(), this.#o.vmplugVersion),
      sandboxes,
      podVolumes: this.#o.podVolumes?.() ?? [],
      conditions,
    };
  }

  subscribe(listener: () => void): () => void {
    return this.#listeners.add(listener);
  }

  /** Something changed that snapshot() reads directly (catalog, facts): tell the subscribers. */
  changed(): void {
    this.#listeners.emit();
  }

  /**
   * Re-reads the engine's volumes of `sandboxId` and tells the subscribers. Concurrent calls for
   * one sandbox share the read in flight and ask for one more after it, so the last read always
   * starts after the last change.
   */
  refreshVolumes(sandboxId: string): Promise<void> {
    const running = this.#refreshing.get(sandboxId);
    if (running !== undefined) {
      this.#again.add(sandboxId);
      return running;
    }
    const run = (async () => {
      try {
        do {
          this.#again.delete(sandboxId);
          await Promise.all([this.#readVolumes(sandboxId), this.#readNics(sandboxId)]);
        } while (this.#again.has(sandboxId) && !this.#stopper.signal.aborted);
      } finally {
        this.#refreshing.delete(sandboxId);
      }
    })();
    this.#refreshing.set(sandboxId, run);
    return run;
  }

  /**
   * An attach or detach finished: patch the sandbox's cached list from its outcome and tell the
   * subscribers. A failure may have left any record state behind (Failed, a half-done detach), and
   * a list never read has nothing to patch: both are re-read instead. A read running meanwhile
   * started before the patch: its result is dropped and the list read once more.
   */
  operationDone(op: VolumeOperation): void {
    const id = op.sandboxId as string;
    if (!op.ok || !this.#listed.has(id)) {
      void this.refreshVolumes(id).then(() => this.changed());
      return;
    }
    this.#patches.set(id, (this.#patches.get(id) ?? 0) + 1);
    if (this.#refreshing.has(id)) this.#again.add(id);
    const others = (this.#volumes.get(id) ?? []).filter((v) => v.volumeId !== op.volumeId);
    const pods = this.#pods.get(id) ?? new Map<string, PodRef>();
    pods.delete(op.volumeId);
    if (op.op === 'attach') {
      others.push(volumeStatus(op.attachment));
      others.sort(byVolumeId);
      if (op.attachment.pod !== undefined) pods.set(op.volumeId, op.attachment.pod);
    }
    this.#setVolumes(id, others, pods);
    this.changed();
  }

  /** Re-reads every known sandbox's volumes and forgets those of sandboxes no longer listed. */
  async refreshAll(): Promise<void> {
    const ids = new Set(this.#o.catalog.list().map((r) => r.id));
    let dropped = false;
    for (const id of new Set([...this.#volumes.keys(), ...this.#nics.keys()])) {
      if (!ids.has(id)) {
        this.#volumes.delete(id);
        this.#pods.delete(id);
        this.#nics.delete(id);
        this.#listed.delete(id);
        dropped = true;
      }
    }
    await Promise.all([...ids].map((id) => this.refreshVolumes(id)));
    if (dropped) this.changed();
  }

  /** Forget a sandbox that is gone. */
  forget(sandboxId: string): void {
    const had = this.#nics.delete(sandboxId);
    this.#pods.delete(sandboxId);
    this.#listed.delete(sandboxId);
    this.#patches.delete(sandboxId);
    if (this.#volumes.delete(sandboxId) || had) this.changed();
  }

  /** The mode, frontend and pod of a volume as last read (labels and Event target of a detach). */
  describe(
    sandboxId: string,
    volumeId: string,
  ): { mode: 'block' | 'rbd'; frontend: Frontend; pod?: PodRef } | undefined {
    const v = this.#volumes.get(sandboxId)?.find((x) => x.volumeId === volumeId);
    if (v === undefined) return undefined;
    const pod = this.#pods.get(sandboxId)?.get(volumeId);
    return {
      mode: v.mode === 'rbd' ? 'rbd' : 'block',
      frontend: v.bus === 'scsi' || v.bus === 'virtio-blk' ? v.bus : 'unknown',
      ...(pod !== undefined ? { pod } : {}),
    };
  }

  close(): void {
    this.#stopper.abort();
    clearInterval(this.#timer);
  }

  async #readVolumes(sandboxId: string): Promise<void> {
    const signal = AbortSignal.any([
      this.#stopper.signal,
      AbortSignal.timeout(this.#o.listTimeoutMs ?? 5_000),
    ]);
    const patches = this.#patches.get(sandboxId);
    let list: Attachment[];
    try {
      list = await this.#o.listVolumes(sandboxId as SandboxId, { signal, log: this.#o.log });
    } catch (err) {
      this.#o.log.debug({ sandboxId, err }, 'volume list not read for the node status; kept the last one');
      return;
    }
    // An operation's outcome patched the list while this read ran: its list may predate that
    // outcome (refreshVolumes reads again).
    if (this.#patches.get(sandboxId) !== patches) return;
    const next = list.map(volumeStatus).sort(byVolumeId);
    // Kept beside the status, not in it: the VmplugNode status has no field for it.
    const pods = new Map(list.flatMap((a) => (a.pod !== undefined ? [[a.volumeId, a.pod] as const] : [])));
    this.#listed.add(sandboxId);
    if (this.#setVolumes(sandboxId, next, pods)) this.changed();
  }

  /** Stores a sandbox's volume list; true when it differs from the one it replaces. */
  #setVolumes(sandboxId: string, next: VolumeStatus[], pods: Map<string, PodRef>): boolean {
    if (pods.size === 0) this.#pods.delete(sandboxId);
    else this.#pods.set(sandboxId, pods);
    const before = this.#volumes.get(sandboxId);
    if (next.length === 0) this.#volumes.delete(sandboxId);
    else this.#volumes.set(sandboxId, next);
    return JSON.stringify(before ?? []) !== JSON.stringify(next);
  }

  async #readNics(sandboxId: string): Promise<void> {
    if (this.#o.listNics === undefined) return;
    let next: NicStatus[];
    try {
      next = await this.#o.listNics(sandboxId);
    } catch (err) {
      this.#o.log.debug({ sandboxId, err }, 'NIC list not read for the node status; kept the last one');
      return;
    }
    const before = this.#nics.get(sandboxId);
    if (next.length === 0) this.#nics.delete(sandboxId);
    else this.#nics.set(sandboxId, next);
    if (JSON.stringify(before ?? []) !== JSON.stringify(next)) this.changed();
  }

  #checkReadiness(): void {
    let r: Readiness;
    try {
      r = this.#o.readiness();
    } catch (err) {
      r = { ready: false, checks: { probe: { ok: false, detail: (err as Error).message } } };
    }
    const failing = Object.entries(r.checks).filter(([, c]) => !c.ok);
    const next = r.ready
      ? { status: 'True' as const, reason: 'Ready', message: 'vmplugd serves attach requests' }
      : {
          status: 'False' as const,
          reason: 'NotReady',
          message: failing.map(([n, c]) => (c.detail === undefined ? n : `${n}: ${c.detail}`)).join('; '),
        };
    const prev = this.#ready;
    if (prev !== undefined && prev.status === next.status && prev.message === next.message) return;
    const since = prev !== undefined && prev.status === next.status ? prev.since : new Date().toISOString();
    this.#ready = { ...next, since };
    this.changed();
  }
}

/** One order for read and patched lists alike, so an unchanged list compares equal. */
function byVolumeId(a: VolumeStatus, b: VolumeStatus): number {
  return a.volumeId < b.volumeId ? -1 : a.volumeId > b.volumeId ? 1 : 0;
}

export function volumeStatus(a: Attachment): VolumeStatus {
  const v: VolumeStatus = {
    volumeId: a.volumeId,
    mode: a.mode,
    bus: a.bus,
    state: a.state,
    device: a.deviceId,
    readOnly: a.readOnly,
  };
  const last = a.timeline.at(-1);
  if (last !== undefined) v.since = last.at;
  if (a.state === 'Attached') v.attachMs = Math.round(a.timeline.reduce((n, t) => n + t.ms, 0));
  if (a.lastError !== undefined) v.error = `${a.lastError.code}: ${a.lastError.message}`;
  return v;
}
