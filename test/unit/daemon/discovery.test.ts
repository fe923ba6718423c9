import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { link, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { SandboxId } from '../../../core/ids.js';
import {
  type DiscoveryEvent,
  type DiscoveryOptions,
  SandboxDiscovery,
} from '../../../daemon/sandboxes/discovery.js';
import {
  identityFromPersist,
  identityStamp,
  podFromWrapperRecord,
  readKataIdentity,
} from '../../../daemon/sandboxes/identity.js';
import { FakeQemu } from '../fakes/qmp-server.js';
import { memoryLogger } from './helpers.js';

const sid = (s: string) => s as SandboxId;

async function until<T>(what: string, probe: () => T | undefined | false, timeoutMs = 8_000): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v !== undefined && v !== false) return v;
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function persist(id: string, annotations: Record<string, string>, pid = 4242): string {
  return JSON.stringify({
    PersistVersion: 1,
    State: 'running',
    SandboxContainer: id,
    HypervisorState: { Type: 'qemu', Pid: pid },
    Config: { HypervisorType: 'qemu', ContainerConfigs: [{ ID: id, Annotations: annotations }] },
  });
}

describe('podFromWrapperRecord', () => {
  const uid = '0f6c1a2e-8d3b-4c5a-9e7f-1a2b3c4d5e6f';
  it('reads a valid record and drops invalid names alone', () => {
    expect(podFromWrapperRecord(JSON.stringify({ uid, name: 'web-0', namespace: 'shop' }))).toEqual({
      uid,
      name: 'web-0',
      namespace: 'shop',
    });
    expect(podFromWrapperRecord(JSON.stringify({ uid, name: 'Web_0', namespace: 'a.b' }))).toEqual({ uid });
    expect(podFromWrapperRecord(JSON.stringify({ uid, name: 'a'.repeat(254) }))).toEqual({ uid });
  });
  it('is no identity without a UUID', () => {
    for (const text of [
      '',
      'x',
      '[]',
      '{}',
      JSON.stringify({ uid: 'u' }),
      JSON.stringify({ uid: `${uid}\n` }),
    ]) {
      expect(podFromWrapperRecord(text)).toBeUndefined();
    }
  });
});

describe('readKataIdentity with the wrapper record', () => {
  const uid = '0f6c1a2e-8d3b-4c5a-9e7f-1a2b3c4d5e6f';
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'vmp-ident-'));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });
  const files = () => ({
    sbsRoot: join(root, 'sbs'),
    vmRoot: join(root, 'vm'),
    monitorDir: join(root, 'mon'),
  });

  it('uses pod.json until persist.json has the pod, then the runtime identity wins', async () => {
    await mkdir(join(root, 'mon', 's1'), { recursive: true });
    await writeFile(join(root, 'mon', 's1', 'pod.json'), JSON.stringify({ uid }));
    expect(await readKataIdentity(files(), sid('s1'))).toEqual({ pod: { uid }, podSource: 'wrapper' });
    const before = await identityStamp(files(), sid('s1'));
    await mkdir(join(root, 'sbs', 's1'), { recursive: true });
    await writeFile(
      join(root, 'sbs', 's1', 'persist.json'),
      persist('s1', { 'io.kubernetes.cri.sandbox-uid': 'other', 'io.kubernetes.cri.sandbox-name': 'n' }),
    );
    expect(await identityStamp(files(), sid('s1'))).not.toBe(before);
    expect(await readKataIdentity(files(), sid('s1'))).toEqual({
      pod: { uid: 'other', name: 'n' },
      podSource: 'kata',
      qemuPid: 4242,
    });
  });

  it('ignores a pod.json that is not a regular file or too big', async () => {
    await mkdir(join(root, 'mon', 's2', 'pod.json'), { recursive: true });
    expect(await readKataIdentity(files(), sid('s2'))).toEqual({});
    await mkdir(join(root, 'mon', 's3'), { recursive: true });
    await writeFile(join(root, 'mon', 's3', 'pod.json'), JSON.stringify({ uid, pad: 'x'.repeat(5000) }));
    expect(await readKataIdentity(files(), sid('s3'))).toEqual({});
  });
});

