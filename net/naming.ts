import { createHash } from 'node:crypto';
import type { NicId, SandboxId } from '../core/ids.js';

// Names of what one NIC consists of, derived from (sandbox, nic) alone so reconcile can recompute
// them from a journal record, with fixed prefixes so reconcile tells vmplug's NICs apart from
// Kata's and from storage's objects (storage uses vmp-, vmpd-, vmpf-, vmps-; none of those
// patterns matches these, and these match none of storage's):
//   netdev  vmpn-<16 hex>     QEMU netdev id
//   device  vmpnd-<16 hex>    QEMU virtio-net-pci id (also its name in query-rx-filter)
//   tap     vmpt<11 hex>      host tap, 15 bytes: the most IFNAMSIZ (16 with the NUL) allows

const HASH_HEX = 16;
const TAP_HASH_HEX = 11;

export interface NicNames {
  netdev: string;
  device: string;
  /** The tap vmplug creates in bridge mode (unused when the spec names an existing tap). */
  tap: string;
  hash: string;
}

export function nicHash(sandboxId: SandboxId, nicId: NicId): string {
  // Ids cannot hold NUL, so the pair is encoded unambiguously.
  return createHash('sha256').update(`nic\0${sandboxId}\0${nicId}`).digest('hex').slice(0, HASH_HEX);
}

export function nicNames(sandboxId: SandboxId, nicId: NicId): NicNames {
  const hash = nicHash(sandboxId, nicId);
  return {
    netdev: `vmpn-${hash}`,
    device: `vmpnd-${hash}`,
    tap: `vmpt${hash.slice(0, TAP_HASH_HEX)}`,
    hash,
  };
}

const NETDEV = /^vmpn-[0-9a-f]{16}$/;
const DEVICE = /^vmpnd-[0-9a-f]{16}$/;
const TAP = /^vmpt[0-9a-f]{11}$/;

export function isNicNetdevName(name: string): boolean {
  return NETDEV.test(name);
}

export function isNicDeviceName(name: string): boolean {
  return DEVICE.test(name);
}

export function isNicTapName(name: string): boolean {
  return TAP.test(name);
}

/**
 * The MAC a NIC gets when the spec names none: 6 bytes of a hash of (sandbox, nic), with the
 * first octet made unicast and locally administered (bits 0 and 1 of 0x?2/0x?6/0x?A/0x?E). 46
 * hashed bits, so two NICs on one bridge practically never collide, and a re-attach after a crash
 * gets the same address (the guest's config keyed by MAC keeps working).
 */
export function defaultMac(sandboxId: SandboxId, nicId: NicId): string {
  const h = createHash('sha256').update(`mac\0${sandboxId}\0${nicId}`).digest();
  const bytes = [...h.subarray(0, 6)];
  bytes[0] = ((bytes[0] as number) & 0xfc) | 0x02;
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}

// Lanes: the pcie-root-ports bin/vmplug-qemu adds, vmplug-rp0..vmplug-rp31 (storage/naming.ts has
// the same rule for its virtio-blk disks; both engines share the ports).
export function parseRootPortId(id: string): number | undefined {
  const m = /^vmplug-rp([0-9]|[12][0-9]|3[01])$/.exec(id);
  return m ? Number(m[1]) : undefined;
}

/** `ip link` alias of the taps one vmplugd creates: tells its strays from anyone else's taps. */
export function tapAlias(instance: string): string {
  return `vmplug-nic ${instance}`;
}
