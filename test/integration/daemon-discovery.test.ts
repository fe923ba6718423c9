import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Sandbox, VmplugApiError, VmplugClient } from '../../cli/client.js';
import { main as cli } from '../../cli/main.js';
import { resolveConfig } from '../../daemon/config.js';
import { startVmplugd, type Vmplugd } from '../../daemon/main.js';
import type { DiscoveryEvent } from '../../daemon/sandboxes/discovery.js';
import { QmpClient } from '../../qmp/index.js';
import { createLoopDevice, TEST_BED_ALLOWED_DEVICES } from '../env/loop.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../env/sandbox.js';
import { memoryLogger } from '../unit/daemon/helpers.js';

// vmplugd's discovery against real Kata-shaped sandboxes started through bin/vmplug-qemu: the
// daemon watches the test root's monitor dir, connects to each private monitor, reads the pod
// identity from a Kata-shaped persist.json, follows QEMU's run state, and drops and prunes a
// sandbox whose QEMU was killed.

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 60_000): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (performance.now() > deadline)
      throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('vmplugd discovers Kata sandboxes', () => {
  let root: TestRoot;
  let vmplugd: Vmplugd;
  let client: VmplugClient;
  let withPod: KataSandbox;
  let plain: KataSandbox;
  const events: DiscoveryEvent[] = [];
  const log = memoryLogger('debug');
  const pod = { uid: '6f1c2d3e-aaaa-bbbb-cccc-0123456789ab', name: 'db-0', namespace: 'storage' };

  beforeAll(async () => {
    root = await createTestRoot();
    const socket = join(root.dir, 'vmplug.sock');
    const { config } = resolveConfig(
      {
        socket,
        stateDir: join(root.dir, 'state'),
        monitorDir: root.monitorDir,
        kataVmRoot: root.kataVmRoot,
        libvirtUri: '',
        discoveryRescanMs: '250',
        sandboxGoneGraceMs: '1500',
        shutdownTimeoutMs: '5000',
        allowedDevices: TEST_BED_ALLOWED_DEVICES,
      },
      {},
      null,
    );
    // Started before any sandbox: the monitor dir does not even exist yet.
    vmplugd = await startVmplugd({
      config,
      logger: log.logger,
      discovery: { session: { backoff: { initialMs: 50, maxMs: 500 } } },
    });
    vmplugd.discovery.onChange((e) => events.push(e));
    client = new VmplugClient({ socketPath: socket, timeoutMs: 10_000 });
    [withPod, plain] = await Promise.all([
      startKataSandbox(root, { pod, inspectMonitor: true }),
      startKataSandbox(root),
    ]);
  });

  afterAll(async () => {
    await vmplugd?.stop();
    await root?.cleanup();
  });

  it('lists both sandboxes as running, with the pod identity from persist.json', async () => {
    const list = await until('both running with identity', async () => {
      const items = await client.listSandboxes();
      const a = items.find((s) => s.id === withPod.id);
      const b = items.find((s) => s.id === plain.id);
      return a?.state === 'running' && b?.state === 'running' && a.pod?.uid === pod.uid ? items : undefined;
    });
    const a = list.find((s) => s.id === withPod.id) as Sandbox;
    expect(a).toMatchObject({
      kind: 'kata',
      state: 'running',
      hypervisorStatus: 'running',
      pod,
      pid: withPod.pid,
      volumes: [],
    });
    const b = list.find((s) => s.id === plain.id) as Sandbox;
    expect(b.pod).toBeUndefined();
    expect(b.volumes).toEqual([]);

    expect((await client.listSandboxes({ podUid: pod.uid })).map((s) => s.id)).toEqual([withPod.id]);
    expect(await client.getSandbox(plain.id)).toMatchObject({ id: plain.id, kind: 'kata', state: 'running' });
    expect(
      events
        .filter((e) => e.type === 'added')
        .map((e) => (e.type === 'added' ? e.sandbox.id : ''))
        .sort(),
    ).toEqual([withPod.id, plain.id].sort());
    // The engine reaches QEMU through discovery's session on the private monitor.
    const presence = vmplugd.discovery.lookup(withPod.id as never);
    expect(presence.state).toBe('present');
    if (presence.state === 'present') {
      await expect(presence.sandbox.qmp.execute('query-status')).resolves.toMatchObject({
        status: 'running',
      });
    }
  });

  it('follows QEMU pausing and resuming (events on the private monitor)', async () => {
    const inspect = await QmpClient.connect(withPod.inspectQmpPath as string, { timeoutMs: 10_000 });
    try {
      await inspect.execute('stop');
      await until('paused', async () =>
        (await client.getSandbox(withPod.id)).state === 'paused' ? true : undefined,
      );
      await inspect.execute('cont');
      await until('running', async () =>
        (await client.getSandbox(withPod.id)).state === 'running' ? true : undefined,
      );
    } finally {
      await inspect.close();
    }
  });

  it('vmplug attaches a loop device through the real engine; ls and show list it; detach removes it', async () => {
    const loop = await createLoopDevice(8 * 1024 * 1024);
    const run = async (argv: string[]): Promise<{ code: number; out: string; err: string }> => {
      const stdout = new PassThrough();
      const stderr = new PassThrough();
      let out = '';
      let err = '';
      stdout.on('data', (c: Buffer) => {
        out += c.toString();
      });
      stderr.on('data', (c: Buffer) => {
        err += c.toString();
      });
      const code = await cli({
        argv: [...argv, '--socket', client.socketPath],
        env: {},
        stdin: new PassThrough(),
        stdout,
        stderr,
      });
      return { code, out, err };
    };
    try {
      const attached = await run([
        'attach',
        withPod.id,
        'pvc-loop-1',
        '--device',
        loop.path,
        '--bus',
        'virtio-blk',
      ]);
      expect(attached.err).toBe('');
      expect(attached.code).toBe(0);
      expect(attached.out).toMatch(/^attached pvc-loop-1 to .* block on virtio-blk/);
      const disk = await withPod.guest.waitForDisk((d) => d.sizeBytes === 8 * 1024 * 1024, {
        timeoutMs: 30_000,
      });
      const ls = await run(['ls', '--pod-uid', pod.uid]);
      expect(ls.out).toMatch(
        new RegExp(`${withPod.id}\\s+kata\\s+running\\s+storage/db-0\\s+pvc-loop-1\\(Attached\\)`),
      );
      const show = await run(['show', withPod.id, 'pvc-loop-1', '--json']);
      expect(JSON.parse(show.out)).toMatchObject({
        state: 'Attached',
        bus: 'virtio-blk',
        source: { path: loop.path },
      });
      const detached = await run(['detach', withPod.id, 'pvc-loop-1']);
      expect(detached.code).toBe(0);
      await withPod.guest.waitForDiskGone(disk.name, { timeoutMs: 30_000 });
      expect((await client.getSandbox(withPod.id)).volumes).toEqual([]);
    } finally {
      await client.detach(withPod.id, 'pvc-loop-1').catch(() => {});
      await loop.detach();
    }
  });

  it('a killed sandbox becomes gone and its monitor directory is pruned', async () => {
    const monitorEntry = join(root.monitorDir, plain.id);
    expect(existsSync(join(monitorEntry, 'qmp.sock'))).toBe(true);
    process.kill(plain.pid, 'SIGKILL');
    await plain.exited;
    await until('gone', async () => {
      try {
        await client.getSandbox(plain.id);
        return undefined;
      } catch (err) {
        return err instanceof VmplugApiError && err.code === 'NOT_FOUND' ? true : undefined;
      }
    });
    expect(existsSync(monitorEntry)).toBe(false);
    expect(events.find((e) => e.type === 'removed')).toMatchObject({ id: plain.id });
    // The other sandbox is untouched.
    expect((await client.listSandboxes()).map((s) => [s.id, s.state])).toEqual([[withPod.id, 'running']]);
    await plain.stop();
  });

  it('is ready once the start-up reconcile ran: journal, discovery, engine and reconcile checks', async () => {
    const checks = await until('ready', () => client.ready().catch(() => undefined));
    expect(checks).toMatchObject({
      journal: { ok: true },
      discovery: { ok: true },
      attachEngine: { ok: true },
      reconcile: { ok: true },
    });
    expect(log.text()).toContain('start-up reconcile done');
  });
});
