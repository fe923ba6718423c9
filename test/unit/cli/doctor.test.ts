import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { VmplugApiError, type VmplugClient } from '../../../cli/client.js';
import { doctorFailed, runDoctor } from '../../../cli/doctor.js';

describe('vmplug doctor', () => {
  let dir: string;
  let server: net.Server | undefined;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmp-doctor-'));
  });
  afterEach(async () => {
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
    server = undefined;
    await rm(dir, { recursive: true, force: true });
  });

  const readyClient = (checks: Record<string, { ok: boolean; detail?: string }>) =>
    ({
      ready: async () => checks,
      listSandboxes: async () => [
        { id: 'a', state: 'running' },
        { id: 'b', state: 'running' },
        { id: 'c', state: 'unreachable' },
      ],
    }) as unknown as VmplugClient;

  it('all good on a healthy node (missing /dev/kvm and ceph.conf only warn or pass)', async () => {
    const socketPath = join(dir, 's.sock');
    server = net.createServer();
    await new Promise<void>((r) => server!.listen(socketPath, r));
    await chmod(socketPath, 0o660);
    const qemu = join(dir, 'qemu');
    await writeFile(qemu, '#!/bin/sh\necho "QEMU emulator version 7.2.22"\n', { mode: 0o755 });
    await mkdir(join(dir, 'mods'));
    await writeFile(join(dir, 'mods', 'block-rbd.so'), '');
    const checks = await runDoctor({
      client: readyClient({ journal: { ok: true }, discovery: { ok: true, detail: '3 sandbox(es)' } }),
      socketPath,
      qemuPath: qemu,
      kvmPath: join(dir, 'no-kvm'),
      cephConf: join(dir, 'no-ceph.conf'),
      qemuModuleDirs: [join(dir, 'mods')],
    });
    const by = Object.fromEntries(checks.map((c) => [c.name, c]));
    expect(by.kvm).toMatchObject({ status: 'warn', detail: expect.stringContaining('TCG') });
    expect(by.qemu).toMatchObject({ status: 'ok', detail: expect.stringContaining('7.2.22') });
    expect(by['qemu rbd driver']).toMatchObject({ status: 'ok' });
    expect(by['ceph config']).toMatchObject({ status: 'ok' });
    expect(by.socket).toMatchObject({ status: 'ok', detail: expect.stringContaining('mode 0660') });
    expect(by.vmplugd).toMatchObject({ status: 'ok' });
    expect(by.discovery).toMatchObject({
      status: 'ok',
      detail: expect.stringContaining('3 sandbox(es) (2 running, 1 unreachable)'),
    });
    expect(by.kubernetes).toMatchObject({ status: 'skip' });
    expect(doctorFailed(checks)).toBe(false);
  });

  it('fails on a missing QEMU, a non-socket path and a daemon that is not ready', async () => {
    const notSocket = join(dir, 'plain');
    await writeFile(notSocket, '');
    const client = {
      ready: async () => {
        throw new VmplugApiError({
          status: 503,
          code: 'NOT_READY',
          detail: 'not ready: discovery: cannot read /x',
        });
      },
      listSandboxes: async () => [],
    } as unknown as VmplugClient;
    const checks = await runDoctor({
      client,
      socketPath: notSocket,
      qemuPath: join(dir, 'no-qemu'),
      qemuModuleDirs: [join(dir, 'none')],
    });
    const by = Object.fromEntries(checks.map((c) => [c.name, c]));
    expect(by.qemu?.status).toBe('fail');
    expect(by.socket).toMatchObject({ status: 'fail', detail: expect.stringContaining('not a socket') });
    expect(by.vmplugd).toMatchObject({ status: 'fail', detail: expect.stringContaining('cannot read /x') });
    expect(doctorFailed(checks)).toBe(true);
  });
});
