import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CephStalledError } from '../../../core/errors.js';
import { type PreflightDaemon, RbdPreflight } from '../../../storage/rbd-preflight.js';
import { parseMonitors, Secret } from '../../../storage/volume-spec.js';
import { FakeQemu } from '../fakes/qemu.js';

const KEY = 'AQDuSQNrSIzGGhAAA42jGo01/mILR5NFi7XNYA==';
const source = {
  type: 'rbd' as const,
  pool: 'rbd',
  image: 'vol1',
  monitors: parseMonitors(['127.0.0.1:6789']),
  user: 'vmplug',
  key: new Secret(KEY),
};

/** Daemons as the fake QEMU's monitor; records how each one ended. */
class Launcher {
  constructor(readonly confPath: string) {}
  readonly daemons: Array<{ qemu: FakeQemu; ended?: 'quit' | 'killed' }> = [];
  prepare?: (qemu: FakeQemu) => void;

  launch = async (): Promise<PreflightDaemon> => {
    const qemu = new FakeQemu();
    this.prepare?.(qemu);
    const entry: { qemu: FakeQemu; ended?: 'quit' | 'killed' } = { qemu };
    this.daemons.push(entry);
    return {
      qmp: qemu,
      confPath: this.confPath,
      alive: () => entry.ended === undefined && !qemu.dead,
      quit: async () => {
        entry.ended ??= 'quit';
      },
      kill: async () => {
        entry.ended ??= 'killed';
      },
    };
  };
}

