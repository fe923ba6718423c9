import { existsSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiCall, type DaemonProcess, startDaemonProcess } from '../env/daemon.js';
import { type NotifyReceiver, startNotifyReceiver } from '../env/notify.js';
import { type SocketActivator, startSocketActivator } from '../env/socket-activator.js';

// vmplugd under systemd's two protocols, spoken to directly (there is no systemd as PID 1 here):
// sd_notify, with a datagram socket standing in for the manager's, and socket activation, with a
// small activator holding the listening socket and starting vmplugd with it on fd 3 as systemd does.

const VMPLUGD = fileURLToPath(new URL('../../bin/vmplugd.js', import.meta.url));

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmplug-sd-'));
  await mkdir(join(dir, 'monitors'));
  await mkdir(join(dir, 'vc'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('sd_notify', () => {
  let receiver: NotifyReceiver | undefined;
  let daemon: DaemonProcess | undefined;

  afterAll(async () => {
    await daemon?.crash();
    await receiver?.close();
  });

  it('sends READY=1 once ready, WATCHDOG=1 every WATCHDOG_USEC/2 and STOPPING=1 on SIGTERM, all from its own pid', async () => {
    receiver = await startNotifyReceiver(join(dir, 'notify'));
    const home = join(dir, 'notified');
    await mkdir(home);
    daemon = await startDaemonProcess({
      dir: home,
      monitorDir: join(dir, 'monitors'),
      kataVmRoot: join(dir, 'vc'),
      env: { NOTIFY_SOCKET: receiver.socketPath, WATCHDOG_USEC: '2000000' },
    });
    const d = daemon;

    const ready = await receiver.waitFor('READY=1');
    // Readiness is what READY=1 promises: the start-up reconcile has run when it is sent.
    const readyz = await d.call<{ status: string }>('GET', '/readyz');
    expect(readyz.status).toBe(200);
    expect(readyz.body.status).toBe('ready');
    expect(ready.assignments).toContain(`STATUS=serving on ${d.socketPath}`);
    const readyAt = receiver.received.indexOf(ready);
    expect(
      receiver.received
        .slice(0, readyAt)
        .some((n) => n.assignments.includes('STATUS=start-up reconcile running')),
    ).toBe(true);
    expect(d.lines.some((l) => l.includes('"msg":"start-up reconcile done"'))).toBe(true);

    // WATCHDOG=1 keeps coming after READY=1 (every second with WATCHDOG_USEC=2 s).
    for (let i = 1; i <= 3; i++) {
      const from = receiver.received.length;
      await receiver.waitFor('WATCHDOG=1', { from, timeoutMs: 30_000 });
    }

    const beforeStop = receiver.received.length;
    expect(await d.stop()).toBe(0);
    const stopping = await receiver.waitFor('STOPPING=1', { from: beforeStop, timeoutMs: 10_000 });
    expect(stopping.assignments[0]).toBe('STOPPING=1');
    // What NotifyAccess=main checks: every message carries vmplugd's own pid, none the helper's.
    expect(receiver.received.length).toBeGreaterThanOrEqual(6);
    expect(new Set(receiver.received.map((n) => n.pid))).toEqual(new Set([d.pid]));
    // --no-block: no BARRIER=1 round trip (it would come from systemd-notify's own pid).
    expect(receiver.received.some((n) => n.assignments.includes('BARRIER=1'))).toBe(false);
  });

  it('sends nothing and runs as before without NOTIFY_SOCKET', async () => {
    const home = join(dir, 'plain');
    await mkdir(home);
    const before = receiver?.received.length;
    const plain = await startDaemonProcess({
      dir: home,
      monitorDir: join(dir, 'monitors'),
      kataVmRoot: join(dir, 'vc'),
      env: { NOTIFY_SOCKET: '', WATCHDOG_USEC: '2000000' },
    });
    try {
      expect((await plain.call('GET', '/healthz')).status).toBe(200);
      expect(plain.lines.some((l) => l.includes('systemd watchdog enabled'))).toBe(false);
    } finally {
      expect(await plain.stop()).toBe(0);
    }
    expect(receiver?.received.length).toBe(before);
  });
});

describe('socket activation', () => {
  let activator: SocketActivator | undefined;

  afterAll(async () => {
    await activator?.close();
  });

  it('serves on the socket passed as fd 3, never unlinks it, and a request made across a restart is answered', async () => {
    const home = join(dir, 'activated');
    await mkdir(join(home, 'state'), { recursive: true });
    const systemdSocket = join(home, 'systemd.sock');
    const ownSocket = join(home, 'own.sock');
    const log = join(home, 'vmplugd.log');
    activator = await startSocketActivator(systemdSocket, log, [
      process.execPath,
      VMPLUGD,
      '--socket',
      ownSocket,
      '--state-dir',
      join(home, 'state'),
      '--monitor-dir',
      join(dir, 'monitors'),
      '--kata-vm-root',
      join(dir, 'vc'),
      '--libvirt-uri',
      '',
    ]);
    const a = activator;

    // The socket listens before vmplugd runs: this request waits in the backlog until it serves.
    const first = apiCall<{ status: string }>(systemdSocket, 'GET', '/healthz', undefined, 60_000);
    const pid1 = await a.start();
    expect((await first).status).toBe(200);
    expect(await readFile(log, 'utf8')).toContain('listening on the socket passed by systemd');
    expect(existsSync(ownSocket)).toBe(false);

    process.kill(pid1, 'SIGTERM');
    expect(await a.exited(pid1)).toEqual({ code: 0, signal: null });
    // systemd's socket is left in place and keeps listening (the activator holds it).
    expect((await lstat(systemdSocket)).isSocket()).toBe(true);

    // Made while no vmplugd runs, answered by the next one.
    const acrossRestart = apiCall<{ status: string }>(systemdSocket, 'GET', '/healthz', undefined, 60_000);
    const pid2 = await a.start();
    expect(pid2).not.toBe(pid1);
    expect((await acrossRestart).status).toBe(200);

    process.kill(pid2, 'SIGTERM');
    expect(await a.exited(pid2)).toEqual({ code: 0, signal: null });
    expect((await lstat(systemdSocket)).isSocket()).toBe(true);
    expect(existsSync(ownSocket)).toBe(false);
  });
});
