// The few facts guest resize needs from a libvirt domain's live XML (virDomainGetXMLDesc):
// vCPUs now / at most and which may be unplugged, memory now / at most, slots, and the DIMMs
// vmplug added (user alias ua-vmpdimm-<n>). Libvirt writes this XML itself in a fixed form, so
// matching its elements is enough; no general XML parser is needed.

export interface DomainResources {
  /** 'kvm' or 'qemu' (TCG). */
  domainType: string;
  vcpus: number;
  maxVcpus: number;
  /** vCPUs libvirt may not unplug (hotpluggable='no'); 1 when the XML lists none. */
  fixedVcpus: number;
  memoryKiB: number;
  maxMemoryKiB: number;
  slots: number;
  /** Every `<memory model=...>` device (each takes a slot). */
  memoryDevices: number;
  /** vmplug's DIMMs by index. */
  vmplugDimms: Array<{ index: number; alias: string; sizeKiB: number }>;
}

export const DIMM_ALIAS_PREFIX = 'ua-vmpdimm-';

const UNIT_KIB: Record<string, number> = {
  b: 1 / 1024,
  bytes: 1 / 1024,
  k: 1,
  kib: 1,
  kb: 1000 / 1024,
  m: 1024,
  mib: 1024,
  mb: 1_000_000 / 1024,
  g: 1024 * 1024,
  gib: 1024 * 1024,
  gb: 1_000_000_000 / 1024,
};

function kib(value: string, unit: string | undefined): number {
  const factor = UNIT_KIB[(unit ?? 'KiB').toLowerCase()];
  if (factor === undefined) throw new Error(`unknown memory unit ${unit}`);
  return Math.round(Number(value) * factor);
}

function attr(tag: string, name: string): string | undefined {
  return new RegExp(`\\s${name}=['"]([^'"]*)['"]`).exec(tag)?.[1];
}

/** `<name ...>text</name>` at any depth, first match; undefined when absent. */
function element(xml: string, name: string): { tag: string; text: string } | undefined {
  const m = new RegExp(`<${name}(\\s[^>]*)?>([^<]*)</${name}>`).exec(xml);
  return m ? { tag: m[0], text: (m[2] ?? '').trim() } : undefined;
}

export function parseDomainResources(xml: string): DomainResources {
  const domainType = /<domain\s[^>]*type=['"]([^'"]+)['"]/.exec(xml)?.[1] ?? 'unknown';
  const vcpu = element(xml, 'vcpu');
  if (vcpu === undefined) throw new Error('domain XML has no <vcpu>');
  const maxVcpus = Number(vcpu.text);
  const vcpus = Number(attr(vcpu.tag, 'current') ?? maxVcpus);
  const vcpuList = [...xml.matchAll(/<vcpu\s+id=['"]\d+['"][^>]*\/>/g)].map((m) => m[0]);
  const fixedVcpus =
    vcpuList.length === 0
      ? 1
      : vcpuList.filter((t) => attr(t, 'enabled') === 'yes' && attr(t, 'hotpluggable') !== 'yes').length;

  // The top-level <memory unit=..>N</memory> (devices' <memory model=...> have children, not text).
  const memory = /<memory(\s+unit=['"]([^'"]+)['"])?>\s*(\d+)\s*<\/memory>/.exec(xml);
  if (memory?.[3] === undefined) throw new Error('domain XML has no <memory>');
  const max = element(xml, 'maxMemory');

  const devices = [...xml.matchAll(/<memory\s+model=['"][^'"]+['"][^>]*>([\s\S]*?)<\/memory>/g)];
  const vmplugDimms: DomainResources['vmplugDimms'] = [];
  for (const d of devices) {
    const body = d[1] ?? '';
    const alias = /<alias\s+name=['"]([^'"]+)['"]/.exec(body)?.[1];
    if (alias === undefined || !alias.startsWith(DIMM_ALIAS_PREFIX)) continue;
    const index = Number(alias.slice(DIMM_ALIAS_PREFIX.length));
    const size = /<size(\s+unit=['"]([^'"]+)['"])?>\s*(\d+)\s*<\/size>/.exec(body);
    if (!Number.isInteger(index) || size?.[3] === undefined) continue;
    vmplugDimms.push({ index, alias, sizeKiB: kib(size[3], size[2]) });
  }
  return {
    domainType,
    vcpus,
    maxVcpus,
    fixedVcpus: Math.max(1, fixedVcpus),
    memoryKiB: kib(memory[3], memory[2]),
    maxMemoryKiB: max ? kib(max.text, attr(max.tag, 'unit')) : kib(memory[3], memory[2]),
    slots: max ? Number(attr(max.tag, 'slots') ?? 0) : 0,
    memoryDevices: devices.length,
    vmplugDimms,
  };
}

export function dimmXml(index: number, sizeMiB: number, node = 0): string {
  return `<memory model='dimm'><target><size unit='MiB'>${sizeMiB}</size><node>${node}</node></target><alias name='${DIMM_ALIAS_PREFIX}${index}'/></memory>`;
}
