import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import {
  createLoopDevice,
  type LoopDevice,
  readRegion,
  sweepStaleLoopDevices,
  writeRegion,
} from '../env/loop.js';

const MiB = 1024 * 1024;
const run = promisify(execFile);

function sysfsBacking(device: string): string | null {
  try {
    return readFileSync(`/sys/block/${basename(device)}/loop/backing_file`, 'utf8').trim();
  } catch {
    return null;
  }
}

describe('loop devices', () => {
  const devices: LoopDevice[] = [];
  afterEach(async () => {
    await Promise.allSettled(devices.splice(0).map((d) => d.detach()));
  });

  it('creates a device over a sparse file; writes through it land in the file; detach removes both', async () => {
    const dev = await createLoopDevice(64 * MiB);
    devices.push(dev);
    expect(dev.path).toMatch(/^\/dev\/loop\d+$/);
    expect(statSync(dev.path).isBlockDevice()).toBe(true);
    expect(sysfsBacking(dev.path)).toBe(dev.backingFile);
    const sectors = Number(readFileSync(`/sys/block/${basename(dev.path)}/size`, 'utf8'));
    expect(sectors * 512).toBe(64 * MiB);
    const st = statSync(dev.backingFile);
    expect(st.size).toBe(64 * MiB);
    expect(st.blocks * 512).toBeLessThan(MiB);

    const data = randomBytes(64 * 1024);
    await writeRegion(dev.path, 3 * MiB, data);
    expect((await dev.readBacking(3 * MiB, data.length)).equals(data)).toBe(true);
    expect((await dev.readBacking(0, 4096)).equals(Buffer.alloc(4096))).toBe(true);
    expect((await readRegion(dev.path, 3 * MiB, data.length)).equals(data)).toBe(true);

    await dev.detach();
    expect(sysfsBacking(dev.path)).toBeNull();
    expect(existsSync(dev.backingFile)).toBe(false);
    await dev.detach(); // idempotent
  });

  it('makes a new /dev/loopN when every existing one is busy', async () => {
    const before = new Set(readdirSync('/dev').filter((n) => /^loop\d+$/.test(n)));
    // At most every existing node is free: one more than that must be a new node.
    for (let i = 0; i <= before.size; i++) {
      const dev = await createLoopDevice(MiB);
      devices.push(dev);
      if (!before.has(basename(dev.path))) break;
    }
    const fresh = devices.filter((d) => !before.has(basename(d.path)));
    expect(fresh.length).toBeGreaterThanOrEqual(1);
    expect(sysfsBacking(fresh[0]!.path)).toBe(fresh[0]!.backingFile);
  });

  it('rejects sizes that are not whole sectors', async () => {
    await expect(createLoopDevice(1000)).rejects.toMatchObject({ code: 'LOOP_BAD_SIZE' });
  });

  it('sweeps devices left by a dead run, and only those', async () => {
    // A run killed outright: its device is still attached, its owner pid is gone.
    const dead = await new Promise<number>((resolve) => {
      const child = execFile('true');
      child.once('exit', () => resolve(child.pid!));
    });
    const dir = await mkdtemp(join(tmpdir(), 'vmplug-loop-'));
    let stale = '';
    try {
      await writeFile(join(dir, 'owner.pid'), `${dead}\n`);
      await writeFile(join(dir, 'disk.img'), '');
      await truncate(join(dir, 'disk.img'), MiB);
      stale = (await run('losetup', ['--find', '--show', join(dir, 'disk.img')])).stdout.trim();
      const live = await createLoopDevice(MiB);
      devices.push(live);

      const swept = await sweepStaleLoopDevices();
      expect(swept).toContain(stale);
      expect(swept).not.toContain(live.path);
      expect(sysfsBacking(stale)).toBeNull();
      expect(existsSync(dir)).toBe(false);
      expect(sysfsBacking(live.path)).toBe(live.backingFile);
    } finally {
      if (stale && sysfsBacking(stale) === join(dir, 'disk.img')) await run('losetup', ['--detach', stale]);
      await rm(dir, { recursive: true, force: true });
    }
  });
});
