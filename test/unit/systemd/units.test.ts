import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { resolveConfig } from '../../../daemon/config.js';

// The unit files as systemd reads them: systemd-analyze verify (Debian's systemd package; it works
// without systemd as PID 1) must have nothing to say, and the settings that tie the units to the
// daemon must agree with it.

const dir = fileURLToPath(new URL('../../../systemd/', import.meta.url));
const service = `${dir}vmplugd.service`;
const socket = `${dir}vmplugd.socket`;
const sysusers = `${dir}vmplug.sysusers`;

/** Directive -> values, in file order (a key may repeat, e.g. Environment=). */
async function directives(path: string): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  for (const raw of (await readFile(path, 'utf8')).split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith('[')) continue;
    const eq = line.indexOf('=');
    const key = line.slice(0, eq);
    out.set(key, [...(out.get(key) ?? []), line.slice(eq + 1)]);
  }
  return out;
}

function one(d: Map<string, string[]>, key: string): string {
  const v = d.get(key);
  if (v?.length !== 1) throw new Error(`${key}= set ${v?.length ?? 0} times`);
  return v[0] as string;
}

function seconds(v: string): number {
  const m = /^([0-9]+)(s|min)?$/.exec(v);
  if (m === null) throw new Error(`not a time span this test reads: ${v}`);
  return Number(m[1]) * (m[2] === 'min' ? 60 : 1);
}

function run(file: string, args: string[]): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    execFile(file, args, { timeout: 30_000, encoding: 'utf8' }, (err, stdout, stderr) =>
      err === null ? resolve(`${stdout}${stderr}`) : reject(new Error(`${err.message}\n${stderr}`)),
    );
  });
}

describe('systemd units', () => {
  it('pass systemd-analyze verify without a warning', async () => {
    const output = await run('systemd-analyze', ['verify', service, socket]);
    // verify exits 0 on unknown keys and bad values: it only prints them.
    expect(output).toBe('');
  });

  it('declare notify with watchdog, and a stop timeout above the daemon’s shutdown grace', async () => {
    const d = await directives(service);
    expect(one(d, 'Type')).toBe('notify');
    expect(one(d, 'NotifyAccess')).toBe('main');
    expect(one(d, 'KillMode')).toBe('mixed');
    expect(one(d, 'Restart')).toBe('on-failure');
    expect(seconds(one(d, 'WatchdogSec'))).toBe(30);
    expect(one(d, 'RuntimeDirectory')).toBe('vmplug');
    // Removing /run/vmplug at stop would orphan the QMP monitors of running sandboxes.
    expect(one(d, 'RuntimeDirectoryPreserve')).toBe('yes');
    const env = Object.fromEntries(
      (d.get('Environment') ?? []).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
    );
    const grace = Number(env.VMPLUG_SHUTDOWN_TIMEOUT_MS) / 1000;
    // Grace, then 3 s for aborted operations to unwind, then the reporter's flush.
    expect(seconds(one(d, 'TimeoutStopSec'))).toBeGreaterThanOrEqual(grace + 3 + 10);
  });

  it('start node with the options bin/vmplugd.js names on its first line (the image and npx use that)', async () => {
    const d = await directives(service);
    const shebang = (
      await readFile(fileURLToPath(new URL('../../../bin/vmplugd.js', import.meta.url)), 'utf8')
    ).split('\n')[0];
    const options = /^#!\/usr\/bin\/env -S node((?: --[a-z-]+=\S+)*)$/.exec(shebang ?? '')?.[1]?.trim();
    expect(options, `first line: ${shebang}`).toBeTruthy();
    expect(one(d, 'ExecStart')).toBe(`/usr/bin/node ${options} /opt/vmplug/bin/vmplugd.js`);
  });

  it('harden without cutting vmplugd off devices or the paths it shares with QEMU', async () => {
    const d = await directives(service);
    // Each of these either hides /dev (host block devices, /dev/net/tun) or turns the device cgroup
    // into an allow list (ProtectClock implies DeviceAllow=char-rtc r), or gives vmplugd a /tmp or
    // network QEMU does not see.
    for (const key of [
      'PrivateDevices',
      'DevicePolicy',
      'DeviceAllow',
      'ProtectClock',
      'PrivateTmp',
      'PrivateNetwork',
    ]) {
      expect(d.has(key), key).toBe(false);
    }
    expect(one(d, 'NoNewPrivileges')).toBe('yes');
    expect(one(d, 'ProtectSystem')).toBe('full');
  });

  it('give the daemon settings it accepts, and the socket path and mode the socket unit makes', async () => {
    const d = await directives(service);
    const s = await directives(socket);
    const env = Object.fromEntries(
      (d.get('Environment') ?? []).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]),
    );
    const { config, sources } = resolveConfig({}, env, null);
    for (const key of Object.keys(env)) {
      expect(Object.values(sources).some((src) => src.kind === 'env' && src.name === key)).toBe(true);
    }
    expect(one(s, 'ListenStream')).toBe(config.socket);
    expect(Number.parseInt(one(s, 'SocketMode'), 8)).toBe(config.socketMode);
    expect(one(s, 'SocketGroup')).toBe(config.socketGroup);
    expect(one(s, 'Service')).toBe('vmplugd.service');
    expect(one(s, 'DirectoryMode')).toBe(one(d, 'RuntimeDirectoryMode'));
    expect(config.monitorDir.startsWith(`/run/${one(d, 'RuntimeDirectory')}/`)).toBe(true);
    expect(config.stateDir).toBe(`/var/lib/${one(d, 'StateDirectory')}`);
  });

  it('create, with systemd-sysusers, the group the socket is given to', async () => {
    const root = await mkdtemp(join(tmpdir(), 'vmplug-sysusers-'));
    try {
      await mkdir(join(root, 'etc'));
      // --root: writes only below the scratch root, never the host's /etc.
      await run('systemd-sysusers', [`--root=${root}`, sysusers]);
      const groups = (await readFile(join(root, 'etc', 'group'), 'utf8'))
        .split('\n')
        .map((l) => l.split(':')[0]);
      expect(groups).toContain(one(await directives(socket), 'SocketGroup'));
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
