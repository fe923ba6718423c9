import { describe, expect, it } from 'vitest';
import { parseSandboxId, parseVolumeId } from '../../../core/ids.js';
import {
  deviceOfAlias,
  diskAlias,
  diskXml,
  escapeXml,
  freeTarget,
  parseDisks,
  secretOfUsage,
  secretUsage,
  secretXml,
  targetName,
} from '../../../storage/libvirt/disk-xml.js';
import { volumeNames } from '../../../storage/naming.js';
import type { StoredSpec } from '../../../storage/volume-spec.js';

const names = volumeNames(parseSandboxId('dom1'), parseVolumeId('pvc-1'));

describe('libvirt disk XML', () => {
  it('escapes every XML special character', () => {
    expect(escapeXml(`a<b>&'"`)).toBe('a&lt;b&gt;&amp;&apos;&quot;');
  });

  it('builds a raw block disk with vmplug serial, ua- alias and read-only flag', () => {
    const spec: StoredSpec = {
      mode: 'block',
      source: { type: 'hostDevice', path: '/dev/loop7' },
      readOnly: true,
      bus: 'auto',
    };
    const xml = diskXml({ spec, names, bus: 'scsi', targetDev: 'sdb' });
    expect(xml).toContain(`<disk type='block' device='disk'>`);
    expect(xml).toContain(`<driver name='qemu' type='raw' cache='none' io='native'/>`);
    expect(xml).toContain(`<source dev='/dev/loop7'/>`);
    expect(xml).toContain(`<target dev='sdb' bus='scsi'/>`);
    expect(xml).toContain(`<serial>${names.serial}</serial>`);
    expect(xml).toContain(`<alias name='ua-${names.device}'/>`);
    expect(xml).toContain('<readonly/>');
  });

  it('builds an rbd network disk with hosts, config file and the ceph secret, never a key', () => {
    const spec: StoredSpec = {
      mode: 'rbd',
      source: {
        type: 'rbd',
        pool: 'rbd',
        image: "img'1",
        monitors: [
          { host: '127.0.0.1', port: 6789 },
          { host: '::1', port: 3300 },
        ],
        user: 'vmplug',
      },
      readOnly: false,
      bus: 'virtio-blk',
    };
    const xml = diskXml({
      spec,
      names,
      bus: 'virtio-blk',
      targetDev: 'vda',
      secretUuid: '0f8c2b4e-1d2a-4c3b-9e8f-7a6b5c4d3e2f',
      cephConfFile: '/run/vmplug/libvirt/rbd/x.conf',
    });
    expect(xml).toContain(`<source protocol='rbd' name='rbd/img&apos;1'>`);
    expect(xml).toContain(`<host name='127.0.0.1' port='6789'/>`);
    expect(xml).toContain(`<host name='::1' port='3300'/>`);
    expect(xml).toContain(`<config file='/run/vmplug/libvirt/rbd/x.conf'/>`);
    expect(xml).toContain(`<auth username='vmplug'>`);
    expect(xml).toContain(`<secret type='ceph' uuid='0f8c2b4e-1d2a-4c3b-9e8f-7a6b5c4d3e2f'/>`);
    expect(xml).toContain(`<target dev='vda' bus='virtio'/>`);
    expect(xml).not.toContain('<readonly/>');
    expect(() => diskXml({ spec, names, bus: 'scsi', targetDev: 'sda' })).toThrow(/secret/);
  });

  it('names secrets and aliases so reconcile can tell vmplug objects apart', () => {
    expect(diskAlias(names)).toBe(`ua-${names.device}`);
    expect(deviceOfAlias(diskAlias(names))).toBe(names.device);
    expect(deviceOfAlias('ua-other')).toBeUndefined();
    expect(deviceOfAlias('scsi0-0-0-1')).toBeUndefined();
    expect(secretOfUsage(secretUsage(names))).toBe(names.secret);
    expect(secretOfUsage('client.admin secret')).toBeUndefined();
    const xml = secretXml({ names, sandboxId: 'dom<1>', volumeId: 'pvc-1' });
    expect(xml).toContain(`<secret ephemeral='yes' private='yes'>`);
    expect(xml).toContain(`<name>vmplug/${names.secret}</name>`);
    expect(xml).toContain('dom&lt;1&gt;');
  });

  it('reads targets, aliases and serials from live domain XML', () => {
    const live = `<domain type='qemu' id='3'><devices>
      <disk type='block' device='disk'>
        <driver name='qemu' type='raw' cache='none' io='native'/>
        <source dev='/dev/loop7' index='1'/>
        <target dev='sda' bus='scsi'/>
        <serial>vmp-0123456789abcdef</serial>
        <alias name='ua-vmpd-0123456789abcdef'/>
        <address type='drive' controller='0' bus='0' target='0' unit='0'/>
      </disk>
      <disk type="file" device="disk"><target dev="vdb" bus="virtio"/><alias name="virtio-disk1"/></disk>
    </devices></domain>`;
    const disks = parseDisks(live);
    expect(disks).toEqual([
      {
        targetDev: 'sda',
        targetBus: 'scsi',
        alias: 'ua-vmpd-0123456789abcdef',
        serial: 'vmp-0123456789abcdef',
      },
      { targetDev: 'vdb', targetBus: 'virtio', alias: 'virtio-disk1', serial: undefined },
    ]);
    expect(freeTarget('scsi', disks)).toBe('sdb');
    expect(freeTarget('virtio-blk', disks)).toBe('vda');
  });

  it('counts target names the way libvirt does', () => {
    expect(targetName('sd', 0)).toBe('sda');
    expect(targetName('sd', 25)).toBe('sdz');
    expect(targetName('sd', 26)).toBe('sdaa');
    expect(targetName('vd', 27)).toBe('vdab');
  });
});
