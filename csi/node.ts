// The intercepted CSI calls of vmplug-csi. A volume in direct mode (StorageClass parameter
// vmplug.io/direct-mode, or its PVC's volume.katacontainers.io/direct-mode annotation) is served by
// vmplugd's pod API; every other volume and call goes to the real plugin as raw bytes.
//
// What is kept, and where: per staged volume, its mode and, for rbd, the rbd source with the cephx
// key from the node-stage secret, in this process's memory only (never on disk, never logged).
// After a restart of vmplug-csi: a volume already published answers NodePublish again from
// vmplugd's record (idempotent), NodeUnpublish / stats / expand ask vmplugd whether it knows the
// volume, a `block` volume is found again at its staging path; only an rbd volume staged but not
// yet published by this process gets FAILED_PRECONDITION at NodePublish (kubelet does not repeat
// NodeStage for a volume it holds as staged, so the operator deletes the pod; see docs/csi.md).
import * as grpc from '@grpc/grpc-js';
import {
  checkVolumeId,
  DIRECT_MODE_ANNOTATION,
  DIRECT_MODE_PARAM,
  type DirectMode,
  type MonitorsOf,
  mountCapability,
  notStaged,
  parseDirectMode,
  parseTargetPath,
  podOf,
  publishBody,
  pvFromStagingPath,
  rbdSource,
  required,
} from './direct-mode.js';
import type { CallContext, RawHandler, Upstream } from './grpc-proxy.js';
import type { VolumeLookup } from './lookup.js';
import {
  decode,
  encode,
  FIELD,
  type MessageName,
  type MessageOf,
  type NodeGetVolumeStatsResponse,
  NodeRpc,
  VolumeUsageUnit,
} from './messages.js';
import { PodApiError, type PodVolumes, type PublishBody, type RbdSource } from './pod-api.js';
import type { StagedDeviceOf } from './staged-device.js';
import { CsiError, failedPrecondition, fromPodApi, invalidArgument } from './status.js';
import { joinFields, lengthDelimited, splitFields } from './wire.js';

export interface NodeProxyLog {
  info(fields: Record<string, unknown>, msg: string): void;
  warn(fields: Record<string, unknown>, msg: string): void;
}

export interface NodeProxyOptions {
  /** The CSI driver name kubelet knows (rbd.csi.ceph.com). */
  driver: string;
  pods: PodVolumes;
  monitorsOf: MonitorsOf;
  stagedDeviceOf: StagedDeviceOf;
  /**
   * Creates the target directory of a direct volume (the spec gives its creation to the plugin;
   * kubelet removes it after NodeUnpublish). Kata's record is keyed by this path, and kubelet
   * walks it for fsGroup and hands it to the runtime as the bind-mount source.
   */
  makeTargetDir: (path: string) => Promise<void>;
  /** Optional: PVC annotations through the API server. */
  lookup?: VolumeLookup;
  lookupTimeoutMs?: number;
  kubeletRoot?: string;
  /** Added to GetPluginInfo's manifest, so `kubectl get csinode` users can tell the proxy is there. */
  version?: string;
  log?: NodeProxyLog;
}

type Staged =
  | { mode: 'forward' }
  | { mode: 'rbd'; source: RbdSource; stagingPath: string }
  | { mode: 'block'; stagingPath: string };

const NODE = '/csi.v1.Node/';
const EMPTY = Buffer.alloc(0);
const quiet: NodeProxyLog = { info() {}, warn() {} };

export class NodeProxy {
  readonly #o: Required<Omit<NodeProxyOptions, 'lookup' | 'version'>> &
    Pick<NodeProxyOptions, 'lookup' | 'version'>;
  /** By volume id: what NodeStage decided (and, for rbd, the credentials). Memory only. */
  readonly #staged = new Map<string, Staged>();
  /** By target path: direct volumes this process published. */
  readonly #published = new Map<string, { podUid: string; volumeId: string }>();
  /** Whether the real plugin stages volumes itself (learned from its NodeGetCapabilities). */
  #upstreamStages: boolean | undefined;

  constructor(options: NodeProxyOptions) {
    this.#o = { lookupTimeoutMs: 5_000, kubeletRoot: '/var/lib/kubelet', log: quiet, ...options };
  }

