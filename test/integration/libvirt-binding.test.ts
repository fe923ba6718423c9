/**
 * vmplug's own libvirt addon against the host's real libvirtd and a test domain booting the test
 * guest: discovery, device attach/detach that the guest sees, secrets, live vCPU resize that the
 * guest uses, lifecycle and device-removed events without polling, and a connection cut by
 * libvirtd reported as such. Timings are printed, never asserted.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type LibvirtConnection as Conn,
  DomainModify,
  LibvirtConnection,
  LibvirtError,
  type LibvirtEvent,
  type LibvirtUuid,
  MemoryFlags,
  parseLibvirtUuid,
  VcpuFlags,
} from '../../libvirt/index.js';
import { ensureLibvirtd, startTestDomain, type TestDomain, virsh } from '../env/libvirt.js';

const run = promisify(execFile);
const log = (s: string): void => {
  process.stderr.write(`[libvirt-binding] ${s}\n`);
};

function diskXml(file: string, target: string, serial: string, alias: string): string {
  return `<disk type='file' device='disk'>
  <driver name='qemu' type='raw'/>
  <source file='${file}'/>
  <target dev='${target}' bus='scsi'/>
  <serial>${serial}</serial>
  <alias name='${alias}'/>
</disk>`;
}

async function rejection(p: Promise<unknown>): Promise<LibvirtError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof LibvirtError) return err;
    throw err;
  }
  throw new Error('expected a rejection');
}

/** libvirtd's ids of this process's client connections (virt-admin reads them from libvirtd). */
async function ourClientIds(): Promise<Set<string>> {
  const { stdout } = await run('virt-admin', ['srv-clients-list', 'libvirtd'], { timeout: 15_000 });
  const ids = new Set<string>();
  for (const id of stdout.split('\n').map((l) => l.trim().split(/\s+/)[0] ?? '')) {
    if (!/^\d+$/.test(id)) continue;
    const info = await run('virt-admin', ['client-info', 'libvirtd', id], { timeout: 15_000 }).catch(
      () => null,
    );
    if (info && new RegExp(`unix_process_id\\s*:\\s*${process.pid}\\b`).test(info.stdout)) ids.add(id);
  }
  return ids;
}

