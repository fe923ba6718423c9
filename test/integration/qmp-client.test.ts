// The QMP client against a real QEMU 7.2 (q35, TCG, no guest). Each QEMU runs with -S (no
// vCPU time burnt) and native PCIe hotplug on its root port: with no guest OS to answer ACPI,
// only a powered-off native hotplug slot completes an unplug on its own, which is what lets
// device_del -> DEVICE_DELETED be exercised here. Hot-plug seen inside a guest is tested with
// the guest test bed.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  blockdevAdd,
  blockdevDel,
  blockResize,
  deviceAdd,
  deviceDelAndWait,
  deviceIs,
  netdevAdd,
  netdevDel,
  objectAdd,
  objectDel,
  type PciDeviceInfo,
  QmpBusyError,
  QmpClient,
  QmpCommandError,
  type QmpEvent,
  QmpSession,
  qomList,
  queryBlock,
  queryBlockstats,
  queryHotpluggableCpus,
  queryMemorySizeSummary,
  queryNamedBlockNodes,
  queryPci,
  queryStatus,
} from '../../qmp/index.js';

const QEMU = process.env.VMPLUG_QEMU ?? '/usr/bin/qemu-system-x86_64';

interface Qemu {
  proc: ChildProcess;
  exited: Promise<void>;
}

let dir: string;
let sock: string;
const running = new Set<Qemu>();

