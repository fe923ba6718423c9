import { describe, expect, it } from 'vitest';
import { majMinOf, parseMountinfo, parseSwaps } from '../../../storage/host-facts.js';
import { describeHostUses, type HostUseFacts, hostUses, hostUseVerdict } from '../../../storage/host-use.js';

const free: HostUseFacts = {
  device: { name: 'loop3', majMin: '7:3' },
  partitions: [],
  holders: { loop3: [] },
  mounts: [{ majMin: '254:0', source: '/dev/vda', mountPoint: '/' }],
  swaps: [{ filename: '/swapfile' }],
  exclusiveOpen: 'free',
};
const partitioned: HostUseFacts = {
  ...free,
  partitions: [
    { name: 'loop3p1', majMin: '259:0' },
    { name: 'loop3p2', majMin: '259:1' },
  ],
  holders: { loop3: [], loop3p1: [], loop3p2: [] },
};

describe('hostUses (pure decision)', () => {
  it('a device nothing uses is free', () => {
    expect(hostUses(free)).toEqual([]);
    expect(hostUses(partitioned)).toEqual([]);
  });

  it('mounted: by major:minor, or by the mount source when mountinfo shows another device (btrfs)', () => {
    expect(
      hostUses({ ...free, mounts: [...free.mounts, { majMin: '7:3', source: 'x', mountPoint: '/mnt/a' }] }),
    ).toEqual([{ kind: 'mounted', device: 'loop3', mountPoint: '/mnt/a' }]);
    expect(
      hostUses({ ...free, mounts: [{ majMin: '0:45', source: '/dev/loop3', mountPoint: '/srv' }] }),
    ).toEqual([{ kind: 'mounted', device: 'loop3', mountPoint: '/srv' }]);
  });

  it('a mounted partition makes the whole device in use', () => {
    const uses = hostUses({
      ...partitioned,
      mounts: [{ majMin: '259:1', source: '/dev/loop3p2', mountPoint: '/data' }],
      exclusiveOpen: 'busy',
    });
    expect(uses).toEqual([{ kind: 'mounted', device: 'loop3p2', mountPoint: '/data' }]);
    expect(describeHostUses(uses)).toBe('/dev/loop3p2 is mounted on /data');
  });

  it('swap: by major:minor or by name, on the device or a partition', () => {
    expect(hostUses({ ...free, swaps: [{ filename: '/dev/loop3', majMin: '7:3' }] })).toEqual([
      { kind: 'swap', device: 'loop3' },
    ]);
    expect(hostUses({ ...partitioned, swaps: [{ filename: '/dev/loop3p1' }] })).toEqual([
      { kind: 'swap', device: 'loop3p1' },
    ]);
  });

  it('held by device-mapper, md or LVM (holders), on the device or a partition', () => {
    expect(hostUses({ ...free, holders: { loop3: ['dm-1', 'dm-0'] } })).toEqual([
      { kind: 'held', device: 'loop3', holders: ['dm-0', 'dm-1'] },
    ]);
    expect(hostUses({ ...partitioned, holders: { loop3p2: ['md127'] } })).toEqual([
      { kind: 'held', device: 'loop3p2', holders: ['md127'] },
    ]);
  });

  it('an O_EXCL open refused with EBUSY is reported when nothing more specific explains it', () => {
    expect(hostUses({ ...free, exclusiveOpen: 'busy' })).toEqual([{ kind: 'exclusive', device: 'loop3' }]);
    expect(describeHostUses([{ kind: 'exclusive', device: 'loop3' }])).toContain('O_EXCL');
  });

  it('fails closed when the O_EXCL probe could not be made and nothing else tells', () => {
    expect(hostUseVerdict(free)).toEqual({ kind: 'free' });
    expect(hostUseVerdict({ ...free, exclusiveOpen: 'unknown', exclusiveError: 'EPERM' })).toEqual({
      kind: 'unknown',
      reason: 'the exclusive-open probe failed (EPERM)',
    });
    // The root disk in a device cgroup: mountinfo already says enough.
    const root = { ...free, device: { name: 'vda', majMin: '254:0' }, exclusiveOpen: 'unknown' as const };
    expect(hostUseVerdict(root)).toEqual({
      kind: 'in-use',
      uses: [{ kind: 'mounted', device: 'vda', mountPoint: '/' }],
    });
  });

  it('several uses are all reported', () => {
    const uses = hostUses({
      ...partitioned,
      mounts: [{ majMin: '259:0', source: '/dev/loop3p1', mountPoint: '/a' }],
      swaps: [{ filename: '/dev/loop3p2', majMin: '259:1' }],
      exclusiveOpen: 'busy',
    });
    expect(uses.map((u) => u.kind)).toEqual(['mounted', 'swap']);
  });
});

describe('host facts parsers', () => {
  it('parseMountinfo reads major:minor, the source after the separator, and unescapes paths', () => {
    const text = [
      '27 1 254:0 / / rw,relatime - ext4 /dev/vda rw',
      '90 27 7:3 / /mnt/with\\040space rw,relatime shared:5 master:1 - ext4 /dev/loop3 rw',
      'garbage',
      '',
    ].join('\n');
    expect(parseMountinfo(text)).toEqual([
      { majMin: '254:0', source: '/dev/vda', mountPoint: '/' },
      { majMin: '7:3', source: '/dev/loop3', mountPoint: '/mnt/with space' },
    ]);
  });

  it('parseSwaps skips the header', () => {
    const text =
      'Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/loop4                              partition\t65532\t\t0\t\t-2\n';
    expect(parseSwaps(text)).toEqual(['/dev/loop4']);
    expect(parseSwaps('Filename Type Size Used Priority\n')).toEqual([]);
  });

  it('majMinOf splits a dev_t as glibc does', () => {
    expect(majMinOf(0x0703)).toBe('7:3');
    expect(majMinOf(0xfe00)).toBe('254:0');
    // major 259 (blkext), minor 1: 0x10301
    expect(majMinOf(0x10301)).toBe('259:1');
    // minor above 255 uses the high bits: major 7, minor 300
    expect(majMinOf((7 << 8) | (300 & 0xff) | ((300 & ~0xff) << 12))).toBe('7:300');
    expect(majMinOf(0x10301n)).toBe('259:1');
  });
});