describe('libvirt binding (vmplug addon) with a real libvirtd', () => {
  let conn: Conn | undefined;
  let domain: TestDomain | undefined;
  let uuid: LibvirtUuid;
  const events: LibvirtEvent[] = [];

  beforeAll(async () => {
    const { uri } = await ensureLibvirtd();
    const t0 = performance.now();
    conn = await LibvirtConnection.connect(uri);
    log(`connect ${uri}: ${Math.round(performance.now() - t0)} ms`);
    conn.onEvent((e) => events.push(e));
    domain = await startTestDomain();
    uuid = parseLibvirtUuid(domain.uuid);
  });

  afterAll(async () => {
    await domain?.destroy();
    await conn?.close();
  });

  it('lists and looks up the running domain, and saw it start', async () => {
    const c = conn as Conn;
    const d = domain as TestDomain;
    const t0 = performance.now();
    const all = await c.listDomains();
    log(`listDomains (${all.length} domains): ${Math.round(performance.now() - t0)} ms`);
    const mine = all.find((x) => x.uuid === uuid);
    expect(mine).toMatchObject({ name: d.name, uuid, state: 'running' });
    expect(mine?.id).toBeGreaterThan(0);

    expect(await c.lookupByName(d.name)).toMatchObject({ uuid, state: 'running' });
    expect(await c.lookupByUUID(uuid)).toMatchObject({ name: d.name });
    expect(await c.getState(uuid)).toMatchObject({ state: 'running' });
    const info = await c.getInfo(uuid);
    expect(info).toMatchObject({
      state: 'running',
      vcpus: 1,
      memoryKiB: 256 * 1024,
      maxMemoryKiB: 256 * 1024,
    });
    expect(await c.getXMLDesc(uuid)).toContain(`<name>${d.name}</name>`);

    // The connection was subscribed before the domain was created.
    expect(
      events.some((e) => e.kind === 'lifecycle' && e.domain.uuid === uuid && e.event === 'started'),
    ).toBe(true);

    const missing = await rejection(c.lookupByName('vmplug-test-no-such-domain'));
    expect(missing.code).toBe('LIBVIRT_NO_DOMAIN');
    expect(missing.libvirtCode).toBe(42);
    expect(missing.operation).toBe('lookupByName');
  });

  it('attaches a file-backed scsi disk live (the guest sees it) and detaches it (DEVICE_REMOVED, the guest loses it)', async () => {
    const c = conn as Conn;
    const d = domain as TestDomain;
    const image = join(d.dir, 'binding-disk.raw');
    await writeFile(image, '', { mode: 0o600 });
    await truncate(image, 32 * 1024 * 1024);
    const alias = 'ua-vmplug-bindtest1';
    const xml = diskXml(image, 'sdb', 'vmplugbind1', alias);

    const before = new Set(d.guest.disks().map((x) => x.name));
    const t0 = performance.now();
    await c.attachDeviceFlags(uuid, xml, DomainModify.LIVE);
    const tReturned = performance.now();
    const disk = await d.guest.waitForDisk((x) => !before.has(x.name), { timeoutMs: 30_000 });
    expect(disk.serial).toBe('vmplugbind1');
    expect(disk.sizeBytes).toBe(32 * 1024 * 1024);
    expect(await c.getXMLDesc(uuid)).toContain(image);
    expect((await virsh(['domblklist', d.name])).stdout).toContain(image);

    const removed = c.waitForEvent(
      (e) => e.kind === 'deviceRemoved' && e.domain.uuid === uuid && e.alias === alias,
      { timeoutMs: 30_000 },
    );
    const t1 = performance.now();
    await c.detachDeviceFlags(uuid, xml, DomainModify.LIVE);
    const tDetachReturned = performance.now();
    const ev = await removed;
    const gone = await d.guest.waitForDiskGone(disk.name, { timeoutMs: 30_000 });
    expect(await c.getXMLDesc(uuid)).not.toContain(image);
    expect((await virsh(['domblklist', d.name])).stdout).not.toContain(image);
    log(
      `attachDeviceFlags returned ${Math.round(tReturned - t0)} ms, guest saw ${disk.name} ${Math.round(disk.seenAt - t0)} ms; ` +
        `detachDeviceFlags returned ${Math.round(tDetachReturned - t1)} ms, DEVICE_REMOVED ${Math.round(ev.receivedAt - t1)} ms, ` +
        `guest lost it ${Math.round(gone.at - t1)} ms`,
    );

    const again = await rejection(c.detachDeviceFlags(uuid, xml, DomainModify.LIVE));
    expect(again.code).toBe('LIBVIRT_DEVICE_MISSING');
  });

  it('defines a ceph secret, sets its value, finds and removes it; no value in any error', async () => {
    const c = conn as Conn;
    const usage = `vmplug-test-${randomBytes(4).toString('hex')}`;
    const secretXml = `<secret ephemeral='no' private='yes'>
  <description>vmplug binding test</description>
  <usage type='ceph'><name>${usage}</name></usage>
</secret>`;
    const key = randomBytes(16);
    const keyForms = [key.toString('base64'), key.toString('hex'), key.toString('latin1')];

    const s = await c.secretDefineXML(secretXml);
    try {
      expect(s).toMatchObject({ usageType: 'ceph', usageId: usage });
      expect(await c.secretLookupByUUID(s.uuid)).toEqual(s);
      expect(await c.secretLookupByUsage('ceph', usage)).toEqual(s);
      expect((await c.listSecrets()).map((x) => x.uuid)).toContain(s.uuid);

      const value = Buffer.from(key);
      await c.secretSetValue(s.uuid, value, { wipe: true });
      expect(value.every((b) => b === 0)).toBe(true);
      // A private secret's value cannot be read back through libvirt.
      await expect(virsh(['secret-get-value', s.uuid])).rejects.toThrow(/private/);
    } finally {
      await c.secretUndefine(s.uuid);
    }
    expect((await c.listSecrets()).map((x) => x.uuid)).not.toContain(s.uuid);
    const gone = await rejection(c.secretLookupByUUID(s.uuid));
    expect(gone.code).toBe('LIBVIRT_NO_SECRET');

    // Setting a value on a secret that is gone fails without echoing the value anywhere.
    const err = await rejection(c.secretSetValue(s.uuid, Buffer.from(key)));
    expect(err.code).toBe('LIBVIRT_NO_SECRET');
    const text = `${err.message} ${err.stack ?? ''} ${JSON.stringify(err)} ${String(err.cause ?? '')}`;
    for (const form of keyForms) expect(text).not.toContain(form);

    const bad = await rejection(c.secretDefineXML('<secret><usage type="ceph">'));
    expect(bad.code).toBe('LIBVIRT_XML');
  });

  it('hot-adds a vCPU live: libvirt reports 2 and the guest onlines and uses it', async () => {
    const c = conn as Conn;
    const d = domain as TestDomain;
    const t0 = performance.now();
    await c.setVcpusFlags(uuid, 2, VcpuFlags.LIVE);
    const tSet = performance.now();
    expect((await c.getInfo(uuid)).vcpus).toBe(2);
    // No udev in the guest: the new CPU appears offline and is onlined by hand, as a udev rule would.
    const r = await d.guest.run(
      'for i in $(seq 100); do [ -e /sys/devices/system/cpu/cpu1/online ] && break; sleep 0.1; done; ' +
        'echo 1 > /sys/devices/system/cpu/cpu1/online && grep -c ^processor /proc/cpuinfo',
      { timeoutMs: 90_000 },
    );
    expect(r.exitCode).toBe(0);
    expect(r.stdout.trim()).toBe('2');
    log(
      `setVcpusFlags(2, LIVE) returned ${Math.round(tSet - t0)} ms; guest online with 2 CPUs ${Math.round(performance.now() - t0)} ms`,
    );

    const over = await rejection(c.setVcpusFlags(uuid, 64, VcpuFlags.LIVE));
    expect(over.code).toBe('LIBVIRT_INVALID_ARG');
  });

  it('hot-adds memory as a DIMM device (the guest sees it); setMemoryFlags without a balloon is refused with a typed error', async () => {
    const c = conn as Conn;
    const d = domain as TestDomain;
    const memTotalKiB = async (): Promise<number> => {
      const r = await d.guest.run('grep ^MemTotal: /proc/meminfo', { timeoutMs: 30_000 });
      return Number(/(\d+)/.exec(r.stdout)?.[1]);
    };
    const before = await memTotalKiB();
    const t0 = performance.now();
    await c.attachDeviceFlags(
      uuid,
      `<memory model='dimm'><target><size unit='MiB'>128</size><node>0</node></target></memory>`,
      DomainModify.LIVE,
    );
    const tAttach = performance.now();
    expect((await c.getInfo(uuid)).memoryKiB).toBe((256 + 128) * 1024);
    // The guest boots with memhp_default_state=online: the DIMM's memory is usable once seen.
    let after = before;
    for (let i = 0; i < 100 && after - before < 128 * 1024 - 1024; i++) {
      await new Promise((r) => setTimeout(r, 100));
      after = await memTotalKiB();
    }
    expect(after - before).toBeGreaterThanOrEqual(128 * 1024 - 1024);
    log(
      `DIMM attachDeviceFlags returned ${Math.round(tAttach - t0)} ms; guest MemTotal +${Math.round((after - before) / 1024)} MiB ${Math.round(performance.now() - t0)} ms`,
    );

    // The test domain has no balloon: libvirt refuses a live balloon target, and says so.
    const balloon = await rejection(c.setMemoryFlags(uuid, 200 * 1024, MemoryFlags.LIVE));
    expect(['LIBVIRT_OPERATION_INVALID', 'LIBVIRT_UNSUPPORTED']).toContain(balloon.code);
  });

  it('delivers lifecycle events for suspend, resume and destroy without polling', async () => {
    const c = conn as Conn;
    const lifecycle = (event: string) =>
      c.waitForEvent((e) => e.kind === 'lifecycle' && e.domain.uuid === uuid && e.event === event, {
        timeoutMs: 30_000,
      });
    const timings: string[] = [];
    for (const [op, event] of [
      ['suspend', 'suspended'],
      ['resume', 'resumed'],
      ['destroy', 'stopped'],
    ] as const) {
      const seen = lifecycle(event);
      const t0 = performance.now();
      await c[op](uuid);
      const tCall = performance.now();
      const e = await seen;
      timings.push(
        `${op} returned ${Math.round(tCall - t0)} ms, ${event} event ${Math.round(e.receivedAt - t0)} ms`,
      );
      if (op === 'suspend') expect((await c.getState(uuid)).state).toBe('paused');
      if (op === 'resume') expect((await c.getState(uuid)).state).toBe('running');
    }
    log(timings.join('; '));
    // A transient domain is gone once destroyed.
    expect((await rejection(c.lookupByUUID(uuid))).code).toBe('LIBVIRT_NO_DOMAIN');
  });

  it('outlives Workers that exit with an open connection and calls in flight', async () => {
    // Node unloads an addon with the Worker that loaded it, while libvirt's event loop thread
    // (started once per process) and callbacks keep running its code: the addon pins itself.
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      const addon = require(workerData.path);
      addon.connect(workerData.uri, {}, () => {}).then((c) => {
        setInterval(() => c.listDomains().catch(() => {}), 2);
        parentPort.postMessage('connected');
      });`;
    const path = join(import.meta.dirname, '../../libvirt/native/build/Release/vmplug_libvirt.node');
    for (let i = 0; i < 3; i++) {
      const w = new Worker(code, { eval: true, workerData: { path, uri: (domain as TestDomain).uri } });
      await new Promise<void>((resolve, reject) => {
        w.once('message', () => resolve());
        w.once('error', reject);
      });
      await new Promise((r) => setTimeout(r, 50));
      await w.terminate();
    }
    await new Promise((r) => setTimeout(r, 200));
    expect(await (conn as Conn).isAlive()).toBe(true);
    expect(Array.isArray(await (conn as Conn).listSecrets())).toBe(true);
  });

  it('notices a libvirtd that stopped answering through keepalive, and fails the call in flight', async () => {
    // A relay between the binding and libvirtd's socket that can go silent: a hung libvirtd as
    // the client sees it, without touching the libvirtd other tests share.
    const dir = await mkdtemp(join(tmpdir(), 'vmplug-lvproxy-'));
    const relayPath = join(dir, 'libvirt-sock');
    const pairs: net.Socket[][] = [];
    const relay = net.createServer((client) => {
      const upstream = net.connect('/run/libvirt/libvirt-sock');
      client.pipe(upstream);
      upstream.pipe(client);
      client.on('error', () => upstream.destroy());
      upstream.on('error', () => client.destroy());
      pairs.push([client, upstream]);
    });
    await new Promise<void>((r) => relay.listen(relayPath, r));
    try {
      const c3 = await LibvirtConnection.connect(`qemu+unix:///system?socket=${relayPath}`, {
        keepAliveIntervalS: 1,
        keepAliveCount: 2,
      });
      try {
        expect(Array.isArray(await c3.listSecrets())).toBe(true);
        const closed = c3.waitForEvent((e) => e.kind === 'closed', { timeoutMs: 30_000 });
        for (const [client, upstream] of pairs) {
          client?.unpipe();
          upstream?.unpipe();
          client?.pause();
          upstream?.pause();
        }
        const t0 = performance.now();
        const inFlight = c3.listDomains({ timeoutMs: 60_000 }).catch((e: unknown) => e);
        const e = await closed;
        const err = await inFlight;
        log(`silent libvirtd (keepalive 1 s x 2) -> closed event ${Math.round(e.receivedAt - t0)} ms`);
        expect(e).toMatchObject({ kind: 'closed', reason: 'keepalive' });
        expect(err).toBeInstanceOf(LibvirtError);
        expect((err as LibvirtError).code).toBe('LIBVIRT_CONNECTION_LOST');
      } finally {
        await c3.close();
      }
    } finally {
      for (const s of pairs.flat()) s.destroy();
      await new Promise((r) => relay.close(r));
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('reports a connection that libvirtd closed, and refuses calls after close()', async () => {
    const before = await ourClientIds();
    const c2 = await LibvirtConnection.connect((domain as TestDomain).uri);
    try {
      const mine = [...(await ourClientIds())].filter((id) => !before.has(id));
      expect(mine).toHaveLength(1);
      const closed = c2.waitForEvent((e) => e.kind === 'closed', { timeoutMs: 30_000 });
      const t0 = performance.now();
      await run('virt-admin', ['client-disconnect', 'libvirtd', mine[0] as string], { timeout: 15_000 });
      const e = await closed;
      log(`libvirtd dropped the client -> closed event ${Math.round(e.receivedAt - t0)} ms`);
      expect(e).toMatchObject({ kind: 'closed', reason: 'eof' });
      expect(c2.lostReason).toBe('eof');
      expect(await c2.isAlive()).toBe(false);
      const lost = await rejection(c2.listDomains());
      expect(lost.code).toBe('LIBVIRT_CONNECTION_LOST');
      expect(lost.retryable).toBe(true);
    } finally {
      await c2.close();
    }
    const after = await rejection(c2.listDomains());
    expect(after.code).toBe('LIBVIRT_CLOSED');
    // The first connection was not affected.
    expect(await (conn as Conn).isAlive()).toBe(true);
  });
});
