// Fakes for the NIC engine's unit tests, answering as QEMU 7.2 (Debian 1:7.2+dfsg-7+deb12u18) and
// iproute2 6.1 were seen to answer by hand and in test/integration/nic.test.ts:
//   netdev_add, taken id      GenericError "Duplicate ID '<id>'"
//   netdev_del, unknown       DeviceNotFound "Device '<id>' not found"
//   device_del, unknown       DeviceNotFound "Device '<id>' not found"
//   device_add addr=0 on an occupied root port
//                             GenericError "PCI: slot 0 function 0 not available for virtio-net-pci, in use by <type>,id=<id>"
//   info network (HMP)        "<nic id>: index=0,type=nic,model=virtio-net-pci,macaddr=..\r\n \\ <netdev>: index=0,type=tap,ifname=..\r\n"
//   unplug of a virtio device on a root port: DEVICE_DELETED for its virtio-backend path (no
//   `device`), then the one naming the device, once the guest acknowledges.
//   ip link show of a missing link: exit 1, 'Device "<name>" does not exist.'

import type { CallOpts, HostNetwork, LinkInfo } from '../../../net/index.js';
import type { CallOptions } from '../../../qmp/deadline.js';
import { EventHub, QmpCommandError, type QmpEvent, type QmpExecutor } from '../../../qmp/index.js';

interface Dev {
  type: string;
  bus: string;
  netdev?: string;
}

export class FakeNicQemu implements QmpExecutor {
  readonly hub = new EventHub(10_000);
  readonly devices = new Map<string, Dev>();
  readonly netdevs = new Map<string, { ifname: string }>();
  readonly calls: { command: string; args: Record<string, unknown> }[] = [];
  /** How the guest answers an unplug. */
  guestUnplug: 'ack' | 'never' = 'ack';
  /** Ports that query-pci shows free but that a racing device_add took meanwhile. */
  readonly raced = new Set<string>();
  readonly unplugging = new Set<string>();

  constructor(rootPorts = 4) {
    for (let n = 0; n < rootPorts; n++)
      this.devices.set(`vmplug-rp${n}`, { type: 'pcie-root-port', bus: 'pcie.0' });
  }

  subscribe: QmpExecutor['subscribe'] = (name, listener) => this.hub.subscribe(name, listener);
  waitFor: QmpExecutor['waitFor'] = (name, predicate, opts) => this.hub.waitFor(name, predicate, opts);

  async execute<T>(command: string, args: object = {}, _opts?: CallOptions): Promise<T> {
    const a = args as Record<string, unknown>;
    this.calls.push({ command, args: a });
    return this.#answer(command, a) as T;
  }

