import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseNicId, parseSandboxId } from '../../../core/ids.js';
import {
  type NicContext,
  NicEngine,
  type NicLogger,
  type NicSandboxPresence,
  nicNames,
  parseNicSpec,
} from '../../../net/index.js';
import { advance, newNicRecord } from '../../../net/journal.js';
import { FakeQemu } from '../fakes/qemu.js';
import { FakeHost } from './fakes.js';

const quiet: NicLogger = { debug() {}, info() {}, warn() {}, error() {}, child: () => quiet };
const ctx = (): NicContext => ({ signal: AbortSignal.timeout(5_000), log: quiet });
const sb = parseSandboxId('sandbox-1');
const nic = parseNicId('net1');
const bridgeSpec = (extra: Record<string, unknown> = {}) =>
  parseNicSpec({ hostInterface: { type: 'tap', bridge: 'br0' }, ...extra }, sb, nic);

describe('NicEngine over a fake QEMU and host', () => {
  let dir: string;
  let qemu: FakeQemu;
  let host: FakeHost;
  let presence: NicSandboxPresence;
  let engine: NicEngine;
  const names = nicNames(sb, nic);

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmplug-nic-unit-'));
    qemu = new FakeQemu();
    host = new FakeHost();
    host.addBridge('br0');
    presence = { state: 'present', sandbox: { qmp: qemu } };
    engine = new NicEngine({
      stateDir: dir,
      sandboxes: { lookup: (id) => (id === sb ? presence : { state: 'gone' }), known: () => [sb] },
      logger: quiet,
      host,
      instance: 'test',
      detachTimeoutMs: 200,
      reconcileUnplugWaitMs: 50,
    });
  });

  afterEach(async () => {
    await engine.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('attaches: tap on the bridge, netdev, virtio-net-pci on the first free port; the same spec again is no change', async () => {
    const spec = bridgeSpec({ mtu: 9000 });
    const r = await engine.attach(sb, nic, spec, ctx());
    expect(r.created).toBe(true);
    expect(r.nic).toMatchObject({ state: 'Attached', port: 'vmplug-rp0', tap: names.tap, tapOwned: true });
    expect(host.calls).toEqual([`create ${names.tap} br0 9000`]);
    expect(host.links_.get(names.tap)?.alias).toBe(engine.tapAlias);
    const add = qemu.calls.find((c) => c.command === 'device_add')?.args;
    expect(add).toEqual({
      driver: 'virtio-net-pci',
      id: names.device,
      netdev: names.netdev,
      mac: spec.mac,
      bus: 'vmplug-rp0',
      addr: '0',
      host_mtu: 9000,
    });
    expect(qemu.calls.find((c) => c.command === 'netdev_add')?.args).toEqual({
      type: 'tap',
      id: names.netdev,
      ifname: names.tap,
      script: 'no',
      downscript: 'no',
      vhost: false,
    });
    expect(r.nic.timeline.map((t) => t.step)).toEqual(['Pending', 'TapCreated', 'NetdevAdded', 'Attached']);

    const n = qemu.calls.length;
    const again = await engine.attach(sb, nic, bridgeSpec({ mtu: 9000 }), ctx());
    expect(again.created).toBe(false);
    expect(qemu.calls.slice(n).map((c) => c.command)).toEqual(['qom-list']);
    await expect(engine.attach(sb, nic, bridgeSpec(), ctx())).rejects.toMatchObject({
      code: 'SPEC_CONFLICT',
      status: 409,
    });
  });

  it('skips a port a disk holds', async () => {
    qemu.devices.set('vmpd-0123456789abcdef', {
      id: 'vmpd-0123456789abcdef',
      type: 'virtio-blk-pci',
      bus: 'vmplug-rp0',
    });
    const r = await engine.attach(sb, nic, bridgeSpec(), ctx());
    expect(r.nic.port).toBe('vmplug-rp1');
  });

  it('a port refused although it looked free (a device hot-plugged behind vmplug) is a plain error, rolled back', async () => {
    // vmplug's own operations cannot race for it: they take the sandbox's one lock.
    qemu.raced.add('vmplug-rp0');
    await expect(engine.attach(sb, nic, bridgeSpec(), ctx())).rejects.toMatchObject({ status: 502 });
    expect(qemu.calls.filter((c) => c.command === 'device_add')).toHaveLength(1);
    expect(qemu.netdevs.size).toBe(0);
    expect(host.links_.has(names.tap)).toBe(false);
    expect(await engine.list(sb)).toEqual([]);
  });

  it('all ports busy: LANES_FULL, and the tap and netdev it made are rolled back', async () => {
    for (let n = 0; n < 4; n++)
      qemu.devices.set(`vmpd-${n}`, { id: `vmpd-${n}`, type: 'virtio-blk-pci', bus: `vmplug-rp${n}` });
    await expect(engine.attach(sb, nic, bridgeSpec(), ctx())).rejects.toMatchObject({ code: 'LANES_FULL' });
    expect(qemu.netdevs.size).toBe(0);
    expect(host.links_.has(names.tap)).toBe(false);
    expect(await engine.list(sb)).toEqual([]);
  });

  it('refuses a bridge the node lacks and an existing-tap spec naming no tap, creating nothing', async () => {
    const noBridge = parseNicSpec({ hostInterface: { type: 'tap', bridge: 'br9' } }, sb, nic);
    await expect(engine.attach(sb, nic, noBridge, ctx())).rejects.toMatchObject({
      code: 'INVALID_FIELD',
      field: 'hostInterface.bridge',
    });
    const noTap = parseNicSpec({ hostInterface: { type: 'tap', name: 'tap7' } }, sb, nic);
    await expect(engine.attach(sb, nic, noTap, ctx())).rejects.toMatchObject({ field: 'hostInterface.name' });
    expect(qemu.calls.filter((c) => c.command.endsWith('_add'))).toEqual([]);
    expect(host.calls).toEqual([]);
  });

  it('an existing tap is used as it is and survives the detach', async () => {
    host.addTap('tap0');
    const spec = parseNicSpec({ hostInterface: { type: 'tap', name: 'tap0' } }, sb, nic);
    const r = await engine.attach(sb, nic, spec, ctx());
    expect(r.nic).toMatchObject({ tap: 'tap0', tapOwned: false });
    await engine.detach(sb, nic, ctx());
    expect(host.links_.has('tap0')).toBe(true);
    expect(qemu.netdevs.size).toBe(0);
  });

  it('detach waits for the DEVICE_DELETED naming the device; a guest that holds on gets DETACH_PENDING, a retry finishes', async () => {
    await engine.attach(sb, nic, bridgeSpec(), ctx());
    qemu.opts.guestUnplug = 'never';
    await expect(engine.detach(sb, nic, ctx())).rejects.toMatchObject({
      code: 'DETACH_PENDING',
      retryable: true,
    });
    expect((await engine.get(sb, nic)).state).toBe('Detaching');
    expect(qemu.netdevs.has(names.netdev)).toBe(true);
    // The guest lets go later; the retry's device_del meets "already in the process of unplug".
    setTimeout(() => qemu.guestReleases(names.device), 20);
    await engine.detach(sb, nic, ctx());
    expect(qemu.devices.has(names.device)).toBe(false);
    expect(qemu.netdevs.size).toBe(0);
    expect(host.links_.has(names.tap)).toBe(false);
    await expect(engine.get(sb, nic)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await engine.detach(sb, nic, ctx()); // unknown: fine
  });

  it('a sandbox gone: detach drops the record and deletes the tap vmplug made', async () => {
    await engine.attach(sb, nic, bridgeSpec(), ctx());
    presence = { state: 'gone' };
    await engine.detach(sb, nic, ctx());
    expect(host.links_.has(names.tap)).toBe(false);
    expect(await engine.list(sb)).toEqual([]);
  });

  it('a half-done attach is resumed by the retried PUT (netdev already there)', async () => {
    let r = newNicRecord(sb, nic, bridgeSpec());
    await host.createTap(
      r.tap,
      { alias: engine.tapAlias, bridge: 'br0' },
      { timeoutMs: 1, signal: ctx().signal },
    );
    r = advance(r, 'TapCreated');
    await engine.journal.save(r);
    await qemu.execute('netdev_add', { type: 'tap', id: r.names.netdev, ifname: r.tap });
    const res = await engine.attach(sb, nic, bridgeSpec(), ctx());
    expect(res.nic.state).toBe('Attached');
    expect(qemu.devices.get(names.device)?.netdev).toBe(names.netdev);
  });

  it('reconcile: rolls back half-done, removes strays, leaves foreign taps and taps in use alone', async () => {
    let half = newNicRecord(sb, nic, bridgeSpec());
    await engine.journal.save(half);
    await host.createTap(
      half.tap,
      { alias: engine.tapAlias, bridge: 'br0' },
      { timeoutMs: 1, signal: ctx().signal },
    );
    half = advance(half, 'TapCreated');
    await engine.journal.save(half);
    const stray = nicNames(sb, parseNicId('lost'));
    await qemu.execute('netdev_add', { type: 'tap', id: stray.netdev, ifname: stray.tap });
    await qemu.execute('device_add', {
      driver: 'virtio-net-pci',
      id: stray.device,
      netdev: stray.netdev,
      bus: 'vmplug-rp3',
    });
    host.addTap(stray.tap, engine.tapAlias);
    host.addTap('vmpt00000000000', 'vmplug-nic another-daemon'); // another vmplugd's
    host.addTap('vmpt11111111111', engine.tapAlias, true); // held open by a process
    const s = await engine.reconcile();
    expect(s.repairs.map((r) => r.action).sort()).toEqual([
      'deleted-stray-device',
      'deleted-stray-netdev',
      'deleted-stray-tap',
      'rolled-back-attach',
    ]);
    expect([...host.links_.keys()].sort()).toEqual(['br0', 'vmpt00000000000', 'vmpt11111111111']);
    expect(qemu.netdevs.size).toBe(0);
    expect([...qemu.devices.keys()].filter((d) => d.startsWith('vmpn'))).toEqual([]);
    expect((await engine.reconcile()).repairs).toEqual([]);
  });
});
