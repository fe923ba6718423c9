/**
 * The libvirt XML vmplug writes (disk devices, ceph secrets) and the little it reads back from a
 * domain's live XML (its disks' targets and aliases). Every value is escaped even though ids,
 * paths and Ceph names are validated before they get here: the XML must stay well-formed whatever
 * a future validator lets through.
 */
import type { FrontendBus, VolumeNames } from '../naming.js';
import type { StoredSpec } from '../volume-spec.js';

const ENTITIES: Record<string, string> = {
  '<': '&lt;',
  '>': '&gt;',
  '&': '&amp;',
  "'": '&apos;',
  '"': '&quot;',
};

export function escapeXml(s: string): string {
  return s.replace(/[<>&'"]/g, (c) => ENTITIES[c] as string);
}

function unescapeXml(s: string): string {
  return s.replace(/&(lt|gt|amp|apos|quot);/g, (_, n: string) =>
    n === 'lt' ? '<' : n === 'gt' ? '>' : n === 'amp' ? '&' : n === 'apos' ? "'" : '"',
  );
}

/** libvirt user aliases must start with "ua-"; they survive a libvirtd restart and name the device in events. */
export const ALIAS_PREFIX = 'ua-';

export function diskAlias(names: Pick<VolumeNames, 'device'>): string {
  return `${ALIAS_PREFIX}${names.device}`;
}

/** The vmplug device name inside one of vmplug's aliases (ua-vmpd-<hash>), else undefined. */
export function deviceOfAlias(alias: string): string | undefined {
  const m = /^ua-(vmpd-[0-9a-f]{16})$/.exec(alias);
  return m?.[1];
}

/** The usage name of the libvirt ceph secret holding one attachment's key. */
export function secretUsage(names: Pick<VolumeNames, 'secret'>): string {
  return `vmplug/${names.secret}`;
}

/** The vmplug secret name inside a usage name (vmplug/vmps-<hash>), else undefined. */
export function secretOfUsage(usage: string): string | undefined {
  const m = /^vmplug\/(vmps-[0-9a-f]{16})$/.exec(usage);
  return m?.[1];
}

export interface DiskXmlParams {
  spec: StoredSpec;
  names: VolumeNames;
  bus: FrontendBus;
  /** The target name libvirt files the disk under (sdX or vdX). */
  targetDev: string;
  /** rbd: the libvirt secret's UUID. */
  secretUuid?: string;
  /** rbd: a Ceph config file with a short client_mount_timeout, when QEMU can read one. */
  cephConfFile?: string;
}

/** The `<disk>` element attached live: block device or rbd image, vmplug's serial and alias. */
export function diskXml(p: DiskXmlParams): string {
  const e = escapeXml;
  const lines: string[] = [];
  const target = `  <target dev='${e(p.targetDev)}' bus='${p.bus === 'scsi' ? 'scsi' : 'virtio'}'/>`;
  if (p.spec.mode === 'block') {
    lines.push(
      `<disk type='block' device='disk'>`,
      `  <driver name='qemu' type='raw' cache='none' io='native'/>`,
      `  <source dev='${e(p.spec.source.path)}'/>`,
    );
  } else {
    const s = p.spec.source;
    if (p.secretUuid === undefined) throw new RangeError('an rbd disk needs its secret');
    lines.push(
      `<disk type='network' device='disk'>`,
      `  <driver name='qemu' type='raw' cache='none'/>`,
      `  <source protocol='rbd' name='${e(`${s.pool}/${s.image}`)}'>`,
      ...s.monitors.map((m) => `    <host name='${e(m.host)}' port='${m.port}'/>`),
      ...(s.snapshot !== undefined ? [`    <snapshot name='${e(s.snapshot)}'/>`] : []),
      ...(p.cephConfFile !== undefined ? [`    <config file='${e(p.cephConfFile)}'/>`] : []),
      `    <auth username='${e(s.user)}'>`,
      `      <secret type='ceph' uuid='${e(p.secretUuid)}'/>`,
      `    </auth>`,
      `  </source>`,
    );
  }
  lines.push(
    target,
    `  <serial>${e(p.names.serial)}</serial>`,
    `  <alias name='${e(diskAlias(p.names))}'/>`,
    ...(p.spec.readOnly ? ['  <readonly/>'] : []),
    `</disk>`,
  );
  return `${lines.join('\n')}\n`;
}

export interface SecretXmlParams {
  names: VolumeNames;
  /** For the description only. */
  sandboxId: string;
  volumeId: string;
}

/**
 * An ephemeral (never written to disk by libvirt), private (its value cannot be read back through
 * the API) ceph secret. Its usage name is derived from the attachment's hash, so reconcile finds
 * it again from the journal and can tell vmplug's secrets from anyone else's.
 */
export function secretXml(p: SecretXmlParams): string {
  const e = escapeXml;
  return `<secret ephemeral='yes' private='yes'>
  <description>${e(`vmplug: cephx key of volume ${p.volumeId} on domain ${p.sandboxId}`)}</description>
  <usage type='ceph'>
    <name>${e(secretUsage(p.names))}</name>
  </usage>
</secret>
`;
}

export interface LiveDisk {
  targetDev: string;
  targetBus: string | undefined;
  alias: string | undefined;
  serial: string | undefined;
}

function attr(tag: string, name: string): string | undefined {
  const m = new RegExp(`\\s${name}=(?:'([^']*)'|"([^"]*)")`).exec(tag);
  const v = m?.[1] ?? m?.[2];
  return v === undefined ? undefined : unescapeXml(v);
}

/** The disks of a domain's XML (libvirt's own, well-formed output): target, alias, serial. */
export function parseDisks(domainXml: string): LiveDisk[] {
  const out: LiveDisk[] = [];
  for (const m of domainXml.matchAll(/<disk\b[^>]*>([\s\S]*?)<\/disk>/g)) {
    const body = m[1] ?? '';
    const target = /<target\b[^>]*>/.exec(body)?.[0];
    const dev = target === undefined ? undefined : attr(target, 'dev');
    if (dev === undefined) continue;
    const aliasTag = /<alias\b[^>]*>/.exec(body)?.[0];
    const serial = /<serial>([^<]*)<\/serial>/.exec(body)?.[1];
    out.push({
      targetDev: dev,
      targetBus: target === undefined ? undefined : attr(target, 'bus'),
      alias: aliasTag === undefined ? undefined : attr(aliasTag, 'name'),
      serial: serial === undefined ? undefined : unescapeXml(serial),
    });
  }
  return out;
}

/** sda, sdb, ..., sdz, sdaa, ... (libvirt's own disk-name order). */
export function targetName(prefix: 'sd' | 'vd', index: number): string {
  let n = index;
  let s = '';
  do {
    s = String.fromCharCode(97 + (n % 26)) + s;
    n = Math.floor(n / 26) - 1;
  } while (n >= 0);
  return `${prefix}${s}`;
}

/** Disks vmplug puts into one domain at most (per bus). */
export const MAX_TARGETS = 256;

/** The first target name of `bus` that no disk of the domain uses; undefined when all are taken. */
export function freeTarget(bus: FrontendBus, disks: readonly LiveDisk[]): string | undefined {
  const prefix = bus === 'scsi' ? 'sd' : 'vd';
  const taken = new Set(disks.map((d) => d.targetDev));
  for (let i = 0; i < MAX_TARGETS; i++) {
    const t = targetName(prefix, i);
    if (!taken.has(t)) return t;
  }
  return undefined;
}
