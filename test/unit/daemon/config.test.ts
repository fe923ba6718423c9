import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CONFIG_KEYS,
  ConfigError,
  describeSource,
  helpText,
  loadConfig,
  parseCommandLine,
  resolveConfig,
} from '../../../daemon/config.js';

const file = (content: unknown) => ({ path: '/etc/vmplug/config.json', content });

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('resolveConfig', () => {
  it('has defaults for every key so vmplugd runs with no config', () => {
    const { config, sources } = resolveConfig({}, {}, null);
    expect(config).toMatchObject({
      socket: '/run/vmplug/vmplug.sock',
      stateDir: '/var/lib/vmplug',
      monitorDir: '/run/vmplug/sandboxes',
      kataVmRoot: '/run/vc/vm',
      libvirtUri: 'qemu:///system',
      logLevel: 'info',
      socketGroup: null,
      socketMode: 0o660,
      kubeconfig: null,
      leaseNamespace: 'vmplug-system',
      maxConcurrentOps: 8,
      shutdownTimeoutMs: 25_000,
      qmpTimeoutMs: 10_000,
    });
    expect(config.nodeName).toMatch(/^[a-z0-9.-]+$/);
    for (const key of CONFIG_KEYS) expect(sources[key]).toEqual({ kind: 'default' });
  });

  it('takes flag over environment over file over default', () => {
    const f = file({ socket: '/file/s.sock', stateDir: '/file/state', monitorDir: '/file/mon' });
    const env = { VMPLUG_SOCKET: '/env/s.sock', VMPLUG_STATE_DIR: '/env/state' };
    const { config, sources } = resolveConfig({ socket: '/flag/s.sock' }, env, f);
    expect(config.socket).toBe('/flag/s.sock');
    expect(config.stateDir).toBe('/env/state');
    expect(config.monitorDir).toBe('/file/mon');
    expect(config.kataVmRoot).toBe('/run/vc/vm');
    expect(describeSource(sources.socket)).toBe('--socket');
    expect(describeSource(sources.stateDir)).toBe('VMPLUG_STATE_DIR');
    expect(describeSource(sources.monitorDir)).toBe('/etc/vmplug/config.json: monitorDir');
    expect(describeSource(sources.kataVmRoot)).toBe('default');
  });

  it('reads NODE_NAME and KUBECONFIG as the design names them', () => {
    const { config } = resolveConfig({}, { NODE_NAME: 'worker-1', KUBECONFIG: '/root/.kube/config' }, null);
    expect(config.nodeName).toBe('worker-1');
    expect(config.kubeconfig).toBe('/root/.kube/config');
  });

  it('takes the Lease namespace from --lease-namespace, VMPLUG_LEASE_NAMESPACE or the file', () => {
    expect(resolveConfig({}, { VMPLUG_LEASE_NAMESPACE: 'kube-node-lease' }, null).config.leaseNamespace).toBe(
      'kube-node-lease',
    );
    expect(
      resolveConfig({ leaseNamespace: 'a' }, {}, file({ leaseNamespace: 'b' })).config.leaseNamespace,
    ).toBe('a');
    expect(configError(() => resolveConfig({}, { VMPLUG_LEASE_NAMESPACE: 'Bad_NS' }, null)).message).toMatch(
      /^VMPLUG_LEASE_NAMESPACE: must be a Kubernetes namespace name/,
    );
  });

  it('names the key and the source of a bad value', () => {
    expect(configError(() => resolveConfig({ socket: 'rel/path' }, {}, null)).message).toBe(
      '--socket: must be an absolute path (got "rel/path")',
    );
    const env = configError(() => resolveConfig({}, { VMPLUG_SOCKET: 'x' }, null));
    expect(env.message).toMatch(/^VMPLUG_SOCKET: must be an absolute path/);
    expect(env.key).toBe('socket');
    const f = configError(() => resolveConfig({}, {}, file({ socket: 42 })));
    expect(f.message).toBe('/etc/vmplug/config.json: socket: must be a string (got 42)');
    expect(f.source).toBe('/etc/vmplug/config.json: socket');
  });

  it('takes the device allow-list as comma-separated /dev globs from a flag, the environment or the file', () => {
    const patterns = (c: ReturnType<typeof resolveConfig>) => c.config.allowedDevices.map((g) => g.pattern);
    expect(patterns(resolveConfig({}, {}, null))).toEqual(['/dev/rbd*', '/dev/nbd*', '/dev/mapper/*']);
    expect(patterns(resolveConfig({ allowedDevices: '/dev/rbd*, /dev/loop*' }, {}, null))).toEqual([
      '/dev/rbd*',
      '/dev/loop*',
    ]);
    expect(patterns(resolveConfig({}, { VMPLUG_ALLOWED_DEVICES: '' }, null))).toEqual([]);
    expect(patterns(resolveConfig({}, {}, file({ allowedDevices: '/dev/nbd?' })))).toEqual(['/dev/nbd?']);
    const bad = configError(() => resolveConfig({ allowedDevices: '/dev/rbd*,/dev/sd[a-z]' }, {}, null));
    expect(bad.key).toBe('allowedDevices');
    expect(bad.message).toMatch(/^--allowed-devices: "\/dev\/sd\[a-z\]": only \* and \? are special/);
    expect(configError(() => resolveConfig({}, { VMPLUG_ALLOWED_DEVICES: '/etc/*' }, null)).message).toMatch(
      /^VMPLUG_ALLOWED_DEVICES: "\/etc\/\*" must start with \/dev\//,
    );
  });

  it('rejects unknown file keys and lists the known ones', () => {
    const err = configError(() => resolveConfig({}, {}, file({ sockett: '/x' })));
    expect(err.message).toMatch(/unknown key "sockett" \(known keys: socket, stateDir,/);
    expect(configError(() => resolveConfig({}, {}, file([]))).message).toMatch(/must hold a JSON object/);
    expect(configError(() => resolveConfig({}, {}, file({ socket: { a: 1 } }))).message).toMatch(
      /socket: must be a string, number or null/,
    );
  });

  it('parses socket modes as octal strings only and refuses world-writable ones', () => {
    expect(resolveConfig({ socketMode: '0640' }, {}, null).config.socketMode).toBe(0o640);
    expect(resolveConfig({ socketMode: '600' }, {}, null).config.socketMode).toBe(0o600);
    expect(configError(() => resolveConfig({}, {}, file({ socketMode: 660 }))).message).toMatch(
      /socketMode: must be an octal mode string such as "0660"/,
    );
    expect(configError(() => resolveConfig({ socketMode: '0662' }, {}, null)).message).toMatch(
      /--socket-mode: must not be writable by others/,
    );
    expect(configError(() => resolveConfig({ socketMode: '0980' }, {}, null)).message).toMatch(/octal/);
  });

  it('takes a socket group by name or gid', () => {
    expect(resolveConfig({ socketGroup: 'kvm' }, {}, null).config.socketGroup).toBe('kvm');
    expect(resolveConfig({ socketGroup: '107' }, {}, null).config.socketGroup).toBe(107);
    expect(resolveConfig({}, {}, file({ socketGroup: 0 })).config.socketGroup).toBe(0);
    expect(resolveConfig({}, { VMPLUG_SOCKET_GROUP: '' }, null).config.socketGroup).toBeNull();
    expect(configError(() => resolveConfig({ socketGroup: 'bad group' }, {}, null)).message).toMatch(
      /--socket-group: must be a group name or a numeric gid/,
    );
  });

  it('bounds the socket path so the temporary bind name fits sun_path', () => {
    const ok = `/${'a'.repeat(98)}`;
    expect(resolveConfig({ socket: ok }, {}, null).config.socket).toBe(ok);
    expect(configError(() => resolveConfig({ socket: `${ok}b` }, {}, null)).message).toMatch(
      /--socket: must be at most 99 bytes/,
    );
  });

  it('normalizes paths and checks the other keys', () => {
    expect(resolveConfig({ stateDir: '/var//lib/vmplug/' }, {}, null).config.stateDir).toBe(
      '/var/lib/vmplug',
    );
    expect(resolveConfig({ libvirtUri: '' }, {}, null).config.libvirtUri).toBeNull();
    expect(resolveConfig({}, {}, file({ libvirtUri: null })).config.libvirtUri).toBeNull();
    expect(configError(() => resolveConfig({ libvirtUri: 'system' }, {}, null)).message).toMatch(
      /libvirt URI/,
    );
    expect(configError(() => resolveConfig({ logLevel: 'verbose' }, {}, null)).message).toMatch(
      /--log-level: must be one of fatal, error, warn, info, debug, trace, silent/,
    );
    expect(configError(() => resolveConfig({ nodeName: 'Worker_1' }, {}, null)).message).toMatch(/node name/);
    expect(resolveConfig({}, { VMPLUG_MAX_CONCURRENT_OPS: '16' }, null).config.maxConcurrentOps).toBe(16);
    expect(configError(() => resolveConfig({ maxConcurrentOps: '0' }, {}, null)).message).toMatch(
      /--max-concurrent-ops: must be an integer from 1 to 1024 \(got "0"\)/,
    );
    expect(configError(() => resolveConfig({}, {}, file({ maxConcurrentOps: 1.5 }))).message).toMatch(
      /integer/,
    );
  });
});

describe('parseCommandLine', () => {
  it('maps flags to keys and rejects unknown flags and positionals', () => {
    const cl = parseCommandLine(['--socket', '/s', '--state-dir=/st', '--config', '/c.json']);
    expect(cl).toEqual({ action: 'run', flags: { socket: '/s', stateDir: '/st' }, configFile: '/c.json' });
    expect(configError(() => parseCommandLine(['--sockt', '/s'])).message).toMatch(
      /Unknown option '--sockt'/,
    );
    expect(configError(() => parseCommandLine(['serve'])).message).toMatch(/positional/i);
    expect(parseCommandLine(['-h']).action).toBe('help');
    expect(parseCommandLine(['--print-openapi']).action).toBe('print-openapi');
  });

  it('documents every key in --help', () => {
    const help = helpText();
    for (const flag of [
      '--socket',
      '--state-dir',
      '--monitor-dir',
      '--kata-vm-root',
      '--libvirt-uri',
      '--log-level',
    ]) {
      expect(help).toContain(flag);
    }
    expect(help).toContain('VMPLUG_SOCKET_MODE, file key "socketMode", default 0660');
  });
});

describe('loadConfig', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmplug-config-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads the JSON file named by --config or VMPLUG_CONFIG, flags still winning', async () => {
    const path = join(dir, 'config.json');
    await writeFile(path, JSON.stringify({ socket: '/file.sock', logLevel: 'debug', socketMode: '0640' }));
    const a = await loadConfig({ argv: ['--config', path, '--log-level', 'warn'], env: {} });
    expect(a.file).toBe(path);
    expect(a.config).toMatchObject({ socket: '/file.sock', logLevel: 'warn', socketMode: 0o640 });
    const b = await loadConfig({ argv: [], env: { VMPLUG_CONFIG: path, VMPLUG_SOCKET: '/env.sock' } });
    expect(b.config.socket).toBe('/env.sock');
    expect(describeSource(b.sources.logLevel)).toBe(`${path}: logLevel`);
  });

  it('fails on a missing explicit file, invalid JSON and relative paths', async () => {
    await expect(loadConfig({ argv: ['--config', join(dir, 'nope.json')], env: {} })).rejects.toThrow(
      /nope.json: cannot read the config file \(ENOENT\)/,
    );
    const bad = join(dir, 'bad.json');
    await writeFile(bad, '{"socket": ');
    await expect(loadConfig({ argv: ['--config', bad], env: {} })).rejects.toThrow(
      /bad.json: not valid JSON/,
    );
    await expect(loadConfig({ argv: [], env: { VMPLUG_CONFIG: 'config.json' } })).rejects.toThrow(
      /VMPLUG_CONFIG: must be an absolute path/,
    );
  });
});
