import {
  type CallOptions,
  deviceAdd,
  deviceDelAndWait,
  deviceIs,
  netdevAdd,
  netdevDel,
  type PciDeviceInfo,
  QmpCommandError,
  type QmpExecutor,
  QmpTimeoutError,
  qomList,
  queryPci,
} from '../qmp/index.js';
import { isNicNetdevName, parseRootPortId } from './naming.js';

// The QEMU side of a NIC, read and changed through vmplug's private monitor.

/** Device ids under /machine/peripheral with their QOM type. */
export async function listDevices(qmp: QmpExecutor, opts: CallOptions): Promise<Map<string, string>> {
  const props = await qomList(qmp, '/machine/peripheral', opts);
  const out = new Map<string, string>();
  for (const p of props) {
    const m = /^child<(.+)>$/.exec(p.type);
    if (m?.[1] !== undefined) out.set(p.name, m[1]);
  }
  return out;
}

/**
 * vmplug's netdevs (vmpn-*). QEMU 7.2 has no QMP command listing netdevs (query-netdev does not
 * exist; netdevs are not QOM objects), so this reads HMP `info network`, where every net client
 * is a line "<name>: index=...,type=...", peers indented under their NIC with " \ ".
 */
export async function listVmplugNetdevs(qmp: QmpExecutor, opts: CallOptions): Promise<string[]> {
  const text = await qmp.execute<string>('human-monitor-command', { 'command-line': 'info network' }, opts);
  const out = new Set<string>();
  for (const m of text.matchAll(/^[\s\\]*([A-Za-z][A-Za-z0-9_.-]*): index=/gm)) {
    const name = m[1] as string;
    if (isNicNetdevName(name)) out.add(name);
  }
  return [...out];
}

/** vmplug root ports (vmplug-rp<N>), in N order, with whether a device sits behind each. */
export async function rootPorts(
  qmp: QmpExecutor,
  opts: CallOptions,
): Promise<Array<{ id: string; busy: boolean }>> {
  const buses = await queryPci(qmp, opts);
  const out: Array<{ id: string; busy: boolean }> = [];
  const walk = (devices: readonly PciDeviceInfo[]): void => {
    for (const d of devices) {
      if (d.pci_bridge === undefined) continue;
      if (parseRootPortId(d.qdev_id) !== undefined) {
        out.push({ id: d.qdev_id, busy: (d.pci_bridge.devices ?? []).length > 0 });
      }
      walk(d.pci_bridge.devices ?? []);
    }
  };
  for (const b of buses) walk(b.devices);
  return out.sort((a, b) => (parseRootPortId(a.id) as number) - (parseRootPortId(b.id) as number));
}

/** The port a device sits on: its parent_bus ends in the port's bus, named like the port. */
export async function portOf(
  qmp: QmpExecutor,
  device: string,
  opts: CallOptions,
): Promise<string | undefined> {
  const parent = await qmp.execute<unknown>(
    'qom-get',
    { path: `/machine/peripheral/${device}`, property: 'parent_bus' },
    opts,
  );
  if (typeof parent !== 'string') return undefined;
  const bus = parent.slice(parent.lastIndexOf('/') + 1);
  return parseRootPortId(bus) !== undefined ? bus : undefined;
}

export function isDuplicateId(err: unknown): boolean {
  return err instanceof QmpCommandError && /^Duplicate (ID|id) /.test(err.desc);
}

export function isNotFound(err: unknown): boolean {
  return err instanceof QmpCommandError && err.errorClass === 'DeviceNotFound';
}

export function isUnplugInProgress(err: unknown): boolean {
  return err instanceof QmpCommandError && /already in the process of unplug/.test(err.desc);
}

export async function addTapNetdev(
  qmp: QmpExecutor,
  id: string,
  ifname: string,
  opts: CallOptions,
): Promise<void> {
  try {
    // script/downscript no: vmplug set the tap up itself and QEMU must not run ifup scripts as
    // root; vhost off: vhost-net needs /dev/vhost-net and the module, not a given on every node.
    await netdevAdd(qmp, { type: 'tap', id, ifname, script: 'no', downscript: 'no', vhost: false }, opts);
  } catch (err) {
    // Resumed after a crash between netdev_add and the journal write.
    if (!isDuplicateId(err)) throw err;
  }
}

export async function delNetdev(qmp: QmpExecutor, id: string, opts: CallOptions): Promise<void> {
  try {
    await netdevDel(qmp, id, opts);
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
}

export interface NicDeviceArgs {
  id: string;
  netdev: string;
  mac: string;
  port: string;
  mtu?: number;
}

export async function addNicDevice(qmp: QmpExecutor, a: NicDeviceArgs, opts: CallOptions): Promise<void> {
  const args: Parameters<typeof deviceAdd>[1] = {
    driver: 'virtio-net-pci',
    id: a.id,
    netdev: a.netdev,
    mac: a.mac,
    bus: a.port,
    addr: '0',
  };
  // host_mtu offers the MTU to the guest driver (VIRTIO_NET_F_MTU), so it matches the tap's.
  if (a.mtu !== undefined) args.host_mtu = a.mtu;
  await deviceAdd(qmp, args, opts);
}

export type UnplugResult = 'gone' | 'pending';

/**
 * device_del and the DEVICE_DELETED naming the device, within `waitMs`. A delete already
 * requested (a retry) waits for the same event. 'pending' when the guest has not let go in time.
 */
export async function unplugDevice(
  qmp: QmpExecutor,
  id: string,
  waitMs: number,
  opts: CallOptions,
): Promise<UnplugResult> {
  try {
    await deviceDelAndWait(qmp, id, { timeoutMs: waitMs, ...(opts.signal ? { signal: opts.signal } : {}) });
    return 'gone';
  } catch (err) {
    if (isNotFound(err)) return 'gone';
    if (isUnplugInProgress(err)) {
      try {
        await qmp.waitFor('DEVICE_DELETED', deviceIs(id), {
          timeoutMs: waitMs,
          ...(opts.signal ? { signal: opts.signal } : {}),
        });
        return 'gone';
      } catch (e) {
        if (!(e instanceof QmpTimeoutError)) throw e;
      }
    } else if (!(err instanceof QmpTimeoutError)) throw err;
    // The event may have been missed (it went out before we listened): ask QEMU.
    return (await listDevices(qmp, opts)).has(id) ? 'pending' : 'gone';
  }
}
