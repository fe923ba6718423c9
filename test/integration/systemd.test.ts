import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { link, lstat, mkdir, mkdtemp, rm, unlink } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiCall, type DaemonProcess, startDaemonProcess } from '../env/daemon.js';
import { type NotifyReceiver, startNotifyReceiver } from '../env/notify.js';

// vmplugd under systemd's two protocols, spoken to directly (there is no systemd as PID 1 here):
// sd_notify, with a datagram socket standing in for the manager's, and socket activation, with the
// test passing a listening socket as fd 3 the way systemd does.

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
  let child: ChildProcess | undefined;
  let parentServer: Server | undefined;

  afterAll(async () => {
    if (child !== undefined && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await once(child, 'exit');
    }
    parentServer?.close();
  });

  it('serves on the socket passed as fd 3 and leaves it in place at shutdown', async () => {
    const home = join(dir, 'activated');
    await mkdir(join(home, 'state'), { recursive: true });
    const systemdSocket = join(home, 'systemd.sock');
    const ownSocket = join(home, 'own.sock');

    // Bound like systemd would, under a temporary name linked to the real one: the test process
    // closes its copy after the spawn (so it never accepts a connection meant for the daemon), and
    // Node unlinks a unix socket's bound path on close.
    const temp = join(home, 'bind.sock');
    const server = createServer();
    parentServer = server;
    await new Promise<void>((resolve) => server.listen(temp, resolve));
    await link(temp, systemdSocket);
    const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;

    // systemd sets LISTEN_PID in the child after fork; spawn cannot know the pid beforehand, so a
    // two-line sh does the same: export its own pid, then exec node (which keeps that pid).
    const lines: string[] = [];
    child = spawn(
      '/bin/sh',
      [
        '-c',
        'LISTEN_PID=$$; export LISTEN_PID; exec "$@"',
        'sh',
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
      ],
      {
        env: { ...process.env, LISTEN_FDS: '1', LISTEN_FDNAMES: 'vmplugd.socket' },
        stdio: ['ignore', 'pipe', 'pipe', fd],
      },
    );
    const c = child;
    for (const stream of [c.stdout, c.stderr]) {
      stream?.setEncoding('utf8');
      stream?.on('data', (chunk: string) => lines.push(...chunk.split('\n').filter((l) => l !== '')));
    }
    parentServer = undefined;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    expect(existsSync(temp)).toBe(false);
    expect((await lstat(systemdSocket)).isSocket()).toBe(true);

    // A request sent before the daemon listens waits in the socket's backlog, as with systemd.
    const health = await apiCall<{ status: string }>(systemdSocket, 'GET', '/healthz', undefined, 60_000);
    expect(health.status).toBe(200);
    expect(lines.some((l) => l.includes('listening on the socket passed by systemd'))).toBe(true);
    expect(existsSync(ownSocket)).toBe(false);

    const exited = once(c, 'exit') as Promise<[number | null, NodeJS.Signals | null]>;
    c.kill('SIGTERM');
    const [code] = await exited;
    expect(code).toBe(0);
    // systemd's socket stays: the next start (or the socket unit's stop) deals with it.
    expect((await lstat(systemdSocket)).isSocket()).toBe(true);
    expect(existsSync(ownSocket)).toBe(false);
    await unlink(systemdSocket);
  });
});