  /** Handlers keyed by full method path, for addCsiServices. */
  handlers(): Map<string, RawHandler> {
    return new Map<string, RawHandler>([
      ['/csi.v1.Identity/GetPluginInfo', (r, c, u) => this.getPluginInfo(r, c, u)],
      [`${NODE}NodeGetCapabilities`, (r, c, u) => this.nodeGetCapabilities(r, c, u)],
      [`${NODE}NodeStageVolume`, (r, c, u) => this.nodeStage(r, c, u)],
      [`${NODE}NodeUnstageVolume`, (r, c, u) => this.nodeUnstage(r, c, u)],
      [`${NODE}NodePublishVolume`, (r, c, u) => this.nodePublish(r, c, u)],
      [`${NODE}NodeUnpublishVolume`, (r, c, u) => this.nodeUnpublish(r, c, u)],
      [`${NODE}NodeGetVolumeStats`, (r, c, u) => this.nodeGetVolumeStats(r, c, u)],
      [`${NODE}NodeExpandVolume`, (r, c, u) => this.nodeExpand(r, c, u)],
    ]);
  }

  /** Number of staged direct volumes holding credentials (for tests and the log). */
  get credentialsHeld(): number {
    return [...this.#staged.values()].filter((s) => s.mode === 'rbd').length;
  }

  async getPluginInfo(req: Buffer, ctx: CallContext, up: Upstream): Promise<Buffer> {
    const answer = await up.call('/csi.v1.Identity/GetPluginInfo', req, ctx);
    if (this.#o.version === undefined) return answer;
    const entry = encode('csi.v1.StringEntry', { key: 'vmplug.io/csi-proxy', value: this.#o.version });
    return joinFields([answer, lengthDelimited(FIELD.GetPluginInfoResponse.manifest, entry)]);
  }

  /**
   * The real plugin's capabilities, plus STAGE_UNSTAGE_VOLUME: the credentials of an rbd volume
   * arrive only at NodeStage. GET_VOLUME_STATS and EXPAND_VOLUME stay exactly as the real plugin
   * says: direct volumes answer both (stats from vmplugd, expand through its resize).
   */
  async nodeGetCapabilities(req: Buffer, ctx: CallContext, up: Upstream): Promise<Buffer> {
    const answer = await up.call(`${NODE}NodeGetCapabilities`, req, ctx);
    const fields = splitFields(answer);
    const stages = fields.some(
      (f) =>
        f.number === FIELD.NodeGetCapabilitiesResponse.capabilities &&
        decode('csi.v1.NodeServiceCapability', f.value).rpc?.type === NodeRpc.STAGE_UNSTAGE_VOLUME,
    );
    this.#upstreamStages = stages;
    if (stages) return answer;
    const cap = encode('csi.v1.NodeServiceCapability', { rpc: { type: NodeRpc.STAGE_UNSTAGE_VOLUME } });
    return joinFields([...fields, lengthDelimited(FIELD.NodeGetCapabilitiesResponse.capabilities, cap)]);
  }

  async nodeStage(req: Buffer, ctx: CallContext, up: Upstream): Promise<Buffer> {
    const r = decodeRequest('csi.v1.NodeStageVolumeRequest', req);
    const volumeId = required(r.volumeId, 'volume_id');
    const pvName = pvFromStagingPath(r.stagingTargetPath ?? '', this.#o.kubeletRoot);
    const mode = await this.#directMode(volumeId, r.volumeContext ?? {}, pvName);
    if (mode === undefined) {
      this.#staged.set(volumeId, { mode: 'forward' });
      if (await this.#stagesUpstream(ctx, up)) return up.call(`${NODE}NodeStageVolume`, req, ctx);
      return EMPTY; // We advertised staging for the real plugin's sake: nothing to do for it.
    }
    checkVolumeId(volumeId);
    const stagingPath = required(r.stagingTargetPath, 'staging_target_path');
    mountCapability(r.volumeCapability, 'volume_capability');
    if (mode === 'rbd') {
      const source = await rbdSource(volumeId, r.volumeContext ?? {}, r.secrets ?? {}, this.#o.monitorsOf);
      this.#staged.set(volumeId, { mode, source, stagingPath });
      this.#o.log.info({ volumeId, mode }, 'staged a direct volume (credentials kept in memory)');
      return EMPTY;
    }
    // block: the real plugin maps the volume, asked for a raw block device so that nothing is
    // mounted on the host; Kata mounts the filesystem in the guest.
    await up.call(`${NODE}NodeStageVolume`, asBlockStage(req), ctx);
    this.#staged.set(volumeId, { mode, stagingPath });
    this.#o.log.info({ volumeId, mode }, 'staged a direct volume through the real plugin (block device)');
    return EMPTY;
  }

  async nodeUnstage(req: Buffer, ctx: CallContext, up: Upstream): Promise<Buffer> {
    const r = decodeRequest('csi.v1.NodeUnstageVolumeRequest', req);
    const volumeId = required(r.volumeId, 'volume_id');
    required(r.stagingTargetPath, 'staging_target_path');
    const staged = this.#staged.get(volumeId);
    if (staged?.mode === 'rbd') {
      this.#staged.delete(volumeId);
      this.#o.log.info({ volumeId }, 'unstaged a direct volume (credentials dropped)');
      return EMPTY;
    }
    // block, forward, or unknown (a restart): the real plugin undoes whatever it staged, and
    // answers OK for a volume it never staged (NodeUnstage is idempotent).
    if (staged?.mode === 'forward' || staged === undefined) {
      if (!(await this.#stagesUpstream(ctx, up))) {
        this.#staged.delete(volumeId);
        return EMPTY;
      }
    }
    const answer = await up.call(`${NODE}NodeUnstageVolume`, req, ctx);
    this.#staged.delete(volumeId);
    return answer;
  }

  async nodePublish(req: Buffer, ctx: CallContext, up: Upstream): Promise<Buffer> {
    const r = decodeRequest('csi.v1.NodePublishVolumeRequest', req);
    const volumeId = required(r.volumeId, 'volume_id');
    const targetPath = required(r.targetPath, 'target_path');
    if (r.volumeCapability === undefined) throw invalidArgument('volume_capability', 'required');
    const volumeContext = r.volumeContext ?? {};
    const staged = this.#staged.get(volumeId);
    let mode: DirectMode | undefined;
    if (staged === undefined) {
      const pvName = parseTargetPath(targetPath, this.#o.kubeletRoot)?.pvName;
      mode = await this.#directMode(volumeId, volumeContext, pvName);
    } else if (staged.mode !== 'forward') {
      mode = staged.mode;
    }
    if (mode === undefined) return up.call(`${NODE}NodePublishVolume`, req, ctx);

    checkVolumeId(volumeId);
    const { podUid, pod } = podOf(targetPath, volumeContext, this.#o.kubeletRoot);
    let source: PublishBody['source'];
    if (staged?.mode === 'rbd') {
      source = staged.source;
    } else if (mode === 'block') {
      const stagingPath = staged?.mode === 'block' ? staged.stagingPath : r.stagingTargetPath;
      if (!stagingPath) {
        throw failedPrecondition(
          'staging_target_path: required for a direct-mode volume (it is staged first)',
        );
      }
      source = { type: 'hostDevice', path: await this.#o.stagedDeviceOf(stagingPath, volumeId) };
    } else {
      // rbd without credentials in memory: fine only when vmplugd already holds this publish.
      const known = await this.#pods('NodePublishVolume', (s) => this.#o.pods.get(podUid, volumeId, s), ctx);
      const same = known !== undefined && (known.targetPath ?? targetPath) === targetPath;
      if (same && (known.state === 'Published' || known.state === 'Consumed')) {
        this.#published.set(targetPath, { podUid, volumeId });
        return EMPTY;
      }
      if (same && known.state === 'Publishing') {
        // vmplugd finishes or fails it (its reconcile); kubelet asks again.
        throw new CsiError(grpc.status.UNAVAILABLE, `volume ${volumeId} is still being published by vmplugd`);
      }
      throw notStaged(volumeId);
    }
    const body = publishBody({
      mode,
      source,
      targetPath,
      capability: r.volumeCapability,
      readonly: r.readonly ?? false,
      ...(pod ? { pod } : {}),
    });
    await this.#o.makeTargetDir(targetPath).catch((err: NodeJS.ErrnoException) => {
      throw new CsiError(
        grpc.status.INTERNAL,
        `cannot create target_path ${targetPath}: ${err.code ?? err.message}`,
      );
    });
    const { created } = await this.#pods(
      'NodePublishVolume',
      (s) => this.#o.pods.publish(podUid, volumeId, body, s),
      ctx,
    );
    this.#published.set(targetPath, { podUid, volumeId });
    this.#o.log.info({ volumeId, podUid, mode, created }, 'published a direct volume through vmplugd');
    return EMPTY;
  }

  async nodeUnpublish(req: Buffer, ctx: CallContext, up: Upstream): Promise<Buffer> {
    const r = decodeRequest('csi.v1.NodeUnpublishVolumeRequest', req);
    const volumeId = required(r.volumeId, 'volume_id');
    const targetPath = required(r.targetPath, 'target_path');
    const direct = await this.#directPublish('NodeUnpublishVolume', volumeId, targetPath, ctx);
    if (direct === undefined) return up.call(`${NODE}NodeUnpublishVolume`, req, ctx);
    await this.#pods('NodeUnpublishVolume', (s) => this.#o.pods.unpublish(direct.podUid, volumeId, s), ctx);
    this.#published.delete(targetPath);
    this.#o.log.info({ volumeId, podUid: direct.podUid }, 'unpublished a direct volume through vmplugd');
    return EMPTY;
  }

  async nodeGetVolumeStats(req: Buffer, ctx: CallContext, up: Upstream): Promise<Buffer> {
    const r = decodeRequest('csi.v1.NodeGetVolumeStatsRequest', req);
    const volumeId = required(r.volumeId, 'volume_id');
    const volumePath = required(r.volumePath, 'volume_path');
    const direct = await this.#directPublish('NodeGetVolumeStats', volumeId, volumePath, ctx, 'forward');
    if (direct === undefined) return up.call(`${NODE}NodeGetVolumeStats`, req, ctx);
    const view = await this.#pods(
      'NodeGetVolumeStats',
      (s) => this.#o.pods.get(direct.podUid, volumeId, s),
      ctx,
    );
    if (view === undefined)
      throw new CsiError(grpc.status.NOT_FOUND, `volume ${volumeId} is not published at ${volumePath}`);
    // The filesystem lives in the guest: the host knows the volume's size, not what is used.
    const answer: NodeGetVolumeStatsResponse = { usage: [{ unit: VolumeUsageUnit.BYTES }] };
    if (view.sizeBytes !== undefined) answer.usage[0]!.total = view.sizeBytes;
    if (view.state === 'Failed') {
      answer.volumeCondition = {
        abnormal: true,
        message: view.problem?.detail ?? 'vmplugd reports the volume Failed',
      };
    } else {
      answer.volumeCondition = { abnormal: false, message: `vmplugd: ${view.state}` };
    }
    return encode('csi.v1.NodeGetVolumeStatsResponse', answer);
  }

  async nodeExpand(req: Buffer, ctx: CallContext, up: Upstream): Promise<Buffer> {
    const r = decodeRequest('csi.v1.NodeExpandVolumeRequest', req);
    const volumeId = required(r.volumeId, 'volume_id');
    const volumePath = required(r.volumePath, 'volume_path');
    const direct = await this.#directPublish('NodeExpandVolume', volumeId, volumePath, ctx);
    if (direct === undefined) return up.call(`${NODE}NodeExpandVolume`, req, ctx);
    const size = r.capacityRange?.requiredBytes;
    if (!size || size <= 0)
      throw invalidArgument('capacity_range.required_bytes', 'required for a direct-mode volume');
    const done = await this.#pods(
      'NodeExpandVolume',
      (s) => this.#o.pods.resize(direct.podUid, volumeId, size, s),
      ctx,
    );
    return encode('csi.v1.NodeExpandVolumeResponse', { capacityBytes: done.sizeBytes ?? size });
  }

  /** Direct mode of a volume from volume_context, else from its PVC's annotation (if configured). */
  async #directMode(volumeId: string, context: Record<string, string>, pvName: string | undefined) {
    const param = context[DIRECT_MODE_PARAM];
    if (param !== undefined) return parseDirectMode(param, `volume_context["${DIRECT_MODE_PARAM}"]`);
    const lookup = this.#o.lookup;
    if (lookup === undefined) return undefined;
    let value: string | undefined;
    try {
      const ref = { volumeId, driver: this.#o.driver, ...(pvName ? { pvName } : {}) };
      value = await lookup.directModeOf(ref, AbortSignal.timeout(this.#o.lookupTimeoutMs));
    } catch (err) {
      // Forwarding would let the real plugin mount on the host what a Kata pod needs in its guest:
      // wait for the API server instead (kubelet retries UNAVAILABLE).
      throw new CsiError(
        grpc.status.UNAVAILABLE,
        `cannot read the PVC annotation ${DIRECT_MODE_ANNOTATION} of volume ${volumeId}: ${(err as Error).message}`,
      );
    }
    return value === undefined
      ? undefined
      : parseDirectMode(value, `PVC annotation ${DIRECT_MODE_ANNOTATION}`);
  }

  /** The pod of a direct volume published at `path`, or undefined when the real plugin owns it. */
  /**
   * `whenAway`: what a call does when vmplugd cannot say whether it holds the volume. Unpublish
   * and expand wait (UNAVAILABLE: forwarding a direct volume's unpublish would leave vmplug's
   * record and storage daemon behind); stats, polled by kubelet every minute, forward (the worst
   * case is the real plugin's NOT_FOUND for a direct volume).
   */
  async #directPublish(
    call: string,
    volumeId: string,
    path: string,
    ctx: CallContext,
    whenAway: 'wait' | 'forward' = 'wait',
  ) {
    const mine = this.#published.get(path);
    if (mine !== undefined && mine.volumeId === volumeId) return mine;
    if (this.#staged.get(volumeId)?.mode === 'forward') return undefined;
    const parsed = parseTargetPath(path, this.#o.kubeletRoot);
    if (parsed === undefined || checkVolumeIdOk(volumeId) === false) return undefined;
    // Not seen since this process started: vmplugd's records say whether it is a direct volume.
    try {
      const view = await this.#pods(call, (s) => this.#o.pods.get(parsed.podUid, volumeId, s), ctx);
      return view === undefined ? undefined : { podUid: parsed.podUid, volumeId };
    } catch (err) {
      if (whenAway === 'forward') return undefined;
      throw err;
    }
  }

  async #stagesUpstream(ctx: CallContext, up: Upstream): Promise<boolean> {
    if (this.#upstreamStages === undefined) await this.nodeGetCapabilities(EMPTY, ctx, up);
    return this.#upstreamStages ?? true;
  }

  /** A pod-API call bounded by kubelet's deadline, its failures as CSI codes. */
  async #pods<T>(call: string, fn: (signal: AbortSignal) => Promise<T>, ctx: CallContext): Promise<T> {
    const deadline = ctx.deadline instanceof Date ? ctx.deadline.getTime() : ctx.deadline;
    const left = Number.isFinite(deadline) ? Math.max(1, deadline - Date.now()) : undefined;
    const signal = left === undefined ? new AbortController().signal : AbortSignal.timeout(left);
    try {
      return await fn(signal);
    } catch (err) {
      if (err instanceof PodApiError) throw fromPodApi(err, call);
      throw err;
    }
  }
}

/** A request kubelet sent: bytes that are not the message are the caller's error. */
function decodeRequest<N extends MessageName>(name: N, req: Buffer): MessageOf<N> {
  try {
    return decode(name, req);
  } catch {
    throw new CsiError(grpc.status.INVALID_ARGUMENT, `the request is not a valid ${name}`);
  }
}

function checkVolumeIdOk(volumeId: string): boolean {
  try {
    checkVolumeId(volumeId);
    return true;
  } catch {
    return false;
  }
}

/** NodeStageVolumeRequest with its volume capability's access type turned into `block`. */
export function asBlockStage(req: Buffer): Buffer {
  return joinFields(
    splitFields(req).map((f) => {
      if (f.number !== FIELD.NodeStageVolumeRequest.volumeCapability) return f;
      const cap = splitFields(f.value).filter(
        (c) => c.number !== FIELD.VolumeCapability.mount && c.number !== FIELD.VolumeCapability.block,
      );
      const block = lengthDelimited(FIELD.VolumeCapability.block, EMPTY);
      return lengthDelimited(FIELD.NodeStageVolumeRequest.volumeCapability, joinFields([block, ...cap]));
    }),
  );
}
