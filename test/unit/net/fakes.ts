// The host network fake of the NIC engine's unit tests (the QEMU side is test/unit/fakes/qemu.ts),
// answering as iproute2 6.1 was seen to answer in test/integration/nic.test.ts:
//   ip link show of a missing link: exit 1, 'Device "<name>" does not exist.'

import type { CallOpts, HostNetwork, LinkInfo } from '../../../net/index.js';

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
