import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { checkKataConfig, globMatch, kataChecks, parseMeminfo } from '../../../cli/kata-config.js';
import { parseTomlLite, tomlGet } from '../../../cli/toml-lite.js';

// The shape of Kata's shipped configuration-qemu.toml (3.x), abridged, with the keys vmplug needs.
const katan = (over: Record<string, string> = {}) => {
  const keys: Record<string, string> = {
    path: '"/usr/local/bin/vmplug-qemu"',
    valid_hypervisor_paths: '["/usr/bin/qemu-system-x86_64", "/usr/local/bin/vmplug-*"]',
    default_memory: '2048',
    disable_block_device_use: 'false',
    enable_vhost_user_store: 'true',
    vhost_user_store_path: '"STORE"',
    enable_hugepages: 'true',
    ...over,
  };
  return `# Copyright (c) 2017-2019 Intel Corporation
# XXX: WARNING: this file is auto-generated.

[hypervisor.qemu]
${Object.entries(keys)
  .map(([k, v]) => `${k} = ${v} # trailing comment`)
  .join('\n')}
kernel_params = "console=hvc0 # not a comment"
valid_vhost_user_store_paths = [
  "/var/run/kata-containers/vhost-user", # first
  '/run/other',
]

[agent.kata]
dial_timeout = 45