describe('identityFromPersist', () => {
  it('reads containerd annotations of the sandbox container and the QEMU pid', () => {
    const text = persist('abc', {
      'io.kubernetes.cri.sandbox-uid': '0b5c3c4e-1111-2222-3333-444455556666',
      'io.kubernetes.cri.sandbox-name': 'web-0',
      'io.kubernetes.cri.sandbox-namespace': 'shop',
    });
    expect(identityFromPersist(text, 'abc')).toEqual({
      qemuPid: 4242,
      pod: { uid: '0b5c3c4e-1111-2222-3333-444455556666', name: 'web-0', namespace: 'shop' },
    });
  });

  it("reads CRI-O's annotations", () => {
    const text = persist('abc', {
      'io.kubernetes.pod.uid': 'u-1',
      'io.kubernetes.pod.name': 'db-1',
      'io.kubernetes.pod.namespace': 'prod',
    });
    expect(identityFromPersist(text, 'abc').pod).toEqual({ uid: 'u-1', name: 'db-1', namespace: 'prod' });
  });

  it('falls back to another container of the pod, and prefers the sandbox container', () => {
    const text = JSON.stringify({
      SandboxContainer: 'sb',
      Config: {
        ContainerConfigs: [
          { ID: 'app', Annotations: { 'io.kubernetes.cri.sandbox-uid': 'from-app' } },
          { ID: 'sb', Annotations: { 'io.kubernetes.cri.sandbox-uid': 'from-sandbox' } },
        ],
      },
    });
    expect(identityFromPersist(text, 'sb').pod).toEqual({ uid: 'from-sandbox' });
    const onlyApp = JSON.stringify({
      Config: { ContainerConfigs: [{ ID: 'app', Annotations: { 'io.kubernetes.cri.sandbox-uid': 'u' } }] },
    });
    expect(identityFromPersist(onlyApp, 'sb').pod).toEqual({ uid: 'u' });
  });

  it('never fails on malformed input', () => {
    for (const text of [
      '',
      'not json',
      'null',
      '[]',
      '{"Config": 5}',
      '{"Config": {"ContainerConfigs": [null, 3, {"Annotations": []}]}}',
      '{"HypervisorState": {"Pid": "x"}}',
      JSON.stringify({
        Config: { ContainerConfigs: [{ Annotations: { 'io.kubernetes.pod.name': 'a/b\nc' } }] },
      }),
    ]) {
      expect(identityFromPersist(text, 'x').pod).toBeUndefined();
    }
  });
});

