import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launcherOptions } from '../../../daemon/volumes/qsd-launcher.js';
import { memoryLogger } from './helpers.js';

// What both storage-daemon backends get from the launcher settings: host-cgroup only where a
// cgroup hierarchy is mounted at the root, else no daemon at all (and an error that says why).

describe('launcherOptions', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'vmplug-launcher-'));
    await mkdir(join(root, 'memory'));
    await writeFile(join(root, 'memory', 'cgroup.procs'), '');
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('passes direct and systemd-scope through', async () => {
    const { logger } = memoryLogger();
    for (const launcher of ['direct', 'systemd-scope'] as const) {
      expect(
        await launcherOptions(
          { storageDaemonLauncher: launcher, storageDaemonCgroupRoot: root },
          'pods',
          logger,
        ),
      ).toEqual({ launcher });
    }
  });

  it('gives host-cgroup its root and the backend group when a hierarchy is there', async () => {
    const { logger } = memoryLogger();
    expect(
      await launcherOptions(
        { storageDaemonLauncher: 'host-cgroup', storageDaemonCgroupRoot: root },
        'hot-attach',
        logger,
      ),
    ).toEqual({ launcher: 'host-cgroup', cgroupRoot: root, cgroupGroup: 'hot-attach' });
  });

  it('starts no daemon when the root holds no hierarchy, and logs what to mount', async () => {
    const { logger, lines } = memoryLogger();
    const missing = join(root, 'none');
    expect(
      await launcherOptions(
        { storageDaemonLauncher: 'host-cgroup', storageDaemonCgroupRoot: missing },
        'pods',
        logger,
      ),
    ).toBeUndefined();
    const line = lines().find((l) => l.level === 'error');
    expect(line?.msg).toMatch(/host-cgroup cannot work/);
    expect(String(line?.err)).toMatch(/mount the host's \/sys\/fs\/cgroup there/);
  });
});