describe('RbdPreflight', () => {
  let runDir: string;
  let launcher: Launcher;
  beforeEach(async () => {
    runDir = await mkdtemp(join(tmpdir(), 'vmplug-pf-'));
    // The fake QEMU reads the conf an rbd blockdev-add names.
    const conf = join(runDir, 'ceph.conf');
    await writeFile(conf, '[global]\n');
    launcher = new Launcher(conf);
  });
  afterEach(async () => {
    await rm(runDir, { recursive: true, force: true });
  });

  it('opens read-only with the key over QMP, answers before closing, then keeps the daemon idle', async () => {
    const pf = new RbdPreflight({ runDir, launch: launcher.launch });
    await pf.open(source);
    const first = launcher.daemons[0]?.qemu as FakeQemu;
    expect(first.calls.slice(0, 2).map((c) => c.command)).toEqual(['object-add', 'blockdev-add']);
    expect(first.calls[1]?.args).toMatchObject({
      driver: 'rbd',
      'read-only': true,
      conf: launcher.confPath,
    });
    expect(JSON.stringify(first.calls[1]?.args)).not.toContain(KEY);
    await pf.close(); // waits for the close in flight
    expect(first.calls.map((c) => c.command)).toEqual([
      'object-add',
      'blockdev-add',
      'blockdev-del',
      'object-del',
    ]);
    expect(launcher.daemons[0]?.ended).toBe('quit');
  });

  it('reuses an idle daemon for the next open: one start for a series of attaches', async () => {
    const pf = new RbdPreflight({ runDir, launch: launcher.launch });
    for (let i = 0; i < 3; i++) {
      await pf.open(source);
      // Let the background close finish, as the next attach's other steps would.
      while (pf.idle === 0) await new Promise((r) => setTimeout(r, 1));
    }
    expect(launcher.daemons).toHaveLength(1);
    expect(launcher.daemons[0]?.qemu.nodes.size).toBe(0);
    await pf.close();
    expect(launcher.daemons[0]?.ended).toBe('quit');
  });

  it('opens at once in parallel on separate daemons, and keeps at most maxIdle of them', async () => {
    const pf = new RbdPreflight({ runDir, launch: launcher.launch, maxIdle: 1 });
    await Promise.all([pf.open(source), pf.open(source), pf.open(source)]);
    expect(launcher.daemons).toHaveLength(3);
    while (launcher.daemons.filter((d) => d.ended === 'quit').length < 2)
      await new Promise((r) => setTimeout(r, 1));
    expect(pf.idle).toBe(1);
    await pf.close();
    expect(launcher.daemons.map((d) => d.ended)).toEqual(['quit', 'quit', 'quit']);
  });

  it('runs at most maxConcurrent opens at once; a queued one gets its whole bound once it starts', async () => {
    let inFlight = 0;
    let peak = 0;
    launcher.prepare = (q) =>
      q.onCommand(async (command) => {
        if (command !== 'blockdev-add') return;
        peak = Math.max(peak, ++inFlight);
        await new Promise((r) => setTimeout(r, 80));
        inFlight--;
      });
    // Three opens of 80 ms each, one at a time, take longer than the 150 ms bound of each.
    const pf = new RbdPreflight({ runDir, launch: launcher.launch, maxConcurrent: 1, timeoutMs: 150 });
    const results = await Promise.allSettled([pf.open(source), pf.open(source), pf.open(source)]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'fulfilled']);
    expect(peak).toBe(1);
    await pf.close();
  });

  it('an open for an attach in its turn goes before opens asked ahead of their turn', async () => {
    const order: string[] = [];
    let hold: () => void = () => {};
    const held = new Promise<void>((r) => {
      hold = r;
    });
    launcher.prepare = (q) =>
      q.onCommand(async (command, args) => {
        if (command !== 'blockdev-add') return;
        order.push(String(args.image));
        if (args.image === 'first') await held;
      });
    const pf = new RbdPreflight({ runDir, launch: launcher.launch, maxConcurrent: 1 });
    const first = pf.open({ ...source, image: 'first' });
    while (order.length === 0) await new Promise((r) => setTimeout(r, 1));
    const opens = [
      pf.open({ ...source, image: 'ahead-1' }, undefined, { ahead: true }),
      pf.open({ ...source, image: 'ahead-2' }, undefined, { ahead: true }),
      pf.open({ ...source, image: 'in-turn' }),
    ];
    hold();
    await Promise.all([first, ...opens]);
    expect(order).toEqual(['first', 'in-turn', 'ahead-1', 'ahead-2']);
    await pf.close();
  });

  it('a stalled open is CEPH_STALLED within the bound and its daemon killed, never reused', async () => {
    launcher.prepare = (q) => q.hang('blockdev-add');
    const pf = new RbdPreflight({ runDir, launch: launcher.launch, timeoutMs: 100 });
    const err = await pf.open(source).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CephStalledError);
    expect(launcher.daemons[0]?.ended).toBe('killed');
    expect(pf.idle).toBe(0);
    await pf.close();
  });

  it('a refused open is a BackendError without the key, its daemon killed', async () => {
    launcher.prepare = (q) => q.failOnce('blockdev-add', 'GenericError', `error connecting: key ${KEY}`);
    const pf = new RbdPreflight({ runDir, launch: launcher.launch });
    const err = (await pf.open(source).catch((e: unknown) => e)) as Error & { code?: string };
    expect(err.code).toBe('BACKEND_FAILED');
    expect(err.message).not.toContain(KEY);
    expect(launcher.daemons[0]?.ended).toBe('killed');
    await pf.close();
  });

  it('an idle daemon that died meanwhile is replaced by a fresh one', async () => {
    const pf = new RbdPreflight({ runDir, launch: launcher.launch });
    await pf.open(source);
    while (pf.idle === 0) await new Promise((r) => setTimeout(r, 1));
    (launcher.daemons[0]?.qemu as FakeQemu).dead = true;
    await pf.open(source);
    expect(launcher.daemons).toHaveLength(2);
    await pf.close();
  });

  it('an image that does not close cleanly takes its daemon with it', async () => {
    launcher.prepare = (q) => q.failOnce('blockdev-del', 'GenericError', 'busy');
    const pf = new RbdPreflight({ runDir, launch: launcher.launch });
    await pf.open(source);
    await pf.close();
    expect(launcher.daemons[0]?.ended).toBe('killed');
    expect(pf.idle).toBe(0);
  });

  it('sweep removes directories a killed vmplugd left', async () => {
    await mkdir(join(runDir, 'pf-abc123'));
    const pf = new RbdPreflight({ runDir, launch: launcher.launch });
    expect(await pf.sweep()).toBe(0);
    expect(await readdir(runDir)).toEqual(['ceph.conf']);
  });
});
