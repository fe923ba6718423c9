import { describe, expect, it } from 'vitest';
import { parseSandboxId, parseVolumeId } from '../../../core/ids.js';
import {
  guestHint,
  isVmplugName,
  parseRootPortId,
  parseVmplugName,
  rootPortId,
  SCSI_BUS,
  volumeNames,
} from '../../../storage/naming.js';

const sb = parseSandboxId('f'.repeat(64));
const vol = parseVolumeId('0001-0009-rook-ceph-0000000000000001-8f0c7a3e-3c1d-4a8e-9d0b-1d2e3f4a5b6c');

describe('volumeNames', () => {
  it('gives QEMU-valid, prefixed, deterministic names', () => {
    const n = volumeNames(sb, vol);
    expect(n).toEqual(volumeNames(sb, vol));
    expect(n.node).toBe(`vmp-${n.hash}`);
    expect(n.device).toBe(`vmpd-${n.hash}`);
    expect(n.secret).toBe(`vmps-${n.hash}`);
    expect(n.format).toBe(`vmpf-${n.hash}`);
    for (const name of [n.node, n.device, n.secret, n.format]) {
      expect(name.length).toBeLessThanOrEqual(31);
      expect(name).toMatch(/^[A-Za-z][A-Za-z0-9_.-]*$/);
      expect(isVmplugName(name)).toBe(true);
    }
    expect(Buffer.byteLength(n.serial)).toBeLessThanOrEqual(20);
  });

  it('depends on both ids, unambiguously', () => {
    const a = volumeNames(parseSandboxId('ab'), parseVolumeId('c'));
    const b = volumeNames(parseSandboxId('a'), parseVolumeId('bc'));
    expect(a.hash).not.toBe(b.hash);
    expect(volumeNames(parseSandboxId('other'), vol).hash).not.toBe(volumeNames(sb, vol).hash);
  });

  it('tells vmplug names apart from foreign ones', () => {
    for (const name of [
      'drive-scsi0',
      'vmp-xyz',
      'vmp-0123456789ABCDEF',
      'vmpx-0123456789abcdef',
      'vmp-0123456789abcdef0',
      'scsi0',
      'vmplug-rp0',
    ]) {
      expect(isVmplugName(name)).toBe(false);
      expect(parseVmplugName(name)).toBeUndefined();
    }
    const n = volumeNames(sb, vol);
    expect(parseVmplugName(n.device)).toEqual({ kind: 'device', hash: n.hash });
    expect(parseVmplugName(n.node)).toEqual({ kind: 'node', hash: n.hash });
    expect(parseVmplugName(n.secret)).toEqual({ kind: 'secret', hash: n.hash });
    expect(parseVmplugName(n.format)).toEqual({ kind: 'format', hash: n.hash });
  });
});

describe('lanes and hints', () => {
  it('names the reserved lanes as bin/vmplug-qemu creates them', () => {
    expect(SCSI_BUS).toBe('vmplug-scsi0.0');
    expect(rootPortId(0)).toBe('vmplug-rp0');
    expect(rootPortId(31)).toBe('vmplug-rp31');
    expect(() => rootPortId(32)).toThrow(RangeError);
    expect(() => rootPortId(-1)).toThrow(RangeError);
    expect(parseRootPortId('vmplug-rp7')).toBe(7);
    for (const id of ['vmplug-rp32', 'vmplug-rp07', 'rp0', 'pci-bridge-0', 'vmplug-rp']) {
      expect(parseRootPortId(id)).toBeUndefined();
    }
  });

  it('hints where udev links the disk', () => {
    expect(guestHint('virtio-blk', 'vmp-0123456789abcdef')).toBe(
      '/dev/disk/by-id/virtio-vmp-0123456789abcdef',
    );
    expect(guestHint('scsi', 'vmp-0123456789abcdef')).toBe(
      '/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_vmp-0123456789abcdef',
    );
  });
});