[runtime]
internetworking_model="tcfilter"
`;
};

describe('parseTomlLite', () => {
  it("reads tables, strings, booleans, numbers, multi-line arrays and comments as Kata's file has them", () => {
    const doc = parseTomlLite(katan());
    expect(tomlGet(doc, 'hypervisor.qemu', 'path')).toBe('/usr/local/bin/vmplug-qemu');
    expect(tomlGet(doc, 'hypervisor.qemu', 'disable_block_device_use')).toBe(false);
    expect(tomlGet(doc, 'hypervisor.qemu', 'default_memory')).toBe(2048);
    expect(tomlGet(doc, 'hypervisor.qemu', 'kernel_params')).toBe('console=hvc0 # not a comment');
    expect(tomlGet(doc, 'hypervisor.qemu', 'valid_vhost_user_store_paths')).toEqual([
      '/var/run/kata-containers/vhost-user',
      '/run/other',
    ]);
    expect(tomlGet(doc, 'agent.kata', 'dial_timeout')).toBe(45);
    expect(tomlGet(doc, 'runtime', 'internetworking_model')).toBe('tcfilter');
    expect(doc.skipped).toBe(0);
  });

  it('tolerates what it cannot read, counting the lines, and keeps the rest', () => {
    const doc = parseTomlLite(
      'a = "unterminated\nb = {inline = 1}\n???\nc = "esc\\"aped\\u00e9\\t"\n[ "x" . y ]\nd = 0x10\ne = 1_000\nf = -3.5e2\n',
    );
    expect(doc.skipped).toBe(3);
    expect(tomlGet(doc, '', 'c')).toBe('esc"apedé\t');
    expect(tomlGet(doc, 'x.y', 'd')).toBe(16);
    expect(tomlGet(doc, 'x.y', 'e')).toBe(1000);
    expect(tomlGet(doc, 'x.y', 'f')).toBe(-350);
    expect(parseTomlLite('').tables.get('')?.size).toBe(0);
    expect(parseTomlLite('x = [1, 2\n').skipped).toBe(1);
  });
});

describe('globMatch (Go filepath.Match)', () => {
  it.each([
    ['/usr/bin/qemu-*', '/usr/bin/qemu-system-x86_64', true],
    ['/usr/*/vmplug-qemu', '/usr/local/bin/vmplug-qemu', false],
    ['/opt/vmplug/bin/vmplug-qem?', '/opt/vmplug/bin/vmplug-qemu', true],
    ['/opt/[a-z]mplug/bin/vmplug-qemu', '/opt/vmplug/bin/vmplug-qemu', true],
    ['/opt/vmplug/bin/vmplug-qemu', '/opt/vmplug/bin/vmplug-qemu.sh', false],
    ['/opt/v.plug', '/opt/vxplug', false],
  ])('%s ~ %s = %s', (pattern, path, want) => {
    expect(globMatch(pattern, path)).toBe(want);
  });
});

describe('parseMeminfo', () => {
  it('reads HugePages_Free and Hugepagesize', () => {
    expect(
      parseMeminfo(
        'MemTotal: 1 kB\nHugePages_Total:    1024\nHugePages_Free:      512\nHugepagesize:       2048 kB\n',
      ),
    ).toEqual({
      free: 512,
      sizeKiB: 2048,
    });
    expect(parseMeminfo('MemTotal: 1 kB\n')).toBeUndefined();
  });
});

describe('kataChecks', () => {
  const facts = { storeExists: true, hugePages: { free: 1024, sizeKiB: 2048 }, hypervisorExecutable: true };
  const by = (checks: { name: string; status: string; detail: string }[]) =>
    Object.fromEntries(checks.map((c) => [c.name, c]));

  it('all ok for a configuration set up as docs/kata.md says', () => {
    const checks = kataChecks('/etc/kata-containers/configuration.toml', parseTomlLite(katan()), facts);
    expect(checks.map((c) => [c.name, c.status])).toEqual([
      ['kata config', 'ok'],
      ['kata block devices', 'ok'],
      ['kata vhost-user store', 'ok'],
      ['kata hugepages', 'ok'],
      ['kata hypervisor path', 'ok'],
    ]);
  });

  it('names each setting that is off', () => {
    const doc = parseTomlLite(
      katan({
        path: '"/usr/bin/qemu-system-x86_64"',
        enable_vhost_user_store: 'false',
        enable_hugepages: 'false',
      }).replace(/^disable_block_device_use.*$/m, ''),
    );
    const c = by(kataChecks('/k.toml', doc, facts));
    expect(c['kata block devices']).toMatchObject({
      status: 'fail',
      detail: expect.stringContaining('3.26'),
    });
    expect(c['kata vhost-user store']).toMatchObject({ status: 'warn' });
    expect(c['kata hugepages']).toMatchObject({
      status: 'warn',
      detail: expect.stringContaining('vhost-user'),
    });
    expect(c['kata hypervisor path']).toMatchObject({
      status: 'fail',
      detail: expect.stringContaining('not vmplug-qemu'),
    });
  });

  it('fails a missing store, no free huge pages, a wrapper outside valid_hypervisor_paths', () => {
    const doc = parseTomlLite(katan({ valid_hypervisor_paths: '["/usr/bin/qemu-system-x86_64"]' }));
    const c = by(
      kataChecks('/k.toml', doc, {
        storeExists: false,
        hugePages: { free: 0, sizeKiB: 2048 },
        hypervisorExecutable: true,
      }),
    );
    expect(c['kata vhost-user store']).toMatchObject({
      status: 'fail',
      detail: expect.stringContaining('STORE'),
    });
    expect(c['kata hugepages']).toMatchObject({ status: 'fail' });
    expect(c['kata hypervisor path']).toMatchObject({
      status: 'fail',
      detail: expect.stringContaining('valid_hypervisor_paths'),
    });
    const few = by(kataChecks('/k.toml', doc, { ...facts, hugePages: { free: 10, sizeKiB: 2048 } }));
    expect(few['kata hugepages']).toMatchObject({
      status: 'warn',
      detail: expect.stringContaining('20 MiB'),
    });
  });

  it('fails a file without a hypervisor table', () => {
    expect(kataChecks('/k.toml', parseTomlLite('[runtime]\nx = 1\n'), facts)).toEqual([
      { name: 'kata config', status: 'fail', detail: '/k.toml: no [hypervisor.qemu] table' },
    ]);
  });
});

describe('checkKataConfig (files)', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmp-kata-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('finds kata-deploy configuration-qemu.toml and reads the store, wrapper and meminfo', async () => {
    const deploy = join(dir, 'deploy');
    const store = join(dir, 'store');
    const wrapper = join(dir, 'bin', 'vmplug-qemu');
    await mkdir(deploy);
    await mkdir(store);
    await mkdir(join(dir, 'bin'));
    await writeFile(wrapper, '#!/bin/sh\n');
    await chmod(wrapper, 0o755);
    await writeFile(join(deploy, 'configuration-fc.toml'), '[hypervisor.firecracker]\n');
    await writeFile(
      join(deploy, 'configuration-qemu.toml'),
      katan({ path: JSON.stringify(wrapper), valid_hypervisor_paths: JSON.stringify([wrapper]) }).replace(
        'STORE',
        store,
      ),
    );
    await writeFile(join(dir, 'meminfo'), 'HugePages_Free: 2048\nHugepagesize: 2048 kB\n');
    const checks = await checkKataConfig({
      searchPaths: [join(dir, 'none.toml')],
      deployDir: deploy,
      meminfoPath: join(dir, 'meminfo'),
    });
    expect(checks.map((c) => c.status)).toEqual(['ok', 'ok', 'ok', 'ok', 'ok']);
    expect(checks[0]?.detail).toContain('configuration-qemu.toml');
  });

  it('skips when no configuration exists, fails when the named one does not', async () => {
    expect(
      await checkKataConfig({ searchPaths: [join(dir, 'a.toml')], deployDir: join(dir, 'none') }),
    ).toEqual([expect.objectContaining({ name: 'kata config', status: 'skip' })]);
    expect(await checkKataConfig({ configPath: join(dir, 'missing.toml') })).toEqual([
      { name: 'kata config', status: 'fail', detail: `${join(dir, 'missing.toml')}: ENOENT` },
    ]);
  });
});
