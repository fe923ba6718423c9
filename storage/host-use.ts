// Whether the host itself uses a block device, decided from facts gathered elsewhere
// (host-facts.ts reads them from /proc and /sys): a pure function, so every case is unit-tested
// without root, loop devices or mounts.

/** One kernel block device: `loop3`, `loop3p1`, `dm-0`, with its `major:minor`. */
export interface KernelBlockDevice {
  name: string;
  majMin: string;
}

export interface MountFact {
  /** Field 3 of mountinfo: the st_dev of the mounted filesystem. */
  majMin: string;
  /** Field 10: the mount source as the kernel shows it (`/dev/loop3p1`, or a btrfs device). */
  source: string;
  mountPoint: string;
}

export interface SwapFact {
  filename: string;
  /** The block device's `major:minor` when the swap area is a block device (not a file). */
  majMin?: string;
}

export interface HostUseFacts {
  /** The device asked for (resolved). */
  device: KernelBlockDevice;
  /** Its partitions (from /sys/class/block/<dev>/<part>/partition). */
  partitions: readonly KernelBlockDevice[];
  /** Holders (dm, md, bcache...) by kernel name, for the device and each partition. */
  holders: Readonly<Record<string, readonly string[]>>;
  mounts: readonly MountFact[];
  swaps: readonly SwapFact[];
  /**
   * An `O_RDONLY|O_EXCL` open of the device: `busy` when it failed with EBUSY (the kernel has it
   * claimed: mounted, swap, a dm/md member, another exclusive opener); `unknown` when the open
   * failed otherwise (EPERM from a device cgroup, EACCES...), with the errno in `exclusiveError`.
   */
  exclusiveOpen: 'free' | 'busy' | 'unknown';
  exclusiveError?: string;
}

export type HostUse =
  | { kind: 'mounted'; device: string; mountPoint: string }
  | { kind: 'swap'; device: string }
  | { kind: 'held'; device: string; holders: readonly string[] }
  | { kind: 'exclusive'; device: string };

/** Every way the host uses the device or one of its partitions; empty when it is free. */
export function hostUses(f: HostUseFacts): HostUse[] {
  const uses: HostUse[] = [];
  const all = [f.device, ...f.partitions];
  for (const d of all) {
    const devPath = `/dev/${d.name}`;
    for (const m of f.mounts) {
      if (m.majMin === d.majMin || m.source === devPath) {
        uses.push({ kind: 'mounted', device: d.name, mountPoint: m.mountPoint });
      }
    }
    for (const s of f.swaps) {
      if (s.majMin === d.majMin || s.filename === devPath) uses.push({ kind: 'swap', device: d.name });
    }
    const holders = f.holders[d.name] ?? [];
    if (holders.length > 0) uses.push({ kind: 'held', device: d.name, holders: [...holders].sort() });
  }
  // The O_EXCL verdict covers what the lists above may miss (a claim from another mount
  // namespace, a filesystem whose mountinfo shows an anonymous device); said once, and only when
  // nothing more specific explains it.
  if (f.exclusiveOpen === 'busy' && uses.length === 0)
    uses.push({ kind: 'exclusive', device: f.device.name });
  return uses;
}

export type HostUseVerdict =
  | { kind: 'free' }
  | { kind: 'in-use'; uses: HostUse[] }
  /** Nothing seen, but the O_EXCL probe could not be made: not handed out (fail closed). */
  | { kind: 'unknown'; reason: string };

export function hostUseVerdict(f: HostUseFacts): HostUseVerdict {
  const uses = hostUses(f);
  if (uses.length > 0) return { kind: 'in-use', uses };
  if (f.exclusiveOpen === 'unknown') {
    return {
      kind: 'unknown',
      reason: `the exclusive-open probe failed (${f.exclusiveError ?? 'unknown error'})`,
    };
  }
  return { kind: 'free' };
}

/** One line for a problem's detail: what uses the device, most telling first. */
export function describeHostUses(uses: readonly HostUse[]): string {
  const lines = [...new Set(uses.map(describeHostUse))];
  // A device bind-mounted in many places would make a detail nobody reads.
  return lines.length > 6
    ? `${lines.slice(0, 6).join('; ')}; and ${lines.length - 6} more`
    : lines.join('; ');
}

function describeHostUse(u: HostUse): string {
  switch (u.kind) {
    case 'mounted':
      return `/dev/${u.device} is mounted on ${u.mountPoint}`;
    case 'swap':
      return `/dev/${u.device} is an active swap area`;
    case 'held':
      return `/dev/${u.device} is held by ${u.holders.join(', ')} (device-mapper, md or LVM)`;
    case 'exclusive':
      return `/dev/${u.device} is opened exclusively by the kernel (EBUSY on O_EXCL)`;
  }
}
