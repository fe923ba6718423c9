import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError, resolveConfig } from '../../../../daemon/config.js';
import { daemonArgv, LAUNCHERS, launchCommand } from '../../../../storage/storage-daemon/argv.js';
import {
  daemonCgroupDirs,
  groupDirs,
  HostCgroupError,
  HostCgroups,
  hierarchiesOf,
} from '../../../../storage/storage-daemon/host-cgroup.js';

// The host-cgroup launcher's pure parts (paths, hierarchies, config) and its file writes on a
// directory shaped like a cgroup mount (the real cgroupfs is in deploy-node.test.ts).

describe('host-cgroup paths', () => {
  it('puts each daemon at <hierarchy>/vmplug/<group>/<name>, for v1/hybrid and pure v2 roots', () => {
    const v1 = hierarchiesOf('/host/sys/fs/cgroup', false, ['unified', 'memory', 'devices']);
    expect(v1).toEqual([
      '/host/sys/fs/cgroup/devices',
      '/host/sys/fs/cgroup/memory',
      '/host/sys/fs/cgroup/unified',
    ]);
    expect(daemonCgroupDirs(v1, 'pods', 'vmp-0123')).toEqual([
      '/host/sys/fs/cgroup/devices/vmplug/pods/vmp-0123',
      '/host/sys/fs/cgroup/memory/vmplug/pods/vmp-0123',
      '/host/sys/fs/cgroup/unified/vmplug/pods/vmp-0123',
    ]);
    const v2 = hierarchiesOf('/host/sys/fs/cgroup', true, ['ignored']);
    expect(groupDirs(v2, 'hot-attach')).toEqual(['/host/sys/fs/cgroup/vmplug/hot-attach']);
  });

  it('refuses names that would leave the group', () => {
    expect(() => daemonCgroupDirs(['/c'], 'pods', '../x')).toThrow(RangeError);
    expect(() => daemonCgroupDirs(['/c'], 'pods', '')).toThrow(RangeError);
    expect(() => groupDirs(['/c'], 'a/b')).toThrow(RangeError);
    expect(() => new HostCgroups({ root: 'sys/fs/cgroup', group: 'pods' })).toThrow(RangeError);
  });

  it('spawns the daemon as direct does (the move is the backend’s, after the spawn)', () => {
    const q = '/var/lib/vmplug/qsd/vmp-a/qmp.sock';
    expect(LAUNCHERS).toContain('host-cgroup');
    expect(launchCommand('host-cgroup', '/usr/bin/qemu-storage-daemon', 'vmp-a', q)).toEqual([
      '/usr/bin/qemu-storage-daemon',
      daemonArgv(q),
    ]);
  });
});

describe('storageDaemonLauncher / storageDaemonCgroupRoot settings', () => {
  it('default to direct and /sys/fs/cgroup, take the three launchers from every layer', () => {
    expect(resolveConfig({}, {}, null).config).toMatchObject({
      storageDaemonLauncher: 'direct',
      storageDaemonCgroupRoot: '/sys/fs/cgroup',
    });
    const { config } = resolveConfig(
      { storageDaemonLauncher: 'host-cgroup' },
      { VMPLUG_STORAGE_DAEMON_CGROUP_ROOT: '/host/sys/fs/cgroup/' },
      null,
    );
    expect(config.storageDaemonLauncher).toBe('host-cgroup');
    expect(config.storageDaemonCgroupRoot).toBe('/host/sys/fs/cgroup');
    const f = { path: '/etc/vmplug/config.json', content: { storageDaemonLauncher: 'systemd-scope' } };
    expect(resolveConfig({}, {}, f).config.storageDaemonLauncher).toBe('systemd-scope');
  });

  it('refuses an unknown launcher or a bad root, naming the source and the choices', () => {
    expect(() => resolveConfig({}, { VMPLUG_STORAGE_DAEMON_LAUNCHER: 'cgroup' }, null)).toThrow(
      /VMPLUG_STORAGE_DAEMON_LAUNCHER: must be one of direct, systemd-scope, host-cgroup/,
    );
    expect(() => resolveConfig({ storageDaemonCgroupRoot: 'sys/fs/cgroup' }, {}, null)).toThrow(ConfigError);
    expect(() => resolveConfig({ storageDaemonCgroupRoot: '/' }, {}, null)).toThrow(
      /--storage-daemon-cgroup-root: must be the host's cgroup mount root/,
    );
  });
});

describe('HostCgroups on a directory shaped like a v1 cgroup mount', () => {
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'vmplug-cgroup-'));
    for (const h of ['cpuset', 'memory']) {
      await mkdir(join(root, h));
      await writeFile(join(root, h, 'cgroup.procs'), '');
    }
    await writeFile(join(root, 'cpuset', 'cpuset.cpus'), '0-1\n');
    await writeFile(join(root, 'cpuset', 'cpuset.mems'), '0\n');
    // Not a hierarchy: no cgroup.procs.
    await mkdir(join(root, 'not-a-cgroup'));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('writes the pid into the daemon’s cgroup of every hierarchy, and only into hierarchies', async () => {
    // Our own namespace as "the host's": the write is direct.
    const cg = new HostCgroups({ root, group: 'pods', hostCgroupNs: '/proc/self/ns/cgroup' });
    expect(await cg.hierarchies()).toEqual([join(root, 'cpuset'), join(root, 'memory')]);
    await cg.place('vmp-1', 4242);
    for (const h of ['cpuset', 'memory']) {
      expect(await readFile(join(root, h, 'vmplug', 'pods', 'vmp-1', 'cgroup.procs'), 'utf8')).toBe('4242\n');
    }
    expect((await stat(join(root, 'not-a-cgroup'))).isDirectory()).toBe(true);
    await expect(cg.place('vmp-1', 0)).rejects.toThrow(RangeError);
  });

  it('sweeps the empty cgroups of names not kept, only in its own group', async () => {
    const pods = new HostCgroups({ root, group: 'pods', hostCgroupNs: '/proc/self/ns/cgroup' });
    for (const n of ['vmp-keep', 'vmp-gone'])
      await mkdir(join(root, 'memory', 'vmplug', 'pods', n), { recursive: true });
    await mkdir(join(root, 'memory', 'vmplug', 'hot-attach', 'vmp-other'), { recursive: true });
    expect(await pods.sweep(new Set(['vmp-keep']))).toEqual(['vmp-gone']);
    expect((await stat(join(root, 'memory', 'vmplug', 'pods', 'vmp-keep'))).isDirectory()).toBe(true);
    expect((await stat(join(root, 'memory', 'vmplug', 'hot-attach', 'vmp-other'))).isDirectory()).toBe(true);
    await pods.remove('vmp-keep');
    await expect(stat(join(root, 'memory', 'vmplug', 'pods', 'vmp-keep'))).rejects.toThrow();
  });

  it('says what to mount when the root holds no hierarchy', async () => {
    const empty = new HostCgroups({ root: join(root, 'not-a-cgroup'), group: 'pods' });
    await expect(empty.hierarchies()).rejects.toThrow(HostCgroupError);
    await expect(empty.hierarchies()).rejects.toThrow(/mount the host's \/sys\/fs\/cgroup there/);
    const missing = new HostCgroups({ root: join(root, 'nope'), group: 'pods' });
    await expect(missing.hierarchies()).rejects.toThrow(/cannot be read \(ENOENT\)/);
  });
});
