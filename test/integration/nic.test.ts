import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseNicId, parseSandboxId, parseVolumeId } from '../../core/ids.js';
import {
  IpHostNetwork,
  type NicContext,
  NicEngine,
  type NicLogger,
  type NicSandboxDirectory,
  type NicSandboxPresence,
  nicNames,
  parseNicSpec,
} from '../../net/index.js';
import { advance, newNicRecord } from '../../net/journal.js';
import { listVmplugNetdevs } from '../../net/qemu.js';
import { netdevAdd, QmpSession, qomList } from '../../qmp/index.js';
import { AttachEngine } from '../../storage/engine.js';
import { Journal, loadFingerprintKey } from '../../storage/journal.js';
import type { SandboxPresence } from '../../storage/sandbox-directory.js';
import { parseAttachRequest } from '../../storage/volume-spec.js';
import { createLoopDevice, type LoopDevice, testBedHostDeviceCheck } from '../env/loop.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../env/sandbox.js';

// NIC hot-plug on a real Kata-shaped sandbox (QEMU 7.2 through bin/vmplug-qemu, TCG guest with
// virtio_net and busybox): a host bridge with an address, a NIC attached through the engine with
// vmplug's own tap on that bridge, the guest sees the MAC, gets an address and pings the bridge
// through tap and bridge; detach takes the interface, QEMU's netdev/device and the tap away.

const run = promisify(execFile);
const ip = (...args: string[]) => run('ip', args, { timeout: 10_000 });

const logLines: string[] = [];
function makeLog(bindings: Record<string, unknown> = {}): NicLogger {
  const push = (level: string) => (o: Record<string, unknown>, m?: string) =>
    logLines.push(JSON.stringify({ level, ...bindings, ...o, msg: m }));
  return {
    debug: push('debug'),
    info: push('info'),
    warn: push('warn'),
    error: push('error'),
    child: (more) => makeLog({ ...bindings, ...more }),
  };
}

async function linkExists(name: string): Promise<boolean> {
  try {
    await ip('link', 'show', 'dev', name);
    return true;
  } catch {
    return false;
  }
}

