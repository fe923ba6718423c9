import type { CallOptions } from './deadline.js';
import { deviceIs } from './events.js';
import type { QmpExecutor } from './executor.js';
import type { QmpEvent } from './messages.js';
import type {
  BlockDeviceInfo,
  BlockdevAddOptions,
  BlockExportAddOptions,
  BlockExportInfo,
  BlockInfo,
  BlockResizeOptions,
  BlockStats,
  DeviceAddOptions,
  HotpluggableCpu,
  MemorySizeSummary,
  NetdevAddOptions,
  ObjectAddOptions,
  ObjectPropertyInfo,
  PciInfo,
  StatusInfo,
} from './types.js';

// Typed wrappers: one function per QMP command the product uses, over any QmpExecutor.

export function queryStatus(qmp: QmpExecutor, opts?: CallOptions): Promise<StatusInfo> {
  return qmp.execute<StatusInfo>('query-status', undefined, opts);
}

/** Every named node, flat (children are listed as nodes of their own, not nested). */
export function queryNamedBlockNodes(qmp: QmpExecutor, opts?: CallOptions): Promise<BlockDeviceInfo[]> {
  return qmp.execute<BlockDeviceInfo[]>('query-named-block-nodes', { flat: true }, opts);
}

export function queryBlock(qmp: QmpExecutor, opts?: CallOptions): Promise<BlockInfo[]> {
  return qmp.execute<BlockInfo[]>('query-block', undefined, opts);
}

/** With `queryNodes`, stats per named node instead of per device backend. */
export function queryBlockstats(
  qmp: QmpExecutor,
  queryNodes = false,
  opts?: CallOptions,
): Promise<BlockStats[]> {
  return qmp.execute<BlockStats[]>(
    'query-blockstats',
    queryNodes ? { 'query-nodes': true } : undefined,
    opts,
  );
}

export function queryPci(qmp: QmpExecutor, opts?: CallOptions): Promise<PciInfo[]> {
  return qmp.execute<PciInfo[]>('query-pci', undefined, opts);
}

/** Properties (and children) of a QOM path, e.g. '/machine/peripheral' lists devices by id. */
export function qomList(qmp: QmpExecutor, path: string, opts?: CallOptions): Promise<ObjectPropertyInfo[]> {
  return qmp.execute<ObjectPropertyInfo[]>('qom-list', { path }, opts);
}

export async function objectAdd(
  qmp: QmpExecutor,
  object: ObjectAddOptions,
  opts?: CallOptions,
): Promise<void> {
  await qmp.execute('object-add', object, opts);
}

export async function objectDel(qmp: QmpExecutor, id: string, opts?: CallOptions): Promise<void> {
  await qmp.execute('object-del', { id }, opts);
}

export async function blockdevAdd(
  qmp: QmpExecutor,
  node: BlockdevAddOptions,
  opts?: CallOptions,
): Promise<void> {
  await qmp.execute('blockdev-add', node, opts);
}

export async function blockdevDel(qmp: QmpExecutor, nodeName: string, opts?: CallOptions): Promise<void> {
  await qmp.execute('blockdev-del', { 'node-name': nodeName }, opts);
}

export async function deviceAdd(
  qmp: QmpExecutor,
  device: DeviceAddOptions,
  opts?: CallOptions,
): Promise<void> {
  await qmp.execute('device_add', device, opts);
}

/**
 * Requests the unplug only; completion is the DEVICE_DELETED event (use deviceDelAndWait when
 * the caller needs it gone, e.g. before blockdev-del).
 */
export async function deviceDel(qmp: QmpExecutor, id: string, opts?: CallOptions): Promise<void> {
  await qmp.execute('device_del', { id }, opts);
}

/**
 * device_del, then the DEVICE_DELETED whose `data.device` is `id` (armed before the command:
 * the event can precede the reply, and a virtio device first reports its backend without
 * `device`). `timeoutMs` bounds the whole exchange.
 */
export async function deviceDelAndWait(
  qmp: QmpExecutor,
  id: string,
  opts: CallOptions = {},
): Promise<QmpEvent<{ device?: string; path: string }>> {
  const deleted = qmp.waitFor('DEVICE_DELETED', deviceIs(id), opts);
  try {
    await qmp.execute('device_del', { id }, opts);
  } catch (err) {
    deleted.cancel();
    throw err;
  }
  return deleted;
}

export async function blockResize(
  qmp: QmpExecutor,
  resize: BlockResizeOptions,
  opts?: CallOptions,
): Promise<void> {
  await qmp.execute('block_resize', resize, opts);
}

export async function netdevAdd(
  qmp: QmpExecutor,
  netdev: NetdevAddOptions,
  opts?: CallOptions,
): Promise<void> {
  await qmp.execute('netdev_add', netdev, opts);
}

export async function netdevDel(qmp: QmpExecutor, id: string, opts?: CallOptions): Promise<void> {
  await qmp.execute('netdev_del', { id }, opts);
}

export function queryHotpluggableCpus(qmp: QmpExecutor, opts?: CallOptions): Promise<HotpluggableCpu[]> {
  return qmp.execute<HotpluggableCpu[]>('query-hotpluggable-cpus', undefined, opts);
}

export function queryMemorySizeSummary(qmp: QmpExecutor, opts?: CallOptions): Promise<MemorySizeSummary> {
  return qmp.execute<MemorySizeSummary>('query-memory-size-summary', undefined, opts);
}

export async function blockExportAdd(
  qmp: QmpExecutor,
  exp: BlockExportAddOptions,
  opts?: CallOptions,
): Promise<void> {
  await qmp.execute('block-export-add', exp, opts);
}

/**
 * Requests the export's shutdown; it is gone once BLOCK_EXPORT_DELETED is emitted (or
 * query-block-exports no longer lists it). `mode: 'hard'` disconnects clients.
 */
export async function blockExportDel(
  qmp: QmpExecutor,
  id: string,
  mode?: 'safe' | 'hard',
  opts?: CallOptions,
): Promise<void> {
  await qmp.execute('block-export-del', mode === undefined ? { id } : { id, mode }, opts);
}

export function queryBlockExports(qmp: QmpExecutor, opts?: CallOptions): Promise<BlockExportInfo[]> {
  return qmp.execute<BlockExportInfo[]>('query-block-exports', undefined, opts);
}
