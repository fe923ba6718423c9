import {
  type CallOptions,
  QmpCommandError,
  type QmpExecutor,
  qomList,
  queryNamedBlockNodes,
} from '../qmp/index.js';
import { isVmplugName } from './naming.js';

// What a sandbox's QEMU holds, read through QMP the way reconcile and the steps need it: the
// devices under /machine/peripheral (by id, with their QOM type), the user-created objects under
// /objects (secrets), and the named block nodes. Each step re-reads what it is about to change,
// so a retried or resumed operation acts on what exists, not on what the journal expected.

export interface PeripheralDevice {
  id: string;
  /** QOM type, e.g. 'scsi-hd', 'virtio-blk-pci', 'pcie-root-port'. */
  type: string;
}

/**
 * The session's reconnect count when it has one (QmpSession), else undefined (one connection):
 * what was learnt of a QEMU holds only while this stays the same (a reconnect may be to a QEMU
 * restarted since, and events sent meanwhile are lost).
 */
export function generationOf(qmp: QmpExecutor): number | undefined {
  const g = (qmp as { generation?: unknown }).generation;
  return typeof g === 'number' ? g : undefined;
}

/** `child<scsi-hd>` -> `scsi-hd`; undefined for properties that are not children. */
function childType(type: string): string | undefined {
  const m = /^child<(.+)>$/.exec(type);
  return m?.[1];
}

/** The children of QOM container `path` by id, with their QOM type (other properties left out). */
async function listChildren(qmp: QmpExecutor, path: string, opts?: CallOptions): Promise<PeripheralDevice[]> {
  const out: PeripheralDevice[] = [];
  for (const p of await qomList(qmp, path, opts)) {
    const type = childType(p.type);
    if (type !== undefined) out.push({ id: p.name, type });
  }
  return out;
}

/** Devices created with an id (-device id=..., device_add id=...). */
export function listPeripherals(qmp: QmpExecutor, opts?: CallOptions): Promise<PeripheralDevice[]> {
  return listChildren(qmp, '/machine/peripheral', opts);
}

/** User-created objects (object-add, -object) by id, with their QOM type. */
export function listObjects(qmp: QmpExecutor, opts?: CallOptions): Promise<PeripheralDevice[]> {
  return listChildren(qmp, '/objects', opts);
}

export async function listNodeNames(qmp: QmpExecutor, opts?: CallOptions): Promise<string[]> {
  const nodes = await queryNamedBlockNodes(qmp, opts);
  return nodes.flatMap((n) => (n['node-name'] !== undefined ? [n['node-name']] : []));
}

/** qom-get, for the few device properties vmplug reads back (scsi-id, parent_bus). */
export function qomGet<T>(qmp: QmpExecutor, path: string, property: string, opts?: CallOptions): Promise<T> {
  return qmp.execute<T>('qom-get', { path, property }, opts);
}

/** Everything of vmplug's in one sandbox, by name. */
export interface VmplugObjects {
  devices: Set<string>;
  nodes: Set<string>;
  secrets: Set<string>;
}

export async function vmplugObjects(qmp: QmpExecutor, opts?: CallOptions): Promise<VmplugObjects> {
  const [devices, nodes, objects] = await Promise.all([
    listPeripherals(qmp, opts),
    listNodeNames(qmp, opts),
    listObjects(qmp, opts),
  ]);
  return {
    devices: new Set(devices.map((d) => d.id).filter(isVmplugName)),
    nodes: new Set(nodes.filter(isVmplugName)),
    secrets: new Set(
      objects
        .filter((o) => o.type === 'secret')
        .map((o) => o.id)
        .filter(isVmplugName),
    ),
  };
}

export async function deviceExists(qmp: QmpExecutor, id: string, opts?: CallOptions): Promise<boolean> {
  return (await listPeripherals(qmp, opts)).some((d) => d.id === id);
}

export async function nodeExists(qmp: QmpExecutor, name: string, opts?: CallOptions): Promise<boolean> {
  return (await listNodeNames(qmp, opts)).includes(name);
}

export async function objectExists(qmp: QmpExecutor, id: string, opts?: CallOptions): Promise<boolean> {
  return (await listObjects(qmp, opts)).some((o) => o.id === id);
}

/** True for QEMU's answer to an id that names nothing (device_del, qom-list of a gone path). */
export function isNotFound(err: unknown): boolean {
  return err instanceof QmpCommandError && err.errorClass === 'DeviceNotFound';
}