describe('NIC hot-plug on a real sandbox', () => {
  const tag = randomBytes(3).toString('hex');
  const bridge = `vmpbr${tag}`;
  const userTap = `vmpx${tag}`;
  // A /30 out of 169.254/16 (link-local: never routed, cannot clash with the node's networks).
  const third = 1 + (Number.parseInt(tag.slice(0, 2), 16) % 250);
  const hostIp = `169.254.${third}.1`;
  const guestIp = `169.254.${third}.2`;
  let root: TestRoot;
  let sandbox: KataSandbox;
  let qmp: QmpSession;
  let stateDir: string;
  let engine: NicEngine;
  let directory: NicSandboxDirectory;
  const sandboxId = () => parseSandboxId(sandbox.id);
  const log = makeLog();
  const ctx = (): NicContext => ({ signal: AbortSignal.timeout(60_000), log });
  const tapsToClean = new Set<string>([userTap]);

  const guestMacs = async (): Promise<string[]> => {
    const r = await sandbox.guest.run('cat /sys/class/net/*/address', { timeoutMs: 20_000 });
    return r.stdout
      .split('\n')
      .map((s) => s.trim())
      .filter(Boolean);
  };
  const waitGuest = async (pred: (macs: string[]) => boolean, what: string): Promise<number> => {
    const started = performance.now();
    const deadline = started + 60_000;
    while (performance.now() < deadline) {
      if (pred(await guestMacs())) return performance.now() - started;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(`guest: ${what} not seen within 60 s`);
  };
  const vmplugDevices = async (): Promise<string[]> =>
    (await qomList(qmp, '/machine/peripheral')).map((p) => p.name).filter((n) => n.startsWith('vmpn'));

  beforeAll(async () => {
    await ip('link', 'add', 'name', bridge, 'type', 'bridge');
    await ip('addr', 'add', `${hostIp}/30`, 'dev', bridge);
    await ip('link', 'set', 'dev', bridge, 'up');
    root = await createTestRoot();
    stateDir = await mkdtemp(join(tmpdir(), 'vmplug-nic-it-'));
    sandbox = await startKataSandbox(root);
    qmp = QmpSession.start(sandbox.vmplugQmpPath);
    await qmp.ready({ timeoutMs: 20_000 });
    const present: NicSandboxPresence = { state: 'present', sandbox: { qmp } };
    directory = {
      lookup: (id) => (id === sandbox.id ? present : { state: 'gone' }),
      known: () => [sandbox.id],
    };
    engine = new NicEngine({ stateDir, sandboxes: directory, logger: log, detachTimeoutMs: 30_000 });
  });

  afterAll(async () => {
    await engine?.close();
    qmp?.close();
    await root?.cleanup();
    // Taps and the bridge go even when a test failed midway.
    for (const t of tapsToClean) await ip('link', 'del', 'dev', t).catch(() => undefined);
    await ip('link', 'del', 'dev', bridge).catch(() => undefined);
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
  });

  it('attaches a NIC on a bridge: the guest sees it, pings the bridge, and detach removes it all', async () => {
    const nicId = parseNicId('eth-a');
    const spec = parseNicSpec({ hostInterface: { type: 'tap', bridge } }, sandboxId(), nicId);
    const names = nicNames(sandboxId(), nicId);
    tapsToClean.add(names.tap);
    const before = await guestMacs();
    const t0 = performance.now();
    const res = await engine.attach(sandboxId(), nicId, spec, ctx());
    const attachMs = performance.now() - t0;
    expect(res.created).toBe(true);
    expect(res.nic.state).toBe('Attached');
    expect(res.nic.mac).toBe(spec.mac);
    expect(res.nic.port).toMatch(/^vmplug-rp\d+$/);
    expect(res.nic.tap).toBe(names.tap);
    const seenMs = await waitGuest((m) => m.includes(spec.mac), `MAC ${spec.mac}`);
    expect(before).not.toContain(spec.mac);

    // The tap is vmplug's, on the bridge, up, with carrier (QEMU holds it).
    const tap = await new IpHostNetwork().link(names.tap, {
      timeoutMs: 5_000,
      signal: AbortSignal.timeout(5_000),
    });
    expect(tap?.master).toBe(bridge);
    expect(tap?.lowerUp).toBe(true);
    expect(tap?.alias).toBe(engine.tapAlias);

    // Guest side: find the interface by MAC, address it, ping the bridge's address.
    const cfg = await sandbox.guest.run(
      `for d in /sys/class/net/*; do if [ "$(cat $d/address)" = "${spec.mac}" ]; then i=$(basename $d); fi; done; ` +
        `ip addr add ${guestIp}/30 dev $i && ip link set dev $i up && echo $i`,
      { timeoutMs: 20_000 },
    );
    expect(cfg.exitCode).toBe(0);
    const ifname = cfg.stdout.trim();
    const ping = await sandbox.guest.run(`ping -c 3 -W 5 ${hostIp}`, { timeoutMs: 60_000 });
    expect(ping.exitCode, ping.stdout + ping.stderr).toBe(0);
    const rtts = [...ping.stdout.matchAll(/time=([0-9.]+) ms/g)].map((m) => Number(m[1]));
    expect(rtts.length).toBeGreaterThan(0);
    console.log(
      `nic: attach ${attachMs.toFixed(0)} ms, attach->guest sees MAC ${seenMs.toFixed(0)} ms (after reply), ` +
        `guest ${ifname}, ping RTT ${rtts.join('/')} ms`,
    );

    // Idempotent: the same spec answers the existing NIC; another spec is a conflict.
    const again = await engine.attach(sandboxId(), nicId, spec, ctx());
    expect(again.created).toBe(false);
    const other = parseNicSpec(
      { mac: '52:54:00:aa:bb:cc', hostInterface: { type: 'tap', bridge } },
      sandboxId(),
      nicId,
    );
    await expect(engine.attach(sandboxId(), nicId, other, ctx())).rejects.toMatchObject({
      code: 'SPEC_CONFLICT',
    });
    expect((await engine.list(sandboxId())).map((n) => n.nicId)).toEqual(['eth-a']);

    const d0 = performance.now();
    await engine.detach(sandboxId(), nicId, ctx());
    const detachMs = performance.now() - d0;
    const goneMs = await waitGuest((m) => !m.includes(spec.mac), `MAC ${spec.mac} gone`);
    console.log(`nic: detach ${detachMs.toFixed(0)} ms, then guest lost it within ${goneMs.toFixed(0)} ms`);
    expect(await vmplugDevices()).toEqual([]);
    expect(await listVmplugNetdevs(qmp, { timeoutMs: 5_000 })).toEqual([]);
    expect(await linkExists(names.tap)).toBe(false);
    expect(await linkExists(bridge)).toBe(true);
    // Detach again: nothing to do, no error.
    await engine.detach(sandboxId(), nicId, ctx());
    await expect(engine.get(sandboxId(), nicId)).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('uses an existing tap as it is and leaves it on detach; refuses a missing bridge', async () => {
    await ip('tuntap', 'add', 'dev', userTap, 'mode', 'tap');
    await ip('link', 'set', 'dev', userTap, 'up');
    const nicId = parseNicId('eth-user');
    const spec = parseNicSpec(
      { mac: '52:54:00:12:34:57', hostInterface: { type: 'tap', name: userTap }, mtu: 1400 },
      sandboxId(),
      nicId,
    );
    const res = await engine.attach(sandboxId(), nicId, spec, ctx());
    expect(res.nic.tapOwned).toBe(false);
    await waitGuest((m) => m.includes('52:54:00:12:34:57'), 'MAC of the user tap NIC');
    const mtu = await sandbox.guest.run(
      `for d in /sys/class/net/*; do [ "$(cat $d/address)" = "52:54:00:12:34:57" ] && cat $d/mtu; done; true`,
    );
    expect(mtu.stdout.trim()).toBe('1400');
    await engine.detach(sandboxId(), nicId, ctx());
    expect(await linkExists(userTap)).toBe(true);
    await ip('link', 'del', 'dev', userTap);

    const missing = parseNicSpec(
      { hostInterface: { type: 'tap', bridge: `vmpno${tag}` } },
      sandboxId(),
      parseNicId('x'),
    );
    await expect(engine.attach(sandboxId(), parseNicId('x'), missing, ctx())).rejects.toMatchObject({
      code: 'INVALID_FIELD',
      field: 'hostInterface.bridge',
    });
    expect(await engine.list(sandboxId())).toEqual([]);
  });

  it('reconcile rolls back a half-done attach, removes strays, and drops gone sandboxes', async () => {
    const host = new IpHostNetwork();
    const io = { timeoutMs: 5_000, signal: AbortSignal.timeout(30_000) };
    // 1. A crash right after netdev_add, before the journal said so: record TapCreated, the tap
    //    and the netdev exist.
    const halfId = parseNicId('eth-half');
    const halfSpec = parseNicSpec({ hostInterface: { type: 'tap', bridge } }, sandboxId(), halfId);
    let half = newNicRecord(sandboxId(), halfId, halfSpec);
    tapsToClean.add(half.tap);
    await engine.journal.save(half);
    await host.createTap(half.tap, { alias: engine.tapAlias, bridge }, io);
    half = advance(half, 'TapCreated');
    await engine.journal.save(half);
    await netdevAdd(qmp, {
      type: 'tap',
      id: half.names.netdev,
      ifname: half.tap,
      script: 'no',
      downscript: 'no',
    });

    // 2. A stray: a vmplug-named netdev and tap no record explains (crash before the first write
    //    is impossible by design, so this stands for a record lost with a wiped state dir).
    const strayNames = nicNames(sandboxId(), parseNicId('eth-stray'));
    tapsToClean.add(strayNames.tap);
    await host.createTap(strayNames.tap, { alias: engine.tapAlias }, io);
    await netdevAdd(qmp, {
      type: 'tap',
      id: strayNames.netdev,
      ifname: strayNames.tap,
      script: 'no',
      downscript: 'no',
    });

    // 3. A record of a sandbox that is gone, with its tap still on the host.
    const goneSandbox = parseSandboxId(`gone-${tag}`);
    const goneRec = newNicRecord(
      goneSandbox,
      parseNicId('eth0'),
      parseNicSpec({ hostInterface: { type: 'tap', bridge } }, goneSandbox, parseNicId('eth0')),
    );
    tapsToClean.add(goneRec.tap);
    await engine.journal.save(advance(advance(goneRec, 'TapCreated'), 'NetdevAdded'));
    await host.createTap(goneRec.tap, { alias: engine.tapAlias, bridge }, io);

    const first = await engine.reconcile({ log });
    // The stray netdev's tap is released by netdev_del; its carrier drops, so a second round
    // (the daemon runs them periodically) may be the one that deletes the tap.
    const second = await engine.reconcile({ log });
    const actions = [...first.repairs, ...second.repairs].map((r) => `${r.action} ${r.name}`);
    expect(actions).toContain('rolled-back-attach eth-half');
    expect(actions).toContain(`deleted-stray-netdev ${strayNames.netdev}`);
    expect(actions).toContain('dropped-gone-sandbox-nic eth0');
    expect(actions).toContain(`deleted-stray-tap ${strayNames.tap}`);
    expect(await listVmplugNetdevs(qmp, { timeoutMs: 5_000 })).toEqual([]);
    for (const t of [half.tap, strayNames.tap, goneRec.tap]) expect(await linkExists(t), t).toBe(false);
    expect(await engine.journal.sandboxes()).toEqual([]);
    // A third round finds nothing to do.
    expect((await engine.reconcile({ log })).repairs).toEqual([]);
  });

  it('NICs and virtio-blk disks share the vmplug root ports: each engine takes a free one', async () => {
    let loop: LoopDevice | undefined;
    const storageDir = await mkdtemp(join(tmpdir(), 'vmplug-nic-st-'));
    const sid = parseSandboxId(sandbox.id);
    const present: SandboxPresence = { state: 'present', sandbox: { id: sid, kind: 'kata', qmp } };
    const storage = new AttachEngine({
      journal: new Journal({ stateDir: storageDir, logger: log as never }),
      sandboxes: { lookup: (id) => (id === sid ? present : { state: 'gone' }), known: () => [sid] },
      fingerprintKey: await loadFingerprintKey(storageDir),
      stateDir: storageDir,
      logger: log as never,
      checkHostDevice: testBedHostDeviceCheck,
    });
    const nicA = parseNicId('eth-port-a');
    const nicB = parseNicId('eth-port-b');
    try {
      const a = await engine.attach(
        sandboxId(),
        nicA,
        parseNicSpec({ hostInterface: { type: 'tap', bridge } }, sandboxId(), nicA),
        ctx(),
      );
      tapsToClean.add(a.nic.tap);
      // storage/lanes.ts counts every device on a port as using it, the NIC included (a disk on a
      // root port is always placed from a fresh listing): the disk must land on another port.
      loop = await createLoopDevice(16 * 1024 * 1024);
      const vol = await storage.attach(
        sid,
        parseVolumeId('pvc-beside-nic'),
        parseAttachRequest({
          mode: 'block',
          source: { type: 'hostDevice', path: loop.path },
          bus: 'virtio-blk',
        }),
        { signal: AbortSignal.timeout(60_000), log: log as never },
      );
      expect(vol.attachment.bus).toBe('virtio-blk');
      // And a NIC after the disk skips the disk's port (query-pci shows it occupied).
      const b = await engine.attach(
        sandboxId(),
        nicB,
        parseNicSpec({ hostInterface: { type: 'tap', bridge } }, sandboxId(), nicB),
        ctx(),
      );
      tapsToClean.add(b.nic.tap);
      const ports = new Set([a.nic.port, b.nic.port]);
      expect(ports.size).toBe(2);
      await storage.detach(sid, parseVolumeId('pvc-beside-nic'), {
        signal: AbortSignal.timeout(60_000),
        log: log as never,
      });
    } finally {
      await engine.detach(sandboxId(), nicA, ctx()).catch(() => undefined);
      await engine.detach(sandboxId(), nicB, ctx()).catch(() => undefined);
      await storage.close();
      await loop?.detach();
      await rm(storageDir, { recursive: true, force: true });
    }
    expect(await vmplugDevices()).toEqual([]);
  });
});
