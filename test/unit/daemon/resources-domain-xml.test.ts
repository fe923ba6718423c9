import { describe, expect, it } from 'vitest';
import { dimmXml, parseDomainResources } from '../../../daemon/resize/domain-xml.js';

// Live XML of the libvirt test domain (libvirt 9.0) after `setvcpus 2 --live` and a 256 MiB DIMM
// attached with alias ua-vmpdimm-3, as virDomainGetXMLDesc returned it (device list trimmed).
const live = `<domain type='qemu' id='20'>
  <name>vmplug-test-7ed19563</name>
  <uuid>03bf2d3e-0da3-4345-bd04-deca8b22f4ce</uuid>
  <metadata>
    <vmplug:owner xmlns:vmplug="https://vmplug.io/xmlns/test-domain/1" pid="19579" start="378692" dir="/tmp/vmplug-lv-XXXXXX"/>
  </metadata>
  <maxMemory slots='4' unit='KiB'>1048576</maxMemory>
  <memory unit='KiB'>524288</memory>
  <currentMemory unit='KiB'>524288</currentMemory>
  <vcpu placement='static' current='2'>4</vcpu>
  <vcpus>
    <vcpu id='0' enabled='yes' hotpluggable='no' order='1'/>
    <vcpu id='1' enabled='yes' hotpluggable='yes' order='2'/>
    <vcpu id='2' enabled='no' hotpluggable='yes'/>
    <vcpu id='3' enabled='no' hotpluggable='yes'/>
  </vcpus>
  <resource>
    <partition>/machine</partition>
  </resource>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <kernel>/var/cache/vmplug/guest/6.1.0-56-amd64-8fbc26c04fc3/vmlinuz</kernel>
    <initrd>/var/cache/vmplug/guest/6.1.0-56-amd64-8fbc26c04fc3/initrd.img</initrd>
    <cmdline>console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init memhp_default_state=online</cmdline>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
  </features>
  <cpu mode='maximum' check='none' migratable='off'>
    <numa>
      <cell id='0' cpus='0-3' memory='262144' unit='KiB'/>
    </numa>
  </cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <!-- controllers, serial ports, inputs elided -->
    <memballoon model='none'/>
    <memory model='dimm'>
      <target>
        <size unit='KiB'>262144</size>
        <node>0</node>
      </target>
      <alias name='ua-vmpdimm-3'/>
      <address type='dimm' slot='0' base='0x100000000'/>
    </memory>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+64055:+64055</label>
    <imagelabel>+64055:+64055</imagelabel>
  </seclabel>
</domain>

`;

describe('parseDomainResources', () => {
  it("reads vCPUs, memory, slots and vmplug's DIMMs from libvirt's live XML", () => {
    expect(parseDomainResources(live)).toEqual({
      domainType: 'qemu',
      vcpus: 2,
      maxVcpus: 4,
      fixedVcpus: 1,
      memoryKiB: 524288,
      maxMemoryKiB: 1048576,
      slots: 4,
      memoryDevices: 1,
      vmplugDimms: [{ index: 3, alias: 'ua-vmpdimm-3', sizeKiB: 262144 }],
    });
  });

  it("takes no current= as all vCPUs, other units, and DIMMs that are not vmplug's", () => {
    const xml = live
      .replace("<vcpu placement='static' current='2'>4</vcpu>", "<vcpu placement='static'>4</vcpu>")
      .replace(
        "<maxMemory slots='4' unit='KiB'>1048576</maxMemory>",
        "<maxMemory slots='8' unit='GiB'>2</maxMemory>",
      )
      .replace('ua-vmpdimm-3', 'dimm0');
    const r = parseDomainResources(xml);
    expect(r).toMatchObject({
      vcpus: 4,
      maxMemoryKiB: 2 * 1024 * 1024,
      slots: 8,
      memoryDevices: 1,
      vmplugDimms: [],
    });
  });

  it('refuses XML without the elements it needs', () => {
    expect(() => parseDomainResources('<domain type="kvm"><name>x</name></domain>')).toThrow();
  });

  it('DIMM device XML carries the vmplug alias, in MiB, on node 0', () => {
    expect(dimmXml(2, 256)).toBe(
      "<memory model='dimm'><target><size unit='MiB'>256</size><node>0</node></target><alias name='ua-vmpdimm-2'/></memory>",
    );
  });
});