async function startQemu(): Promise<Qemu> {
  const proc = spawn(
    QEMU,
    [
      '-machine',
      'q35,accel=tcg',
      '-nodefaults',
      '-display',
      'none',
      '-S',
      '-m',
      '128',
      '-global',
      'ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off',
      '-device',
      'pcie-root-port,id=rp0,chassis=1',
      '-qmp',
      `unix:${sock},server=on,wait=off`,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  proc.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const q = { proc, exited };
  running.add(q);
  void exited.then(() => running.delete(q));
  const deadline = Date.now() + 10_000;
  while (!existsSync(sock)) {
    if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`QEMU did not start: ${stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return q;
}

async function kill(q: Qemu): Promise<void> {
  q.proc.kill('SIGKILL');
  await q.exited;
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmplug-qmp-it-'));
  sock = join(dir, 'qmp.sock');
});

afterAll(async () => {
  await Promise.all([...running].map(kill));
  rmSync(dir, { recursive: true, force: true });
});

describe('QmpClient on real QEMU 7.2', () => {
  let qemu: Qemu;
  let qmp: QmpClient;

  beforeAll(async () => {
    qemu = await startQemu();
    qmp = await QmpClient.connect(sock);
  });

  afterAll(async () => {
    qmp?.destroy();
    if (qemu) await kill(qemu);
  });

  it('greets, negotiates and answers query-status', async () => {
    expect(qmp.greeting.QMP.version.qemu).toMatchObject({ major: 7, minor: 2 });
    expect(await queryStatus(qmp)).toEqual({ status: 'prelaunch', singlestep: false, running: false });
  });

  it('reads the large query-qmp-schema reply', async () => {
    const started = performance.now();
    const schema = await qmp.execute<Array<{ name: string; 'meta-type': string }>>('query-qmp-schema');
    const ms = performance.now() - started;
    expect(schema.length).toBeGreaterThan(500);
    const names = new Set(schema.map((e) => e.name));
    for (const c of [
      'blockdev-add',
      'device_add',
      'device_del',
      'DEVICE_DELETED',
      'query-named-block-nodes',
    ]) {
      expect(names).toContain(c);
    }
    console.info(`query-qmp-schema: ${schema.length} entries in ${ms.toFixed(1)} ms`);
  });

  it('surfaces real CommandNotFound and GenericError', async () => {
    const nf = await qmp.execute('no-such-command').catch((e: unknown) => e);
    expect(nf).toBeInstanceOf(QmpCommandError);
    expect(nf).toMatchObject({
      command: 'no-such-command',
      errorClass: 'CommandNotFound',
      desc: 'The command no-such-command has not been found',
    });
    const ge = await objectDel(qmp, 'vmps-missing').catch((e: unknown) => e);
    expect(ge).toMatchObject({
      code: 'QMP_COMMAND_FAILED',
      command: 'object-del',
      errorClass: 'GenericError',
    });
  });

  it('runs many commands concurrently', async () => {
    const results = await Promise.all([
      ...Array.from({ length: 50 }, () => queryStatus(qmp)),
      queryMemorySizeSummary(qmp),
      queryHotpluggableCpus(qmp),
      qomList(qmp, '/machine/peripheral'),
    ]);
    expect(results.slice(0, 50).every((r) => (r as { status: string }).status === 'prelaunch')).toBe(true);
    expect(results[50]).toMatchObject({ 'base-memory': 128 * 1024 * 1024 });
    expect((results[51] as unknown[]).length).toBeGreaterThan(0);
    expect(results[52]).toEqual(expect.arrayContaining([{ name: 'rp0', type: 'child<pcie-root-port>' }]));
  });

  it('reports a second client as QMP_BUSY', async () => {
    const err = await QmpClient.connect(sock, { greetingTimeoutMs: 300 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpBusyError);
    expect(await queryStatus(qmp)).toMatchObject({ status: 'prelaunch' });
  });

  it('adds and deletes a secret object', async () => {
    await objectAdd(qmp, { 'qom-type': 'secret', id: 'vmps-it', data: 'c2VjcmV0', format: 'base64' });
    expect(await qomList(qmp, '/objects')).toEqual(
      expect.arrayContaining([{ name: 'vmps-it', type: 'child<secret>' }]),
    );
    const dup = await objectAdd(qmp, {
      'qom-type': 'secret',
      id: 'vmps-it',
      data: 'c2VjcmV0',
      format: 'base64',
    }).catch((e: unknown) => e);
    expect(dup).toMatchObject({ errorClass: 'GenericError' });
    expect(String(dup)).not.toContain('c2VjcmV0');
    await objectDel(qmp, 'vmps-it');
  });

  it('hot-adds a file-backed virtio-blk-pci on a root port and removes it with DEVICE_DELETED armed first', async () => {
    const img = join(dir, 'disk.img');
    writeFileSync(img, Buffer.alloc(4 * 1024 * 1024));
    await blockdevAdd(qmp, { driver: 'file', 'node-name': 'vmp-it', filename: img });
    await deviceAdd(qmp, {
      driver: 'virtio-blk-pci',
      id: 'vmpd-it',
      drive: 'vmp-it',
      bus: 'rp0',
      serial: 'vmplug-it',
    });

    const nodes = await queryNamedBlockNodes(qmp);
    expect(nodes.find((n) => n['node-name'] === 'vmp-it')).toMatchObject({
      drv: 'file',
      file: img,
      ro: false,
    });
    const blocks = await queryBlock(qmp);
    expect(blocks.find((b) => b.qdev?.includes('vmpd-it'))?.inserted?.['node-name']).toBe('vmp-it');
    const stats = await queryBlockstats(qmp, true);
    expect(stats.find((s) => s['node-name'] === 'vmp-it')?.stats.rd_bytes).toBe(0);
    expect(await qomList(qmp, '/machine/peripheral')).toEqual(
      expect.arrayContaining([{ name: 'vmpd-it', type: 'child<virtio-blk-pci>' }]),
    );
    // query-pci walks bridges by the bus numbers firmware programmed; with -S nothing ran, so
    // the root port's secondary bus is unnumbered and its devices are not listed (a booted
    // guest shows them). The port itself is.
    const pci = await queryPci(qmp);
    const flat = (devs: PciDeviceInfo[]): PciDeviceInfo[] =>
      devs.flatMap((d) => [d, ...flat(d.pci_bridge?.devices ?? [])]);
    const rp0 = flat(pci.flatMap((b) => b.devices)).find((d) => d.qdev_id === 'rp0');
    console.info(`rp0 in query-pci: ${JSON.stringify(rp0?.pci_bridge)}`);
    expect(rp0?.pci_bridge?.bus).toMatchObject({ number: expect.any(Number) });
    await blockResize(qmp, { 'node-name': 'vmp-it', size: 8 * 1024 * 1024 });
    expect(
      (await queryNamedBlockNodes(qmp)).find((n) => n['node-name'] === 'vmp-it')?.image['virtual-size'],
    ).toBe(8 * 1024 * 1024);

    const all: Array<QmpEvent<{ device?: string; path: string }>> = [];
    const off = qmp.subscribe('DEVICE_DELETED', (e) => all.push(e));
    const started = performance.now();
    const ev = await deviceDelAndWait(qmp, 'vmpd-it', { timeoutMs: 10_000 });
    const ms = performance.now() - started;
    off();
    expect(ev.data).toEqual({ device: 'vmpd-it', path: '/machine/peripheral/vmpd-it' });
    // The virtio backend goes first, without `device` (FACTS.md): acting on it would be early.
    expect(all[0]?.data).toEqual({ path: '/machine/peripheral/vmpd-it/virtio-backend' });
    await blockdevDel(qmp, 'vmp-it');
    expect((await queryNamedBlockNodes(qmp)).some((n) => n['node-name'] === 'vmp-it')).toBe(false);
    console.info(`device_del -> DEVICE_DELETED(device): ${ms.toFixed(1)} ms`);
  });

  it('adds and deletes a user netdev', async () => {
    await netdevAdd(qmp, { type: 'user', id: 'vmpn-it' });
    await netdevDel(qmp, 'vmpn-it');
    await expect(netdevDel(qmp, 'vmpn-it')).rejects.toBeInstanceOf(QmpCommandError);
  });

  it('measures the query-status round trip', async () => {
    const n = 1_000;
    const times: number[] = [];
    for (let i = 0; i < n; i++) {
      const t = performance.now();
      await queryStatus(qmp);
      times.push(performance.now() - t);
    }
    times.sort((a, b) => a - b);
    const median = times[Math.floor(n / 2)] ?? 0;
    console.info(
      `query-status round trip: median ${median.toFixed(3)} ms, p99 ${times[Math.floor(n * 0.99)]?.toFixed(3)} ms`,
    );
    expect(median).toBeLessThan(5);
  });
});

describe('QmpSession on real QEMU 7.2', () => {
  let session: QmpSession | undefined;
  afterEach(async () => {
    await session?.close();
    await Promise.all([...running].map(kill));
  });

  it('reconnects after QEMU is killed and restarted on the same socket path', async () => {
    const first = await startQemu();
    session = QmpSession.start(sock, { backoff: { initialMs: 50, maxMs: 500 } });
    await session.ready({ timeoutMs: 5_000 });
    expect(session.generation).toBe(1);
    const deleted = session.waitFor('DEVICE_DELETED', deviceIs('vmpd-s'), { timeoutMs: 30_000 });

    await kill(first);
    await new Promise((r) => setTimeout(r, 200));
    expect(session.state).toBe('connecting');
    const t0 = performance.now();
    await startQemu();
    expect(await session.execute('query-status', undefined, { timeoutMs: 10_000 })).toMatchObject({
      status: 'prelaunch',
    });
    console.info(`session ready again ${(performance.now() - t0).toFixed(0)} ms after QEMU restarted`);
    expect(session.generation).toBe(2);

    // Subscribers and waiters armed before the restart see the new QEMU's events.
    const img = join(dir, 'disk2.img');
    writeFileSync(img, Buffer.alloc(1024 * 1024));
    await blockdevAdd(session, { driver: 'file', 'node-name': 'vmp-s', filename: img });
    await deviceAdd(session, { driver: 'virtio-blk-pci', id: 'vmpd-s', drive: 'vmp-s', bus: 'rp0' });
    await session.execute('device_del', { id: 'vmpd-s' });
    expect((await deleted).data?.device).toBe('vmpd-s');
    await blockdevDel(session, 'vmp-s');
  });
});
