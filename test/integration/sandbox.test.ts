import { access, readFile, readlink, stat, truncate, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GuestAgent } from '../env/guest.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../env/sandbox.js';

// A raw QMP exchange, on purpose independent of qmp/: this test checks the test bed itself.
async function qmp(path: string, commands: { execute: string; arguments?: unknown }[]): Promise<unknown[]> {
  const socket = net.createConnection({ path });
  try {
    const lines: string[] = [];
    let buf = '';
    let notify: (() => void) | undefined;
    socket.on('data', (c: Buffer) => {
      buf += c.toString('utf8');
      let nl = buf.indexOf('\n');
      while (nl !== -1) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        nl = buf.indexOf('\n');
        if (line && !line.includes('"event"')) lines.push(line);
      }
      notify?.();
    });
    const next = async (): Promise<Record<string, unknown>> => {
      const deadline = Date.now() + 5_000;
      while (lines.length === 0) {
        if (Date.now() > deadline) throw new Error(`no QMP message from ${path}`);
        await new Promise<void>((r) => {
          notify = r;
          setTimeout(r, 100);
        });
      }
      return JSON.parse(lines.shift() as string) as Record<string, unknown>;
    };
    expect(await next()).toHaveProperty('QMP');
    socket.write('{"execute":"qmp_capabilities"}\n');
    expect(await next()).toEqual({ return: {} });
    const out: unknown[] = [];
    for (const c of commands) {
      socket.write(`${JSON.stringify(c)}\n`);
      const reply = await next();
      expect(reply).toHaveProperty('return');
      out.push(reply.return);
    }
    return out;
  } finally {
    socket.destroy();
  }
}

/** Connects and reports whether anything (a greeting) arrives within `ms`. */
function greetingWithin(path: string, ms: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ path });
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(false);
    }, ms);
    socket.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    socket.once('data', () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(true);
    });
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