  #fail(cls: string, desc: string): never {
    throw new QmpCommandError('x', cls, desc);
  }

  #answer(command: string, a: Record<string, unknown>): unknown {
    switch (command) {
      case 'qom-list':
        return [...this.devices].map(([id, d]) => ({ name: id, type: `child<${d.type}>` }));
      case 'qom-get': {
        const id = String(a.path).split('/').pop() as string;
        const d = this.devices.get(id);
        if (d === undefined) this.#fail('DeviceNotFound', `Device '${a.path}' not found`);
        return `/machine/peripheral/${d.bus}/${d.bus}`;
      }
      case 'query-pci': {
        const ports = [...this.devices].filter(([, d]) => d.type === 'pcie-root-port');
        return [
          {
            bus: 0,
            devices: ports.map(([id], i) => ({
              bus: 0,
              slot: 3 + i,
              function: 0,
              qdev_id: id,
              pci_bridge: {
                bus: { number: i + 1 },
                devices: [...this.devices]
                  .filter(([, d]) => d.bus === id)
                  .map(([did]) => ({ bus: i + 1, slot: 0, function: 0, qdev_id: did })),
              },
            })),
          },
        ];
      }
      case 'human-monitor-command': {
        let out = '';
        for (const [id, d] of this.devices) {
          if (d.netdev === undefined) continue;
          out += `${id}: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\r\n \\ ${d.netdev}: index=0,type=tap,ifname=${this.netdevs.get(d.netdev)?.ifname},script=no,downscript=no\r\n`;
        }
        for (const [id, n] of this.netdevs) {
          if (![...this.devices.values()].some((d) => d.netdev === id))
            out += `${id}: index=0,type=tap,ifname=${n.ifname}\r\n`;
        }
        return out;
      }
      case 'netdev_add': {
        const id = String(a.id);
        if (this.netdevs.has(id)) this.#fail('GenericError', `Duplicate ID '${id}'`);
        this.netdevs.set(id, { ifname: String(a.ifname) });
        return {};
      }
      case 'netdev_del': {
        const id = String(a.id);
        if (!this.netdevs.delete(id)) this.#fail('DeviceNotFound', `Device '${id}' not found`);
        return {};
      }
      case 'device_add': {
        const id = String(a.id);
        const bus = String(a.bus);
        if (this.devices.has(id)) this.#fail('GenericError', `Duplicate device ID '${id}'`);
        if (!this.devices.has(bus)) this.#fail('GenericError', `Bus '${bus}' not found`);
        const holder = [...this.devices].find(([, d]) => d.bus === bus);
        if (holder !== undefined || this.raced.has(bus)) {
          this.#fail(
            'GenericError',
            `PCI: slot 0 function 0 not available for virtio-net-pci, in use by ${holder?.[1].type ?? 'virtio-blk-pci'},id=${holder?.[0] ?? 'vmpd-0000000000000000'}`,
          );
        }
        if (!this.netdevs.has(String(a.netdev))) {
          this.#fail('GenericError', `Property 'virtio-net-pci.netdev' can't find value '${a.netdev}'`);
        }
        this.devices.set(id, { type: 'virtio-net-pci', bus, netdev: String(a.netdev) });
        return {};
      }
      case 'device_del': {
        const id = String(a.id);
        if (!this.devices.has(id)) this.#fail('DeviceNotFound', `Device '${id}' not found`);
        if (this.unplugging.has(id))
          this.#fail('GenericError', `Device ${id} is already in the process of unplug`);
        this.unplugging.add(id);
        if (this.guestUnplug === 'ack') setTimeout(() => this.releaseDevice(id), 5);
        return {};
      }
      default:
        this.#fail('CommandNotFound', `The command ${command} has not been found`);
    }
  }

  /** The guest acknowledges the unplug. */
  releaseDevice(id: string): void {
    this.unplugging.delete(id);
    this.devices.delete(id);
    const ts = { seconds: 0, microseconds: 0 };
    this.hub.emit({
      event: 'DEVICE_DELETED',
      data: { path: `/machine/peripheral/${id}/virtio-backend` },
      timestamp: ts,
    } as QmpEvent);
    this.hub.emit({
      event: 'DEVICE_DELETED',
      data: { device: id, path: `/machine/peripheral/${id}` },
      timestamp: ts,
    } as QmpEvent);
  }
}

export class FakeHost implements HostNetwork {
  readonly links_ = new Map<string, LinkInfo>();
  readonly calls: string[] = [];

  addBridge(name: string): void {
    this.links_.set(name, {
      name,
      kind: 'bridge',
      tunType: undefined,
      mtu: 1500,
      alias: undefined,
      master: undefined,
      up: true,
      lowerUp: true,
    });
  }

  addTap(name: string, alias?: string, lowerUp = false): void {
    this.links_.set(name, {
      name,
      kind: 'tun',
      tunType: 'tap',
      mtu: 1500,
      alias,
      master: undefined,
      up: true,
      lowerUp,
    });
  }

  async link(name: string, _o: CallOpts): Promise<LinkInfo | undefined> {
    return this.links_.get(name);
  }

  async links(_o: CallOpts): Promise<LinkInfo[]> {
    return [...this.links_.values()];
  }

  async createTap(
    name: string,
    s: { alias: string; mtu?: number; bridge?: string },
    _o: CallOpts,
  ): Promise<void> {
    this.calls.push(`create ${name} ${s.bridge ?? '-'} ${s.mtu ?? '-'}`);
    this.links_.set(name, {
      name,
      kind: 'tun',
      tunType: 'tap',
      mtu: s.mtu ?? 1500,
      alias: s.alias,
      master: s.bridge,
      up: true,
      lowerUp: false,
    });
  }

  async setMtu(name: string, mtu: number, _o: CallOpts): Promise<void> {
    this.calls.push(`mtu ${name} ${mtu}`);
    const l = this.links_.get(name);
    if (l !== undefined) l.mtu = mtu;
  }

  async deleteLink(name: string, _o: CallOpts): Promise<void> {
    if (this.links_.delete(name)) this.calls.push(`delete ${name}`);
  }
}
