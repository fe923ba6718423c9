/**
 * The libvirt test bed itself: a transient test domain on the host's libvirtd boots the test
 * guest, runs commands in it, sees a disk hot-attached through libvirt and loses it on detach,
 * and leaves no domain behind.
 */
import { access, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureLibvirtd, startTestDomain, type TestDomain, virsh } from '../env/libvirt.js';

function diskXml(file: string, target: string, serial: string): string {
  return `<disk type='file' device='disk'>
  <driver name='qemu' type='raw'/>
  <source file='${file}'/>
  <target dev='${target}' bus='scsi'/>
  <serial>${serial}</serial>
</disk>
`;
}

describe('libvirt test bed', () => {
  let domain: TestDomain | undefined;

  beforeAll(async () => {
    const t0 = performance.now();
    await ensureLibvirtd();
    process.stderr.write(
      `[libvirt-testbed] libvirtd answers after ${Math.round(performance.now() - t0)} ms\n`,
    );
  });

  afterAll(async () => {
    await domain?.destroy();
  });

  it('boots the test guest in a q35 domain and reports READY', async () => {
    domain = await startTestDomain();
    process.stderr.write(
      `[libvirt-testbed] ${domain.name}: virsh create -> guest READY ${Math.round(domain.bootMs)} ms\n`,
    );
    expect(domain.guest.isReady).toBe(true);
    expect(domain.uuid).toMatch(/^[0-9a-f-]{36}$/);
    const { stdout } = await virsh(['domstate', domain.name]);
    expect(stdout.trim()).toBe('running');
    const xml = (await virsh(['dumpxml', domain.name])).stdout;
    expect(xml).toContain("machine='pc-q35-7.2'");
    expect(xml).toMatch(/<vcpu placement='static' current='1'>4<\/vcpu>/);
    expect(xml).toMatch(/<maxMemory slots='4' unit='KiB'>1048576<\/maxMemory>/);
    expect(xml.match(/model='pcie-root-port'/g)?.length).toBeGreaterThanOrEqual(4);
    expect(xml).not.toMatch(/<interface|<graphics/);
  });

  it('runs a command in the guest', async () => {
    const d = domain as TestDomain;
    const r = await d.guest.run('echo hello from $(uname -r); grep -c ^processor /proc/cpuinfo');
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/^hello from 6\.1\.\S+\n1\n$/);
  });

  it('hot-attaches a raw file as a scsi disk with virsh, the guest sees it, and detach removes it', async () => {
    const d = domain as TestDomain;
    const image = join(d.dir, 'disk1.raw');
    await writeFile(image, '', { mode: 0o600 });
    await truncate(image, 64 * 1024 * 1024);
    const xmlPath = join(d.dir, 'disk1.xml');
    await writeFile(xmlPath, diskXml(image, 'sda', 'vmplugtest1'));

    const before = new Set(d.guest.disks().map((x) => x.name));
    const t0 = performance.now();
    await virsh(['attach-device', d.name, xmlPath, '--live']);
    const disk = await d.guest.waitForDisk((x) => !before.has(x.name), { timeoutMs: 20_000 });
    const attachMs = disk.seenAt - t0;
    expect(disk.sizeBytes).toBe(64 * 1024 * 1024);
    expect(disk.serial).toBe('vmplugtest1');
    expect((await virsh(['domblklist', d.name])).stdout).toContain(image);

    // The guest can write to it and the host reads it back.
    const w = await d.guest.run(
      `echo vmplug-libvirt | dd of=/dev/${disk.name} bs=512 count=1 conv=sync 2>/dev/null; sync`,
    );
    expect(w.exitCode).toBe(0);
    expect((await readFile(image)).subarray(0, 14).toString()).toBe('vmplug-libvirt');

    const t1 = performance.now();
    await virsh(['detach-device', d.name, xmlPath, '--live']);
    const gone = await d.guest.waitForDiskGone(disk.name, { timeoutMs: 20_000 });
    const detachMs = gone.at - t1;
    expect(d.guest.disks().map((x) => x.name)).not.toContain(disk.name);
    expect((await virsh(['domblklist', d.name])).stdout).not.toContain(image);
    process.stderr.write(
      `[libvirt-testbed] attach-device -> guest sees ${disk.name}: ${Math.round(attachMs)} ms; ` +
        `detach-device -> guest lost it: ${Math.round(detachMs)} ms\n`,
    );
  });

  it('destroy leaves no domain and no files behind', async () => {
    const d = domain as TestDomain;
    await d.destroy();
    domain = undefined;
    const { stdout } = await virsh(['list', '--all', '--name']);
    expect(stdout.split('\n').map((l) => l.trim())).not.toContain(d.name);
    await expect(access(d.dir)).rejects.toThrow();
  });
});
