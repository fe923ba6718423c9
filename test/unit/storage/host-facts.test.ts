import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  gatherHostUseFacts,
  kernelDevice,
  parseMountinfo,
  readHostTables,
} from '../../../storage/host-facts.js';
import { hostUses } from '../../../storage/host-use.js';

// The sysfs and /proc readers over a tree shaped like the kernel's: a disk with two partitions,
// one of them under a device-mapper target (this test host's kernel has no device-mapper, so the
// holders rule cannot be exercised on a real device here).

describe('gatherHostUseFacts', () => {
  it('reads partitions, holders of the device and of each partition, mounts and swaps', async () => {
    const root = await mkdtemp(join(tmpdir(), 'vmp-hf-'));
    try {
      const disk = join(root, 'devices', 'virtual', 'block', 'loop3');
      await mkdir(join(disk, 'holders'), { recursive: true });
      for (const [p, majMin] of [
        ['loop3p1', '259:0'],
        ['loop3p2', '259:1'],
      ] as const) {
        await mkdir(join(disk, p, 'holders'), { recursive: true });
        await writeFile(join(disk, p, 'partition'), '1\n');
        await writeFile(join(disk, p, 'dev'), `${majMin}\n`);
      }
      await mkdir(join(disk, 'queue'));
      await mkdir(join(disk, 'loop3p2', 'holders', 'dm-0'));
      await mkdir(join(root, 'dev', 'block'), { recursive: true });
      await symlink(disk, join(root, 'dev', 'block', '7:3'));
      const mountinfo = join(root, 'mountinfo');
      await writeFile(mountinfo, '27 1 254:0 / / rw - ext4 /dev/vda rw\n');
      const swaps = join(root, 'swaps');
      await writeFile(swaps, 'Filename Type Size Used Priority\n/nonexistent-swapfile file 1 0 -2\n');
      // A regular file stands in for the device node: O_EXCL without O_CREAT opens it normally.
      const node = join(root, 'node');
      await writeFile(node, '');

      const paths = { sys: root, mountinfo, swaps };
      const signal = new AbortController().signal;
      const k = await kernelDevice('7:3', paths, signal);
      expect(k.device).toEqual({ name: 'loop3', majMin: '7:3' });
      expect(k.dmName).toBeUndefined();
      const facts = await gatherHostUseFacts(node, k.device, k.sysDir, paths, signal);
      expect(facts.partitions).toEqual([
        { name: 'loop3p1', majMin: '259:0' },
        { name: 'loop3p2', majMin: '259:1' },
      ]);
      expect(facts.holders).toEqual({ loop3: [], loop3p1: [], loop3p2: ['dm-0'] });
      expect(facts.swaps).toEqual([{ filename: '/nonexistent-swapfile' }]);
      expect(facts.exclusiveOpen).toBe('free');
      expect(hostUses(facts)).toEqual([{ kind: 'held', device: 'loop3p2', holders: ['dm-0'] }]);

      // A device-mapper device is also known by its /dev/mapper name (for the allow-list).
      const dm = join(root, 'devices', 'virtual', 'block', 'dm-0');
      await mkdir(join(dm, 'dm'), { recursive: true });
      await writeFile(join(dm, 'dm', 'name'), 'vg-data\n');
      await symlink(dm, join(root, 'dev', 'block', '252:0'));
      expect((await kernelDevice('252:0', paths, signal)).dmName).toBe('vg-data');
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it('stops at an aborted signal', async () => {
    const ac = new AbortController();
    ac.abort(new Error('timed out'));
    await expect(kernelDevice('7:3', { sys: '/sys', mountinfo: '', swaps: '' }, ac.signal)).rejects.toThrow(
      'timed out',
    );
  });
});

describe('readHostTables', () => {
  it('reads the tables whole and afresh each time, concurrently too', async () => {
    const root = await mkdtemp(join(tmpdir(), 'vmplug-tables-'));
    try {
      const mountinfo = join(root, 'mountinfo');
      const swaps = join(root, 'swaps');
      const line = (i: number) => `${100 + i} 1 7:${i} / /mnt/m${i} rw - ext4 /dev/loop${i} rw\n`;
      await writeFile(mountinfo, line(0));
      await writeFile(swaps, 'Filename Type Size Used Priority\n');
      const paths = { sys: root, mountinfo, swaps };
      const signal = new AbortController().signal;
      expect((await readHostTables(paths, signal)).mounts).toEqual([
        { majMin: '7:0', mountPoint: '/mnt/m0', source: '/dev/loop0' },
      ]);
      // Rewritten in place (as the kernel regenerates a table): read again from the start, and a
      // table larger than one 64 KiB read comes whole.
      const many = Array.from({ length: 3000 }, (_, i) => line(i)).join('');
      expect(many.length).toBeGreaterThan(128 * 1024);
      await writeFile(mountinfo, many);
      const [a, b] = await Promise.all([readHostTables(paths, signal), readHostTables(paths, signal)]);
      expect(a.mounts).toHaveLength(3000);
      expect(a.mounts[2999]).toEqual({ majMin: '7:2999', mountPoint: '/mnt/m2999', source: '/dev/loop2999' });
      expect(b).toEqual(a);
      await writeFile(mountinfo, line(7));
      expect((await readHostTables(paths, signal)).mounts.map((m) => m.majMin)).toEqual(['7:7']);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it('reads this host’s own tables as readFile does', async () => {
    const signal = new AbortController().signal;
    const paths = { sys: '/sys', mountinfo: '/proc/self/mountinfo', swaps: '/proc/swaps' };
    const fromFile = parseMountinfo(await readFile('/proc/self/mountinfo', 'utf8'));
    expect((await readHostTables(paths, signal)).mounts).toEqual(fromFile);
    expect((await readHostTables(paths, signal)).mounts).toEqual(fromFile);
  });
});