describe('Kata-shaped sandbox through bin/vmplug-qemu', () => {
  let root: TestRoot;
  let sandboxes: KataSandbox[] = [];

  beforeAll(async () => {
    root = await createTestRoot();
  });
  afterAll(async () => {
    await root?.cleanup();
  });

  it('boots two sandboxes at once, each with its private vmplug monitor and lanes', async () => {
    const pod = { uid: '8f2a3c4e-1111-4222-8333-944455556666', name: 'web-0', namespace: 'team-a' };
    const started = Date.now();
    sandboxes = await Promise.all([startKataSandbox(root, { pod }), startKataSandbox(root)]);
    const wall = Date.now() - started;
    console.log(
      `boot to READY: ${sandboxes.map((s) => `${s.id} ${Math.round(s.bootMs)} ms`).join(', ')}; both: ${wall} ms`,
    );
    const [a, b] = sandboxes as [KataSandbox, KataSandbox];
    expect(a.id).not.toBe(b.id);

    for (const s of sandboxes) {
      // The wrapper exec'd QEMU: the pid we spawned is QEMU itself.
      expect(alive(s.pid)).toBe(true);
      expect(await readlink(`/proc/${s.pid}/exe`)).toMatch(/qemu-system-x86_64$/);
      const cmdline = (await readFile(`/proc/${s.pid}/cmdline`, 'utf8')).split('\0');
      expect(cmdline).toContain(`sandbox-${s.id}`);
      expect(cmdline).toContain(`unix:${s.vmplugQmpPath},server=on,wait=off`);

      // Kata's monitor is held by the shim-like client: a second client gets no greeting.
      expect(await greetingWithin(s.kataQmpPath, 1_000)).toBe(false);

      // vmplug's private monitor answers, and the lanes are there next to Kata's own devices.
      expect((await stat(join(root.monitorDir, s.id))).mode & 0o777).toBe(0o750);
      const [status, peripherals] = (await qmp(s.vmplugQmpPath, [
        { execute: 'query-status' },
        { execute: 'qom-list', arguments: { path: '/machine/peripheral' } },
      ])) as [{ status: string }, { name: string; type: string }[]];
      expect(status.status).toBe('running');
      const devices = Object.fromEntries(peripherals.map((p) => [p.name, p.type]));
      expect(devices).toMatchObject({
        'vmplug-scsi0': 'child<virtio-scsi-pci>',
        'vmplug-rp0': 'child<pcie-root-port>',
        'vmplug-rp1': 'child<pcie-root-port>',
        'vmplug-rp2': 'child<pcie-root-port>',
        'vmplug-rp3': 'child<pcie-root-port>',
        scsi0: 'child<virtio-scsi-pci>',
        'pci-bridge-0': 'child<pci-bridge>',
      });

      // The guest runs commands.
      const r = await s.guest.run('uname -s; echo oops >&2; exit 7');
      expect(r).toMatchObject({ exitCode: 7, stdout: 'Linux\n', stderr: 'oops\n' });
      expect(s.guest.disks()).toEqual([]);
    }

    const persist = JSON.parse(await readFile(join(root.kataSbsRoot, a.id, 'persist.json'), 'utf8'));
    expect(persist.SandboxContainer).toBe(a.id);
    expect(persist.Config.ContainerConfigs[0].Annotations).toMatchObject({
      'io.kubernetes.cri.sandbox-uid': pod.uid,
      'io.kubernetes.cri.sandbox-name': pod.name,
      'io.kubernetes.cri.sandbox-namespace': pod.namespace,
    });
    expect(await exists(join(root.kataSbsRoot, b.id))).toBe(false);
  });

  it('a command that never ends blocks neither events nor other commands', async () => {
    const s = sandboxes[0] as KataSandbox;
    const slow = s.guest.run('sleep 30', { timeoutMs: 3_000 });
    const fast = await s.guest.run('head -c 100000 /dev/urandom | md5sum; printf "\\000\\001\\377" ', {
      timeoutMs: 10_000,
    });
    expect(fast.exitCode).toBe(0);
    expect(fast.stdoutBytes.subarray(-3)).toEqual(Buffer.from([0, 1, 255]));
    await expect(slow).rejects.toMatchObject({ code: 'GUEST_TIMEOUT' });
    const left = await s.guest.run('ps -o args | grep -c "^sleep 30" || true');
    expect(left.stdout.trim()).toBe('0');
    // A snapshot goes through the events port and comes back.
    expect(await s.guest.snapshot()).toEqual([]);
  });

  it('reports hot-plugged disks with size, read-only flag and serial on both buses', async () => {
    const s = sandboxes[1] as KataSandbox;
    const img = join(root.dir, 'disk-a.img');
    const img2 = join(root.dir, 'disk-b.img');
    await writeFile(img, Buffer.alloc(0));
    await truncate(img, 64 * 1024 * 1024);
    await writeFile(img2, Buffer.alloc(0));
    await truncate(img2, 32 * 1024 * 1024);
    await qmp(s.vmplugQmpPath, [
      { execute: 'blockdev-add', arguments: { driver: 'file', filename: img, 'node-name': 'ta' } },
      {
        execute: 'blockdev-add',
        arguments: { driver: 'file', filename: img2, 'node-name': 'tb', 'read-only': true },
      },
    ]);
    let sent = performance.now();
    await qmp(s.vmplugQmpPath, [
      {
        execute: 'device_add',
        arguments: {
          driver: 'scsi-hd',
          id: 'tda',
          drive: 'ta',
          bus: 'vmplug-scsi0.0',
          serial: 'scsi-serial-a',
        },
      },
    ]);
    const sd = await s.guest.waitForDisk((d) => d.serial === 'scsi-serial-a', { timeoutMs: 10_000 });
    const scsiMs = sd.seenAt - sent;
    expect(sd).toMatchObject({ sizeBytes: 64 * 1024 * 1024, readOnly: false });
    expect(sd.name).toMatch(/^sd[a-z]+$/);
    sent = performance.now();
    await qmp(s.vmplugQmpPath, [
      {
        execute: 'device_add',
        arguments: {
          driver: 'virtio-blk-pci',
          id: 'tdb',
          drive: 'tb',
          bus: 'vmplug-rp0',
          serial: 'vblk-serial-b',
        },
      },
    ]);
    const vd = await s.guest.waitForDisk((d) => d.serial === 'vblk-serial-b', { timeoutMs: 10_000 });
    const blkMs = vd.seenAt - sent;
    expect(vd).toMatchObject({ sizeBytes: 32 * 1024 * 1024, readOnly: true });
    expect(vd.name).toMatch(/^vd[a-z]+$/);

    // Data written in the guest lands in the host file.
    const w = await s.guest.run(
      `printf 'vmplug-pattern' | dd of=/dev/${sd.name} bs=512 seek=2048 conv=fsync 2>/dev/null; echo $?`,
    );
    expect(w.stdout.trim()).toBe('0');
    const fh = await readFile(img);
    expect(fh.subarray(2048 * 512, 2048 * 512 + 14).toString()).toBe('vmplug-pattern');

    // Online growth shows as DISK-SIZE.
    await truncate(img, 96 * 1024 * 1024);
    await qmp(s.vmplugQmpPath, [
      { execute: 'block_resize', arguments: { 'node-name': 'ta', size: 96 * 1024 * 1024 } },
    ]);
    await s.guest.waitForDisk((d) => d.name === sd.name && d.sizeBytes === 96 * 1024 * 1024, {
      timeoutMs: 10_000,
    });

    // A second agent (the first closed) catches up with a snapshot through the events port.
    await s.guest.close();
    const again = await GuestAgent.connect(s.guestEventsPath, s.guestCommandPath, { timeoutMs: 5_000 });
    try {
      await again.waitReady({ timeoutMs: 10_000, probeAfterMs: 0 });
      expect(
        again
          .disks()
          .map((d) => [d.name, d.serial])
          .sort(),
      ).toEqual([
        [sd.name, 'scsi-serial-a'],
        [vd.name, 'vblk-serial-b'],
      ]);

      sent = performance.now();
      await qmp(s.vmplugQmpPath, [{ execute: 'device_del', arguments: { id: 'tda' } }]);
      const goneScsi = await again.waitForDiskGone(sd.name, { timeoutMs: 10_000 });
      const delScsiMs = goneScsi.at - sent;
      sent = performance.now();
      await qmp(s.vmplugQmpPath, [{ execute: 'device_del', arguments: { id: 'tdb' } }]);
      const goneBlk = await again.waitForDiskGone(vd.name, { timeoutMs: 10_000 });
      const delBlkMs = goneBlk.at - sent;
      console.log(
        `guest saw: scsi-hd +${Math.round(scsiMs)} ms / -${Math.round(delScsiMs)} ms, ` +
          `virtio-blk +${Math.round(blkMs)} ms / -${Math.round(delBlkMs)} ms`,
      );
      expect(again.disks()).toEqual([]);
    } finally {
      await again.close();
    }
  });

  it('stop() leaves no process and no files', async () => {
    await Promise.all(sandboxes.map((s) => s.stop()));
    for (const s of sandboxes) {
      expect(alive(s.pid)).toBe(false);
      expect(await s.exited).toBeDefined();
      expect(await exists(s.dir)).toBe(false);
      expect(await exists(join(root.monitorDir, s.id))).toBe(false);
      expect(await exists(join(root.kataSbsRoot, s.id))).toBe(false);
    }
    await root.cleanup();
    expect(await exists(root.dir)).toBe(false);
  });
});
