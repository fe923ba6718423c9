/**
 * Domain XML of a test domain: q35, the test guest's kernel and initramfs, free hot-plug slots,
 * a virtio-scsi controller, room to hot-resize vCPUs and memory, and the guest protocol's three
 * serial ports. No network, no graphics, no default devices we did not ask for.
 */

export interface TestDomainSpec {
  name: string;
  accel: 'tcg' | 'kvm';
  kernel: string;
  initrd: string;
  cmdline: string;
  memoryMiB: number;
  maxMemoryMiB: number;
  memorySlots: number;
  vcpus: number;
  maxVcpus: number;
  /** Empty pcie-root-ports for hot-plugged PCIe devices (virtio-blk, NICs). */
  rootPorts: number;
  consoleLog: string;
  eventsSocket: string;
  commandSocket: string;
  /** Recorded in the domain's metadata so a later run can tell a leaked domain from a live one. */
  owner: { pid: number; startTicks: string; dir: string };
}

export const metadataNamespace = 'https://vmplug.io/xmlns/test-domain/1';

export function escapeXml(s: string): string {
  return s.replace(
    /[<>&'"]/g,
    (c) => `&${{ '<': 'lt', '>': 'gt', '&': 'amp', "'": 'apos', '"': 'quot' }[c]};`,
  );
}

export function testDomainXml(spec: TestDomainSpec): string {
  const e = escapeXml;
  const ports: string[] = [];
  // Index 0 is pcie-root; the ports take 1..n, and each gets its own chassis/port on the root bus.
  for (let i = 1; i <= spec.rootPorts; i++) {
    ports.push(`    <controller type='pci' index='${i}' model='pcie-root-port'/>`);
  }
  // Memory hot-plug needs a guest NUMA topology covering every possible vCPU.
  const cpu =
    spec.accel === 'kvm' ? `<cpu mode='host-passthrough'>` : `<cpu mode='maximum' migratable='off'>`;
  return `<domain type='${spec.accel === 'kvm' ? 'kvm' : 'qemu'}'>
  <name>${e(spec.name)}</name>
  <metadata>
    <vmplug:owner xmlns:vmplug='${metadataNamespace}' pid='${spec.owner.pid}' start='${e(spec.owner.startTicks)}' dir='${e(spec.owner.dir)}'/>
  </metadata>
  <maxMemory slots='${spec.memorySlots}' unit='MiB'>${spec.maxMemoryMiB}</maxMemory>
  <memory unit='MiB'>${spec.memoryMiB}</memory>
  <currentMemory unit='MiB'>${spec.memoryMiB}</currentMemory>
  <vcpu placement='static' current='${spec.vcpus}'>${spec.maxVcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>${e(spec.kernel)}</kernel>
    <initrd>${e(spec.initrd)}</initrd>
    <cmdline>${e(spec.cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  ${cpu}
    <numa>
      <cell id='0' cpus='0-${spec.maxVcpus - 1}' memory='${spec.memoryMiB}' unit='MiB'/>
    </numa>
  </cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <controller type='pci' index='0' model='pcie-root'/>
${ports.join('\n')}
    <controller type='usb' model='none'/>
    <!-- On the root complex, so it takes none of the hot-plug root ports. -->
    <controller type='scsi' index='0' model='virtio-scsi'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>
    </controller>
    <serial type='file'>
      <source path='${e(spec.consoleLog)}'/>
      <target port='0'/>
    </serial>
    <serial type='unix'>
      <source mode='bind' path='${e(spec.eventsSocket)}'/>
      <target port='1'/>
    </serial>
    <serial type='unix'>
      <source mode='bind' path='${e(spec.commandSocket)}'/>
      <target port='2'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}
