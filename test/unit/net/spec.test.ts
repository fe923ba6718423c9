import { describe, expect, it } from 'vitest';
import { parseNicId, parseSandboxId } from '../../../core/ids.js';
import {
  defaultMac,
  isNicDeviceName,
  isNicNetdevName,
  isNicTapName,
  nicNames,
  nicSpecFingerprint,
  parseNicSpec,
  specToInput,
} from '../../../net/index.js';

const sb = parseSandboxId('a'.repeat(64));
const nic = parseNicId('eth1');

function fieldOf(body: unknown): { code: string; field: string } | undefined {
  try {
    parseNicSpec(body, sb, nic);
    return undefined;
  } catch (err) {
    const e = err as { code: string; field: string };
    return { code: e.code, field: e.field };
  }
}

describe('NIC spec validation', () => {
  it('accepts a bridge spec and fills the derived MAC', () => {
    const spec = parseNicSpec({ hostInterface: { type: 'tap', bridge: 'br0' } }, sb, nic);
    expect(spec).toEqual({
      mac: defaultMac(sb, nic),
      hostInterface: { type: 'tap', mode: 'bridge', bridge: 'br0' },
      queues: 1,
    });
    expect(specToInput(spec)).toEqual({
      mac: spec.mac,
      hostInterface: { type: 'tap', bridge: 'br0' },
      queues: 1,
    });
  });

  it('accepts an existing tap, a MAC (lower-cased) and an MTU', () => {
    const spec = parseNicSpec(
      { mac: '52:54:00:AB:cd:01', hostInterface: { type: 'tap', name: 'tap0' }, mtu: 9000, queues: 1 },
      sb,
      nic,
    );
    expect(spec.mac).toBe('52:54:00:ab:cd:01');
    expect(spec.hostInterface).toEqual({ type: 'tap', mode: 'existing', name: 'tap0' });
    expect(spec.mtu).toBe(9000);
  });

  it.each([
    [null, 'body'],
    [{}, 'hostInterface'],
    [{ hostInterface: 'br0' }, 'hostInterface'],
    [{ hostInterface: { type: 'macvtap', bridge: 'br0' } }, 'hostInterface.type'],
    [{ hostInterface: { type: 'tap' } }, 'hostInterface'],
    [{ hostInterface: { type: 'tap', name: 't', bridge: 'b' } }, 'hostInterface'],
    [{ hostInterface: { type: 'tap', bridge: 'a-very-long-bridge' } }, 'hostInterface.bridge'],
    [{ hostInterface: { type: 'tap', bridge: 'br/0' } }, 'hostInterface.bridge'],
    [{ hostInterface: { type: 'tap', name: '..' } }, 'hostInterface.name'],
    [{ hostInterface: { type: 'tap', name: 'vmpt0123456789a' } }, 'hostInterface.name'],
    [{ hostInterface: { type: 'tap', bridge: 'br0', extra: 1 } }, 'hostInterface.extra'],
    [{ hostInterface: { type: 'tap', bridge: 'br0' }, colour: 'red' }, 'colour'],
    [{ mac: '01:00:5e:00:00:01', hostInterface: { type: 'tap', bridge: 'br0' } }, 'mac'],
    [{ mac: '00:00:00:00:00:00', hostInterface: { type: 'tap', bridge: 'br0' } }, 'mac'],
    [{ mac: '52-54-00-00-00-01', hostInterface: { type: 'tap', bridge: 'br0' } }, 'mac'],
    [{ mac: 5, hostInterface: { type: 'tap', bridge: 'br0' } }, 'mac'],
    [{ mtu: 67, hostInterface: { type: 'tap', bridge: 'br0' } }, 'mtu'],
    [{ mtu: 1500.5, hostInterface: { type: 'tap', bridge: 'br0' } }, 'mtu'],
    [{ mtu: '1500', hostInterface: { type: 'tap', bridge: 'br0' } }, 'mtu'],
    [{ queues: 2, hostInterface: { type: 'tap', bridge: 'br0' } }, 'queues'],
  ])('refuses %j naming field %s', (body, field) => {
    expect(fieldOf(body)).toEqual({ code: 'INVALID_FIELD', field });
  });

  it('refuses bad ids with INVALID_ID (400)', () => {
    expect(() => parseNicId('../x')).toThrow(expect.objectContaining({ code: 'INVALID_ID', status: 400 }));
    expect(() => parseSandboxId('')).toThrow(expect.objectContaining({ field: 'sandboxId' }));
    expect(() => parseNicId('x'.repeat(129))).toThrow(expect.objectContaining({ field: 'nicId' }));
  });

  it('fingerprints equal specs equally and different specs differently', () => {
    const a = parseNicSpec({ hostInterface: { type: 'tap', bridge: 'br0' } }, sb, nic);
    const b = parseNicSpec({ hostInterface: { type: 'tap', bridge: 'br0' }, queues: 1 }, sb, nic);
    const c = parseNicSpec({ hostInterface: { type: 'tap', bridge: 'br1' } }, sb, nic);
    const d = parseNicSpec({ hostInterface: { type: 'tap', bridge: 'br0' }, mtu: 1500 }, sb, nic);
    expect(nicSpecFingerprint(a)).toBe(nicSpecFingerprint(b));
    expect(nicSpecFingerprint(a)).not.toBe(nicSpecFingerprint(c));
    expect(nicSpecFingerprint(a)).not.toBe(nicSpecFingerprint(d));
  });
});

describe('NIC naming', () => {
  it('derives fixed-prefix names that fit QEMU and IFNAMSIZ', () => {
    const n = nicNames(sb, nic);
    expect(n.netdev).toMatch(/^vmpn-[0-9a-f]{16}$/);
    expect(n.device).toBe(`vmpnd-${n.hash}`);
    expect(n.tap).toMatch(/^vmpt[0-9a-f]{11}$/);
    expect(n.tap.length).toBe(15);
    expect(isNicNetdevName(n.netdev) && isNicDeviceName(n.device) && isNicTapName(n.tap)).toBe(true);
    expect(nicNames(sb, parseNicId('eth2')).hash).not.toBe(n.hash);
    expect(nicNames(sb, nic)).toEqual(n);
  });

  it("never matches storage's names, nor storage's pattern matches these", () => {
    const storagePattern = /^vmp[dfs]?-[0-9a-f]{16}$/;
    const n = nicNames(sb, nic);
    for (const name of [n.netdev, n.device, n.tap]) expect(storagePattern.test(name)).toBe(false);
    for (const s of ['vmp-0123456789abcdef', 'vmpd-0123456789abcdef', 'vmps-0123456789abcdef']) {
      expect(isNicNetdevName(s) || isNicDeviceName(s) || isNicTapName(s)).toBe(false);
    }
  });

  it('derives a stable unicast, locally administered MAC', () => {
    for (let i = 0; i < 50; i++) {
      const mac = defaultMac(sb, parseNicId(`eth${i}`));
      expect(mac).toMatch(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
      const first = Number.parseInt(mac.slice(0, 2), 16);
      expect(first & 1).toBe(0);
      expect(first & 2).toBe(2);
    }
    expect(defaultMac(sb, nic)).toBe(defaultMac(sb, nic));
  });
});
