import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { attachCeph, type CephCluster, sweepStaleClusters } from '../env/ceph.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

describe('test Ceph cluster (started once by the global setup)', () => {
  let ceph: CephCluster;
  let scratch: string;
  const made: string[] = [];
  const image = (tag: string): string => {
    const name = `t-${tag}-${randomBytes(4).toString('hex')}`;
    made.push(name);
    return name;
  };

  beforeAll(async () => {
    ceph = attachCeph(inject('ceph'));
    scratch = await mkdtemp(join(ceph.dir, 'test-'));
  });
  afterAll(async () => {
    const existing = new Set(await ceph.listImages());
    for (const name of made) if (existing.has(name)) await ceph.removeImage(name);
    await rm(scratch, { recursive: true, force: true });
  });

  it('describes a cluster on a loopback monitor with a client key', () => {
    expect(ceph.monitors).toHaveLength(1);
    expect(ceph.monitors[0]).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(ceph.pool).toBe('rbd');
    expect(ceph.clientUser).toBe('vmplug');
    expect(Buffer.from(ceph.clientKey, 'base64').length).toBeGreaterThan(16);
  });

  it('creates, sizes, lists and removes an image; unwritten data reads as zeros', async () => {
    const name = image('create');
    await ceph.createImage(name, 16 * MiB);
    expect(await ceph.imageSize(name)).toBe(16 * MiB);
    expect(await ceph.listImages()).toContain(name);
    expect((await ceph.readImage(name, 5 * MiB, 4096)).equals(Buffer.alloc(4096))).toBe(true);
    await ceph.removeImage(name);
    expect(await ceph.listImages()).not.toContain(name);
  });

  it('imports data and exports the same bytes; readImage reads ranges across objects', async () => {
    const name = image('data');
    // 4 MiB objects: 9 MiB spans three, the last one partly written.
    const data = randomBytes(9 * MiB);
    await ceph.importImage(name, data);
    expect(await ceph.imageSize(name)).toBe(data.length);
    const exported = await ceph.exportImage(name);
    expect(exported.equals(data)).toBe(true);
    const from = 4 * MiB - 1000;
    expect((await ceph.readImage(name, from, 5000)).equals(data.subarray(from, from + 5000))).toBe(true);
    expect((await ceph.readImage(name, 9 * MiB - 10, 10)).equals(data.subarray(-10))).toBe(true);
  });

  it('client.vmplug authenticates with --id vmplug and its keyring file, against the monitor address', async () => {
    const name = image('client');
    const file = join(scratch, 'client.bin');
    const data = randomBytes(MiB);
    await writeFile(file, data);
    // No --conf: only what a client like QEMU gets (monitor address, user, key).
    const client = [
      '--conf',
      '/dev/null',
      '-m',
      ceph.monitors[0]!,
      '--id',
      'vmplug',
      '--keyring',
      ceph.clientKeyringPath,
    ];
    await run('rbd', [...client, 'import', '--no-progress', '--dest-pool', 'rbd', file, name], {
      timeout: 60_000,
    });
    const { stdout } = await run('rbd', [...client, 'ls', '--format', 'json', '--pool', 'rbd'], {
      timeout: 60_000,
    });
    expect(JSON.parse(stdout) as string[]).toContain(name);
    expect((await ceph.exportImage(name)).equals(data)).toBe(true);
    // Its caps are rbd's, not an admin's.
    await expect(
      run('ceph', [...client, 'osd', 'pool', 'create', `nope-${randomBytes(3).toString('hex')}`], {
        timeout: 60_000,
      }),
    ).rejects.toThrow(/EACCES|access denied|Permission denied/i);
  });

  it('the key from `ceph auth get-key` is the descriptor key', async () => {
    const { stdout } = await run('ceph', [...ceph.adminArgs, 'auth', 'get-key', 'client.vmplug'], {
      timeout: 60_000,
    });
    expect(stdout.trim()).toBe(ceph.clientKey);
  });

  it("QEMU's rbd driver opens an image with a secret object and the monitor as host/port", async () => {
    const name = image('qemu');
    await ceph.createImage(name, 8 * MiB);
    const keyFile = join(scratch, 'qemu.key');
    await writeFile(keyFile, ceph.clientKey, { mode: 0o600 });
    const [host, port] = ceph.monitors[0]!.split(':');
    const spec = {
      driver: 'raw',
      file: {
        driver: 'rbd',
        pool: ceph.pool,
        image: name,
        server: [{ host, port }],
        user: ceph.clientUser,
        'auth-client-required': ['cephx'],
        'key-secret': 's0',
        conf: '/dev/null',
      },
    };
    const { stdout } = await run(
      'qemu-img',
      [
        'info',
        '--output',
        'json',
        '--object',
        `secret,id=s0,file=${keyFile},format=base64`,
        `json:${JSON.stringify(spec)}`,
      ],
      { timeout: 60_000 },
    );
    expect((JSON.parse(stdout) as { 'virtual-size': number })['virtual-size']).toBe(8 * MiB);
  });

  it('the key is on no command line, and not in the daemons’ logs', () => {
    const offenders: string[] = [];
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
        if (cmdline.includes(ceph.clientKey)) offenders.push(`${entry}: ${cmdline.split('\0')[0]}`);
      } catch {
        // Exited meanwhile.
      }
    }
    expect(offenders).toEqual([]);
    for (const pid of Object.values(ceph.pids)) {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      expect(argv).toContain(ceph.confPath);
    }
    const logDir = join(ceph.dir, 'log');
    for (const f of readdirSync(logDir)) {
      expect(readFileSync(join(logDir, f), 'utf8').includes(ceph.clientKey), f).toBe(false);
    }
  });

  it('keeps every file in its own directory', () => {
    const conf = readFileSync(ceph.confPath, 'utf8');
    for (const line of conf.split('\n')) {
      const m = /^\s*[a-z ]*(?:dir|data|file|socket|keyring|path)\s*=\s*(\S+)/.exec(line);
      if (m?.[1]) expect(m[1].startsWith(ceph.dir), line).toBe(true);
    }
  });

  it('sweeps cluster dirs of dead runs, never a live one', async () => {
    const dead = await new Promise<number>((resolve) => {
      const child = execFile('true');
      child.once('exit', () => resolve(child.pid!));
    });
    const root = await mkdtemp(join(tmpdir(), 'sweep-'));
    try {
      const mk = async (name: string, owner: number): Promise<string> => {
        const dir = join(root, name);
        await mkdir(join(dir, 'run'), { recursive: true });
        await writeFile(join(dir, 'vmplug-test-ceph'), 'vmplug-test-ceph\n');
        await writeFile(join(dir, 'owner.pid'), `${owner}\n`);
        return dir;
      };
      const stale = await mk('vmplug-ceph-stale', dead);
      const live = await mk('vmplug-ceph-live', process.pid);
      expect(await sweepStaleClusters(root)).toEqual([stale]);
      expect(existsSync(stale)).toBe(false);
      expect(existsSync(live)).toBe(true);
      expect(existsSync(ceph.dir)).toBe(true);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
