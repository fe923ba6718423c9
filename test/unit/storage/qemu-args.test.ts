import { describe, expect, it } from 'vitest';
import { parseSandboxId, parseVolumeId } from '../../../core/ids.js';
import { volumeNames } from '../../../storage/naming.js';
import {
  blockdevHostDevice,
  blockdevRbd,
  deviceArgs,
  rbdConf,
  secretObject,
} from '../../../storage/qemu-args.js';
import { parseAttachRequest, type RbdSource, Secret, toStoredSpec } from '../../../storage/volume-spec.js';

const KEY = 'AQDuSQNrSIzGGhAAA42jGo01/mILR5NFi7XNYA==';
const names = volumeNames(parseSandboxId('sb1'), parseVolumeId('pvc-1'));

function rbdSource(extra: Record<string, unknown> = {}): RbdSource {
  const spec = parseAttachRequest({
    mode: 'rbd',
    readOnly: 'snapshot' in extra,
    source: {
      type: 'rbd',
      pool: 'rbd',
      image: 'vol1',
      monitors: ['127.0.0.1:6789', '[::1]:3300'],
      user: 'vmplug',
      key: KEY,
      ...extra,
    },
  });
  if (spec.mode !== 'rbd') throw new Error('unreachable');
  return spec.source;
}

describe('qemu-args', () => {
  it('secretObject carries the key as base64 data under the vmplug secret id', () => {
    expect(secretObject(names, new Secret(KEY))).toEqual({
      'qom-type': 'secret',
      id: names.secret,
      data: KEY,
      format: 'base64',
    });
  });

  it('blockdevHostDevice', () => {
    expect(blockdevHostDevice(names, { type: 'hostDevice', path: '/dev/loop3' }, true)).toEqual({
      driver: 'host_device',
      'node-name': names.node,
      filename: '/dev/loop3',
      'read-only': true,
      cache: { direct: true, 'no-flush': false },
      aio: 'native',
      discard: 'unmap',
    });
  });

  it('blockdevRbd names the secret, never the key, and passes monitors as servers', () => {
    const src = rbdSource();
    const node = blockdevRbd(names, src, { readOnly: false, confPath: '/run/vmplug/rbd/x.conf' });
    expect(node).toEqual({
      driver: 'rbd',
      'node-name': names.node,
      pool: 'rbd',
      image: 'vol1',
      server: [
        { host: '127.0.0.1', port: '6789' },
        { host: '::1', port: '3300' },
      ],
      user: 'vmplug',
      'auth-client-required': ['cephx'],
      'key-secret': names.secret,
      'read-only': false,
      discard: 'unmap',
      conf: '/run/vmplug/rbd/x.conf',
    });
    expect(JSON.stringify(node)).not.toContain(KEY);
    // The stored (keyless) source works as well.
    const stored = toStoredSpec({ mode: 'rbd', source: src, readOnly: false, bus: 'auto', backend: 'auto' });
    expect(
      blockdevRbd(names, stored.source as Omit<RbdSource, 'key'>, { readOnly: false }),
    ).not.toHaveProperty('conf');
  });

  it('blockdevRbd passes namespace and snapshot when given', () => {
    const node = blockdevRbd(names, rbdSource({ namespace: 'ns1', snapshot: 'snap1' }), { readOnly: true });
    expect(node).toMatchObject({ namespace: 'ns1', snapshot: 'snap1', 'read-only': true });
  });

  it('rbdConf bounds the mount and holds nothing secret', () => {
    expect(rbdConf()).toBe('[global]\nclient_mount_timeout = 5\n');
    expect(rbdConf({ clientMountTimeoutS: 3, monOpTimeoutS: 10, osdOpTimeoutS: 30 })).toBe(
      '[global]\nclient_mount_timeout = 3\nrados_mon_op_timeout = 10\nrados_osd_op_timeout = 30\n',
    );
    for (const bad of [0, -1, Number.NaN, Number.POSITIVE_INFINITY, 3601]) {
      expect(() => rbdConf({ clientMountTimeoutS: bad })).toThrow(RangeError);
    }
  });

  it('deviceArgs puts scsi-hd on vmplug-scsi0 and virtio-blk on a vmplug root port', () => {
    expect(deviceArgs(names, { bus: 'scsi', scsiId: 3 })).toEqual({
      driver: 'scsi-hd',
      id: names.device,
      drive: names.node,
      bus: 'vmplug-scsi0.0',
      channel: 0,
      'scsi-id': 3,
      lun: 0,
      serial: names.serial,
    });
    expect(deviceArgs(names, { bus: 'virtio-blk', port: 'vmplug-rp2' })).toEqual({
      driver: 'virtio-blk-pci',
      id: names.device,
      drive: names.node,
      bus: 'vmplug-rp2',
      addr: '0',
      serial: names.serial,
    });
    expect(() => deviceArgs(names, { bus: 'scsi', scsiId: 256 })).toThrow(RangeError);
    expect(() => deviceArgs(names, { bus: 'scsi', scsiId: 1.5 })).toThrow(RangeError);
    // Kata's own lanes are never a target.
    expect(() => deviceArgs(names, { bus: 'virtio-blk', port: 'pci-bridge-0' })).toThrow(RangeError);
    expect(() => deviceArgs(names, { bus: 'virtio-blk', port: 'rp1' })).toThrow(RangeError);
  });
});
