import {
  type BlockExportInfo,
  blockdevAdd,
  blockdevDel,
  blockExportAdd,
  blockExportDel,
  blockResize,
  objectAdd,
  objectDel,
  QmpClient,
  QmpCommandError,
  QmpConnectError,
  type QmpExecutor,
  queryBlockExports,
  queryNamedBlockNodes,
} from '../../qmp/index.js';
import { blockdevRbd, secretObject } from '../qemu-args.js';
import { isAbsent, isDuplicate } from '../qmp-failure.js';
import type { RbdSource } from '../volume-spec.js';
import { type Budget, sleep } from './budget.js';
import { QSD_IDS } from './naming.js';

// The QMP steps on one storage daemon's monitor. Each is safe to repeat: a step whose object is
// already there (a vmplugd killed between two steps, now resuming) or already gone succeeds.

/** Connects, retrying while the freshly spawned daemon has not made its socket yet. */
export async function connectMonitor(path: string, budget: Budget): Promise<QmpClient> {
  for (;;) {
    try {
      return await QmpClient.connect(path, { ...budget.call(5_000), greetingTimeoutMs: 2_000 });
    } catch (err) {
      const retry =
        err instanceof QmpConnectError && (err.errno === 'ENOENT' || err.errno === 'ECONNREFUSED');
      if (!retry || budget.left() < 20) throw err;
      await sleep(20, budget.signal);
    }
  }
}

/** The secret object (the key, over QMP only), then the rbd node with the per-export conf. */
export async function openImage(
  qmp: QmpExecutor,
  source: RbdSource,
  readOnly: boolean,
  confPath: string,
  budget: Budget,
): Promise<void> {
  const names = { node: QSD_IDS.node, secret: QSD_IDS.secret };
  try {
    await objectAdd(qmp, secretObject(names, source.key), budget.call());
  } catch (err) {
    if (!isDuplicate(err)) throw err;
  }
  const { key: _key, ...stored } = source;
  try {
    await blockdevAdd(qmp, blockdevRbd(names, stored, { readOnly, confPath }), budget.call());
  } catch (err) {
    if (!isDuplicate(err)) throw err;
  }
}

export async function hasNode(qmp: QmpExecutor, budget: Budget): Promise<boolean> {
  const nodes = await queryNamedBlockNodes(qmp, budget.call());
  return nodes.some((n) => n['node-name'] === QSD_IDS.node);
}

export async function imageSize(qmp: QmpExecutor, budget: Budget): Promise<number> {
  const nodes = await queryNamedBlockNodes(qmp, budget.call());
  const node = nodes.find((n) => n['node-name'] === QSD_IDS.node);
  if (node === undefined) throw new Error(`node ${QSD_IDS.node} is not open`);
  return node.image['virtual-size'];
}

/**
 * Grows the image node to `sizeBytes` (QEMU's rbd driver resizes the image itself; one the
 * controller already grew is left as it is). The vhost-user-blk export does not follow by itself
 * in QEMU 7.2 (see the backend's resizeExport).
 */
export async function growImage(qmp: QmpExecutor, sizeBytes: number, budget: Budget): Promise<void> {
  await blockResize(qmp, { 'node-name': QSD_IDS.node, size: sizeBytes }, budget.call());
}

export function listExports(qmp: QmpExecutor, budget: Budget): Promise<BlockExportInfo[]> {
  return queryBlockExports(qmp, budget.call());
}

export async function addVhostUserExport(
  qmp: QmpExecutor,
  socketPath: string,
  readOnly: boolean,
  budget: Budget,
): Promise<void> {
  await blockExportAdd(
    qmp,
    {
      type: 'vhost-user-blk',
      id: QSD_IDS.export,
      'node-name': QSD_IDS.node,
      addr: { type: 'unix', path: socketPath },
      writable: !readOnly,
    },
    budget.call(),
  );
}

/** Deletes an export (if there) and waits until query-block-exports no longer lists it. */
export async function removeExport(qmp: QmpExecutor, id: string, budget: Budget): Promise<void> {
  try {
    await blockExportDel(qmp, id, undefined, budget.call());
  } catch (err) {
    if (!isExportAbsent(err)) throw err;
  }
  for (;;) {
    const exports = await queryBlockExports(qmp, budget.call());
    if (!exports.some((e) => e.id === id)) return;
    await sleep(20, budget.signal);
  }
}

/** blockdev-del of the node and object-del of the secret; both tolerate absence. */
export async function closeImage(qmp: QmpExecutor, budget: Budget): Promise<void> {
  try {
    await blockdevDel(qmp, QSD_IDS.node, budget.call());
  } catch (err) {
    if (!isAbsent(err)) throw err;
  }
  try {
    await objectDel(qmp, QSD_IDS.secret, budget.call());
  } catch (err) {
    if (!isAbsent(err)) throw err;
  }
}

function isExportAbsent(err: unknown): boolean {
  // QEMU 7.2: "Export 'x' is not found", or "... is already shutting down" (a repeated delete).
  return err instanceof QmpCommandError && /(is not found|is already shutting down)$/.test(err.desc);
}