describe('SandboxDiscovery', () => {
  let root: string;
  let monitorDir: string;
  let sbsRoot: string;
  let vmRoot: string;
  let discovery: SandboxDiscovery | undefined;
  const fakes: FakeQemu[] = [];
  const children: ChildProcess[] = [];
  const events: DiscoveryEvent[] = [];
  let log: ReturnType<typeof memoryLogger>;

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'vmp-disc-'));
    monitorDir = join(root, 'sandboxes');
    sbsRoot = join(root, 'vc', 'sbs');
    vmRoot = join(root, 'vc', 'vm');
    events.length = 0;
    log = memoryLogger('info');
  });

  afterEach(async () => {
    await discovery?.close();
    discovery = undefined;
    await Promise.allSettled(fakes.splice(0).map((f) => f.stopListening()));
    for (const c of children.splice(0)) c.kill('SIGKILL');
    await rm(root, { recursive: true, force: true });
  });

  async function startDiscovery(extra: Partial<DiscoveryOptions> = {}): Promise<SandboxDiscovery> {
    discovery = await SandboxDiscovery.start({
      monitorDir,
      kata: { sbsRoot, vmRoot },
      logger: log.logger,
      rescanIntervalMs: 100,
      goneGraceMs: 500,
      session: { backoff: { initialMs: 20, maxMs: 100 } },
      ...extra,
    });
    discovery.onChange((e) => events.push(e));
    return discovery;
  }

  async function sandbox(id: string): Promise<FakeQemu> {
    await mkdir(join(monitorDir, id), { recursive: true });
    const fake = await FakeQemu.startAt(join(monitorDir, id, 'qmp.sock'));
    fakes.push(fake);
    return fake;
  }

  it('finds existing sandboxes, connects, reads run state and Kata identity', async () => {
    await sandbox('sb-a');
    await mkdir(join(sbsRoot, 'sb-a'), { recursive: true });
    await writeFile(
      join(sbsRoot, 'sb-a', 'persist.json'),
      persist('sb-a', {
        'io.kubernetes.cri.sandbox-uid': 'uid-a',
        'io.kubernetes.cri.sandbox-name': 'pod-a',
        'io.kubernetes.cri.sandbox-namespace': 'ns-a',
      }),
    );
    const d = await startDiscovery();
    expect(d.known()).toEqual(['sb-a']);
    const present = await until('present', () => {
      const p = d.lookup(sid('sb-a'));
      return p.state === 'present' ? p : undefined;
    });
    expect(present.sandbox.kind).toBe('kata');
    await expect(present.sandbox.qmp.execute('query-status')).resolves.toMatchObject({ status: 'running' });
    const view = await until('running', () => {
      const v = d.get(sid('sb-a'));
      return v?.vmState === 'running' ? v : undefined;
    });
    expect(view).toMatchObject({
      id: 'sb-a',
      kind: 'kata',
      reachability: 'present',
      qemuStatus: 'running',
      pod: { uid: 'uid-a', name: 'pod-a', namespace: 'ns-a' },
      qemuPid: 4242,
    });
    expect(d.health().ok).toBe(true);
  });

  it('works before the monitor directory exists and picks up sandboxes as they come', async () => {
    const d = await startDiscovery();
    expect(d.known()).toEqual([]);
    expect(d.health()).toMatchObject({ ok: true });
    await sandbox('late-1');
    await until('added', () => d.known().includes(sid('late-1')));
    await until('present', () => d.lookup(sid('late-1')).state === 'present');
    expect(events.some((e) => e.type === 'added' && e.sandbox.id === 'late-1')).toBe(true);
    // Identity written after discovery (Kata writes persist.json later) is picked up by a rescan.
    expect(d.get(sid('late-1'))?.pod).toBeUndefined();
    await mkdir(join(sbsRoot, 'late-1'), { recursive: true });
    await writeFile(
      join(sbsRoot, 'late-1', 'persist.json'),
      persist('late-1', {
        'io.kubernetes.pod.uid': 'u',
        'io.kubernetes.pod.name': 'n',
        'io.kubernetes.pod.namespace': 's',
      }),
    );
    await until('identity', () => d.get(sid('late-1'))?.pod?.uid === 'u');
  });

  it("reports the wrapper's pod.json before Kata's persist.json, and Kata's identity once written", async () => {
    const uid = '0f6c1a2e-8d3b-4c5a-9e7f-1a2b3c4d5e6f';
    await sandbox('wr-1');
    await writeFile(
      join(monitorDir, 'wr-1', 'pod.json'),
      JSON.stringify({ uid, name: 'web-0', namespace: 'shop' }),
    );
    const d = await startDiscovery();
    await until('wrapper identity', () => d.get(sid('wr-1'))?.pod?.uid === uid);
    expect(d.get(sid('wr-1'))?.pod).toEqual({ uid, name: 'web-0', namespace: 'shop' });
    await mkdir(join(sbsRoot, 'wr-1'), { recursive: true });
    await writeFile(
      join(sbsRoot, 'wr-1', 'persist.json'),
      persist('wr-1', {
        'io.kubernetes.cri.sandbox-uid': 'runtime-uid',
        'io.kubernetes.cri.sandbox-name': 'pod-r',
        'io.kubernetes.cri.sandbox-namespace': 'ns-r',
      }),
    );
    await until('runtime identity', () => d.get(sid('wr-1'))?.pod?.uid === 'runtime-uid');
    expect(d.get(sid('wr-1'))).toMatchObject({
      pod: { uid: 'runtime-uid', name: 'pod-r', namespace: 'ns-r' },
      qemuPid: 4242,
    });
  });

  it('fs.watch alone picks up a new sandbox (no rescan due)', async () => {
    await mkdir(monitorDir, { recursive: true });
    const d = await startDiscovery({ rescanIntervalMs: 600_000 });
    await sandbox('watched');
    await until('added by the watch', () => d.known().includes(sid('watched')));
  });

  it('ignores invalid ids, files and symlinked entries', async () => {
    await mkdir(monitorDir, { recursive: true });
    await mkdir(join(monitorDir, 'bad id'));
    await mkdir(join(monitorDir, '.hidden'));
    await writeFile(join(monitorDir, 'plainfile'), '');
    await mkdir(join(root, 'elsewhere'));
    await symlink(join(root, 'elsewhere'), join(monitorDir, 'linked'));
    await sandbox('good');
    const d = await startDiscovery();
    expect(d.known()).toEqual(['good']);
    expect(log.text()).toContain('invalid sandbox id');
  });

  it('follows STOP, RESUME and SHUTDOWN events', async () => {
    const fake = await sandbox('ev');
    let status = 'running';
    fake.handlers.set('query-status', () => ({
      return: { status, singlestep: false, running: status === 'running' },
    }));
    const d = await startDiscovery();
    await until('running', () => d.get(sid('ev'))?.vmState === 'running');
    status = 'paused';
    fake.emit('STOP');
    await until('paused', () => d.get(sid('ev'))?.vmState === 'paused');
    status = 'running';
    fake.emit('RESUME');
    await until('running again', () => d.get(sid('ev'))?.vmState === 'running');
    status = 'shutdown';
    fake.emit('SHUTDOWN', { guest: true, reason: 'guest-shutdown' });
    fake.emit('STOP');
    await until('shutdown', () => d.get(sid('ev'))?.vmState === 'shutdown');
    expect(d.get(sid('ev'))?.qemuStatus).toBe('shutdown');
  });

  it('a removed directory makes the sandbox gone', async () => {
    const fake = await sandbox('rm-me');
    const d = await startDiscovery();
    await until('present', () => d.lookup(sid('rm-me')).state === 'present');
    await fake.stopListening();
    await rm(join(monitorDir, 'rm-me'), { recursive: true, force: true });
    await until('gone', () => d.lookup(sid('rm-me')).state === 'gone');
    expect(d.known()).toEqual([]);
    expect(events.find((e) => e.type === 'removed')).toMatchObject({ id: 'rm-me' });
  });

  it('a removed socket (QEMU exited cleanly) makes it gone and prunes the directory', async () => {
    const fake = await sandbox('clean-exit');
    const d = await startDiscovery({ goneGraceMs: 60_000 });
    await until('present', () => d.lookup(sid('clean-exit')).state === 'present');
    await fake.stopListening(); // the listening socket file is unlinked on close
    await until('gone', () => d.lookup(sid('clean-exit')).state === 'gone');
    expect(existsSync(join(monitorDir, 'clean-exit'))).toBe(false);
  });

  it('a socket nobody listens on (QEMU killed) is unreachable, then gone after the grace period and pruned', async () => {
    // A socket file left behind with no listener: what SIGKILL of QEMU leaves.
    await mkdir(join(monitorDir, 'dead'), { recursive: true });
    const tmp = join(root, 'tmp.sock');
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(tmp, r));
    await link(tmp, join(monitorDir, 'dead', 'qmp.sock'));
    await new Promise<void>((r) => server.close(() => r()));
    const d = await startDiscovery({ goneGraceMs: 400 });
    expect(d.lookup(sid('dead')).state).not.toBe('present');
    await until('unreachable', () => d.lookup(sid('dead')).state === 'unreachable');
    await until('gone', () => d.lookup(sid('dead')).state === 'gone');
    expect(existsSync(join(monitorDir, 'dead'))).toBe(false);
    expect(events.find((e) => e.type === 'removed')).toMatchObject({ id: 'dead' });
  });

  /** A QEMU stand-in in its own process (a QMP greeting and empty answers), so SIGKILL leaves its socket file. */
  function qemuProcess(socketPath: string): Promise<ChildProcess> {
    const script = `
      const net = require('node:net');
      net.createServer((c) => {
        c.write(JSON.stringify({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 } }, capabilities: [] } }) + '\\r\\n');
        // Commands come without separators: split them by brace depth (none holds a brace in a string).
        let depth = 0, start = 0, buf = '';
        c.on('data', (d) => {
          buf += d;
          for (let k = 0; k < buf.length; k++) {
            if (buf[k] === '{' && depth++ === 0) start = k;
            else if (buf[k] === '}' && --depth === 0) {
              const line = buf.slice(start, k + 1);
              const ret = line.includes('query-status') ? { status: 'running', running: true } : {};
              c.write(JSON.stringify({ return: ret, id: JSON.parse(line).id }) + '\\r\\n');
              buf = buf.slice(k + 1); k = -1;
            }
          }
        });
      }).listen(process.argv[1], () => process.stdout.write('up\\n'));`;
    const child = spawn(process.execPath, ['-e', script, socketPath], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(child);
    return new Promise((resolve, reject) => {
      child.stdout?.once('data', () => resolve(child));
      child.once('exit', () => reject(new Error('the QEMU stand-in exited')));
    });
  }

  it.each([
    ['with its pid known from Kata', true],
    ['with no pid known', false],
  ])(
    'a QEMU killed under a connected monitor is gone at once, not after the grace (%s)',
    async (_, withPid) => {
      await mkdir(join(monitorDir, 'killed'), { recursive: true });
      const socketPath = join(monitorDir, 'killed', 'qmp.sock');
      const child = await qemuProcess(socketPath);
      if (withPid) {
        await mkdir(join(sbsRoot, 'killed'), { recursive: true });
        await writeFile(join(sbsRoot, 'killed', 'persist.json'), persist('killed', {}, child.pid));
      }
      const d = await startDiscovery({ goneGraceMs: 60_000, rescanIntervalMs: 60_000 });
      await until('present', () => d.lookup(sid('killed')).state === 'present');
      if (withPid) await until('pid read', () => d.get(sid('killed'))?.qemuPid === child.pid);
      child.kill('SIGKILL');
      await once(child, 'exit');
      // SIGKILL leaves the socket file behind (discovery may already have pruned it by now).
      await until('gone', () => d.lookup(sid('killed')).state === 'gone', 5_000);
      expect(events.find((e) => e.type === 'removed')).toMatchObject({ id: 'killed' });
      expect(existsSync(join(monitorDir, 'killed'))).toBe(false);
    },
  );

  it('a dead QEMU whose pid Kata recorded is gone at the first check, not after the grace', async () => {
    await mkdir(join(monitorDir, 'stale'), { recursive: true });
    const socketPath = join(monitorDir, 'stale', 'qmp.sock');
    const child = await qemuProcess(socketPath);
    await mkdir(join(sbsRoot, 'stale'), { recursive: true });
    await writeFile(join(sbsRoot, 'stale', 'persist.json'), persist('stale', {}, child.pid));
    child.kill('SIGKILL');
    await once(child, 'exit');
    const d = await startDiscovery({ goneGraceMs: 60_000, rescanIntervalMs: 100 });
    await until('gone', () => d.lookup(sid('stale')).state === 'gone', 5_000);
  });

  it('a directory whose socket never appears is pruned after the grace period', async () => {
    await mkdir(join(monitorDir, 'nosock'), { recursive: true });
    const d = await startDiscovery({ goneGraceMs: 300 });
    expect(d.known()).toEqual(['nosock']);
    await until('gone', () => d.lookup(sid('nosock')).state === 'gone');
    expect(existsSync(join(monitorDir, 'nosock'))).toBe(false);
  });

  it('a dead sandbox whose directory cannot be pruned is gone once, not re-added every round', async () => {
    await mkdir(join(monitorDir, 'stuck'), { recursive: true });
    await writeFile(join(monitorDir, 'stuck', 'operator-notes.txt'), 'x');
    const d = await startDiscovery({ goneGraceMs: 200 });
    await until('gone', () => d.lookup(sid('stuck')).state === 'gone');
    await new Promise((r) => setTimeout(r, 800));
    expect(d.known()).toEqual([]);
    // Found by the first scan (before the listener), removed once, never re-added.
    expect(events.filter((e) => e.type === 'removed')).toHaveLength(1);
    expect(events.filter((e) => e.type === 'added')).toHaveLength(0);
    expect(log.text()).toContain('cannot prune');
    // A new QEMU under the same id changes the directory: it is found again.
    const fake = await FakeQemu.startAt(join(monitorDir, 'stuck', 'qmp.sock'));
    fakes.push(fake);
    await until('back', () => d.lookup(sid('stuck')).state === 'present');
  });

  it('a busy monitor (another client holds it) stays unreachable, never gone', async () => {
    const fake = await sandbox('busy');
    // Another client takes the monitor first; vmplug's session is parked and gets no greeting.
    const other = net.createConnection({ path: fake.path });
    await new Promise<void>((r) => other.once('data', () => r()));
    try {
      const d = await startDiscovery({
        goneGraceMs: 200,
        session: { backoff: { initialMs: 20, maxMs: 50 }, greetingTimeoutMs: 100 },
      });
      await until('unreachable busy', () => {
        const v = d.get(sid('busy'));
        return v?.reason?.includes('greeting') ? v : undefined;
      });
      await new Promise((r) => setTimeout(r, 600));
      expect(d.lookup(sid('busy')).state).toBe('unreachable');
      other.destroy();
      await until('present', () => d.lookup(sid('busy')).state === 'present');
    } finally {
      other.destroy();
    }
  });

  it('reconnects when QEMU restarts under the same id', async () => {
    const fake = await sandbox('restart');
    const d = await startDiscovery({ goneGraceMs: 60_000 });
    await until('present', () => d.lookup(sid('restart')).state === 'present');
    const gen = d.get(sid('restart'))!.generation;
    fake.dropClient();
    await until('reconnected', () => (d.get(sid('restart'))?.generation ?? 0) > gen);
    expect(d.lookup(sid('restart')).state).toBe('present');
  });

  it('settled() waits for the first connection attempts, bounded', async () => {
    await sandbox('s-live');
    await mkdir(join(monitorDir, 's-nosock'), { recursive: true });
    const d = await startDiscovery({ goneGraceMs: 60_000 });
    await d.settled(5_000);
    expect(d.lookup(sid('s-live')).state).toBe('present');
    expect(d.lookup(sid('s-nosock')).state).toBe('unreachable');
  });

  it('close() leaves everything on disk', async () => {
    await sandbox('keep');
    const d = await startDiscovery();
    await until('present', () => d.lookup(sid('keep')).state === 'present');
    await d.close();
    discovery = undefined;
    expect(existsSync(join(monitorDir, 'keep', 'qmp.sock'))).toBe(true);
  });
});
