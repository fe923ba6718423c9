import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseNicId, parseSandboxId } from '../../core/ids.js';
import { IpHostNetwork, type NicView, parseNicSpec } from '../../net/index.js';
import { advance, NicJournal, newNicRecord } from '../../net/journal.js';
import { listVmplugNetdevs } from '../../net/qemu.js';
import { netdevAdd, QmpClient, qomList } from '../../qmp/index.js';
import { type DaemonProcess, startDaemonProcess, waitServing } from '../env/daemon.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../env/sandbox.js';

// NIC hot-plug through vmplugd's REST API (a real vmplugd process) into a real Kata-shaped
// sandbox: PUT/GET/DELETE, the sandbox view, refusals as problem+json naming the field, and a
// record left half-done by a crash, reconciled when vmplugd starts again.

const run = promisify(execFile);
const ip = (...args: string[]) => run('ip', args, { timeout: 10_000 });

async function linkExists(name: string): Promise<boolean> {
  return ip('link', 'show', 'dev', name).then(
    () => true,
    () => false,
  );
}

describe('NIC hot-plug through vmplugd', () => {
  const tag = randomBytes(3).toString('hex');
  const bridge = `vmpbr${tag}`;
  let root: TestRoot;
  let sandbox: KataSandbox;
  let daemonDir: string;
  let daemon: DaemonProcess;
  let inspector: QmpClient;
  const taps = new Set<string>();
  const nicPath = (nic: string) => `/v1/sandboxes/${sandbox.id}/nics/${nic}`;

  const guestHasMac = async (mac: string, want: boolean): Promise<void> => {
    const deadline = Date.now() + 60_000;
    for (;;) {
      const r = await sandbox.guest.run('cat /sys/class/net/*/address', { timeoutMs: 20_000 });
      if (r.stdout.includes(mac) === want) return;
      if (Date.now() > deadline)
        throw new Error(`guest: MAC ${mac} ${want ? 'never appeared' : 'never went'}`);
      await new Promise((res) => setTimeout(res, 50));
    }
  };

  const startDaemon = async (): Promise<DaemonProcess> => {
    const d = await startDaemonProcess({
      dir: daemonDir,
      monitorDir: root.monitorDir,
      kataVmRoot: root.kataVmRoot,
    });
    await waitServing(d, sandbox.id);
    return d;
  };

  beforeAll(async () => {
    await ip('link', 'add', 'name', bridge, 'type', 'bridge');
    await ip('link', 'set', 'dev', bridge, 'up');
    root = await createTestRoot();
    daemonDir = await mkdtemp(join(tmpdir(), 'vmpn-'));
    sandbox = await startKataSandbox(root, { inspectMonitor: true });
    inspector = await QmpClient.connect(sandbox.inspectQmpPath ?? '');
    daemon = await startDaemon();
  });

  afterAll(async () => {
    await daemon?.stop();
    await inspector?.close();
    await root?.cleanup();
    for (const t of taps) await ip('link', 'del', 'dev', t).catch(() => undefined);
    await ip('link', 'del', 'dev', bridge).catch(() => undefined);
    if (daemonDir) await rm(daemonDir, { recursive: true, force: true });
  });

  it('PUT attaches (201, then 200), GET and the sandbox view show it, refusals name the field', async () => {
    const put = await daemon.call<NicView>('PUT', nicPath('net1'), {
      hostInterface: { type: 'tap', bridge },
    });
    expect(put.status, JSON.stringify(put.body)).toBe(201);
    taps.add(put.body.tap);
    expect(put.body).toMatchObject({
      nicId: 'net1',
      state: 'Attached',
      tapOwned: true,
      spec: { hostInterface: { bridge } },
    });
    await guestHasMac(put.body.mac, true);

    const again = await daemon.call<NicView>('PUT', nicPath('net1'), {
      hostInterface: { type: 'tap', bridge },
    });
    expect(again.status).toBe(200);
    const conflict = await daemon.call<{ code: string }>('PUT', nicPath('net1'), {
      mac: '52:54:00:00:00:09',
      hostInterface: { type: 'tap', bridge },
    });
    expect(conflict.status).toBe(409);
    expect(conflict.body.code).toBe('SPEC_CONFLICT');
    expect(conflict.contentType).toContain('application/problem+json');

    const badMtu = await daemon.call<{ code: string; field: string }>('PUT', nicPath('net2'), {
      hostInterface: { type: 'tap', bridge },
      mtu: 10,
    });
    expect([badMtu.status, badMtu.body.code, badMtu.body.field]).toEqual([422, 'INVALID_FIELD', 'mtu']);
    const noBridge = await daemon.call<{ code: string; field: string }>('PUT', nicPath('net2'), {
      hostInterface: { type: 'tap', bridge: `vmpno${tag}` },
    });
    expect([noBridge.status, noBridge.body.field]).toEqual([422, 'hostInterface.bridge']);
    const badId = await daemon.call<{ code: string }>('PUT', nicPath('..x'), {
      hostInterface: { type: 'tap', bridge },
    });
    expect([badId.status, badId.body.code]).toEqual([400, 'INVALID_ID']);

    const get = await daemon.call<NicView>('GET', nicPath('net1'));
    expect(get.status).toBe(200);
    expect(get.body.mac).toBe(put.body.mac);
    const sb = await daemon.call<{ nics: NicView[] }>('GET', `/v1/sandboxes/${sandbox.id}`);
    expect(sb.body.nics.map((n) => n.nicId)).toEqual(['net1']);
    expect((await daemon.call('GET', nicPath('net2'))).status).toBe(404);
  });

  it('a record left half-done by a crash is rolled back when vmplugd starts again', async () => {
    await daemon.crash();
    // What a crash right after netdev_add leaves: record TapCreated, the tap on the bridge, the
    // netdev in QEMU (made here through the test-only inspect monitor).
    const journal = new NicJournal(daemon.stateDir);
    const sid = parseSandboxId(sandbox.id);
    const nid = parseNicId('net3');
    let rec = newNicRecord(sid, nid, parseNicSpec({ hostInterface: { type: 'tap', bridge } }, sid, nid));
    taps.add(rec.tap);
    await new IpHostNetwork().createTap(
      rec.tap,
      { alias: 'vmplug-nic by-test', bridge },
      { timeoutMs: 5_000, signal: AbortSignal.timeout(10_000) },
    );
    rec = advance(rec, 'TapCreated');
    await journal.save(rec);
    await netdevAdd(inspector, {
      type: 'tap',
      id: rec.names.netdev,
      ifname: rec.tap,
      script: 'no',
      downscript: 'no',
    });

    daemon = await startDaemon();
    // Ready means the start-up reconcile ran.
    expect((await daemon.call('GET', nicPath('net3'))).status).toBe(404);
    expect(await listVmplugNetdevs(inspector, { timeoutMs: 5_000 })).toEqual([
      (await daemon.call<NicView>('GET', nicPath('net1'))).body.netdevId,
    ]);
    expect(await linkExists(rec.tap)).toBe(false);
    // The attached NIC survived the crash and the restart.
    const net1 = await daemon.call<NicView>('GET', nicPath('net1'));
    expect(net1.body.state).toBe('Attached');
    await guestHasMac(net1.body.mac, true);
  });

  it('DELETE unplugs (204, again 204): guest, QEMU and host are clean', async () => {
    const net1 = (await daemon.call<NicView>('GET', nicPath('net1'))).body;
    const del = await daemon.call('DELETE', nicPath('net1'));
    expect(del.status).toBe(204);
    await guestHasMac(net1.mac, false);
    const devices = (await qomList(inspector, '/machine/peripheral')).map((p) => p.name);
    expect(devices.filter((d) => d.startsWith('vmpn'))).toEqual([]);
    expect(await listVmplugNetdevs(inspector, { timeoutMs: 5_000 })).toEqual([]);
    expect(await linkExists(net1.tap)).toBe(false);
    expect((await daemon.call('DELETE', nicPath('net1'))).status).toBe(204);
    const sb = await daemon.call<{ nics: NicView[] }>('GET', `/v1/sandboxes/${sandbox.id}`);
    expect(sb.body.nics).toEqual([]);
  });
});
