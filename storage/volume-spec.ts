import { createHash, createHmac } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import { posix } from 'node:path';
import { inspect } from 'node:util';
import { type Bus, DIRECT_MODE_ANNOTATION, LIMITS, type Mode, type PodRef } from '../api/index.js';
import { type Redactable, ValidationError } from '../core/errors.js';

export { type Bus, DIRECT_MODE_ANNOTATION, LIMITS, type Mode, type PodRef };

// The attach request of DESIGN section 5 as types that cannot hold a bad state, and the one
// parser that builds them. Every rejection names the field in the request's own spelling.

/**
 * A cephx key. Its value leaves only through `reveal()` (for QEMU's secret object); printing,
 * JSON, util.inspect and template strings all show "[redacted]".
 */
export class Secret implements Redactable {
  readonly #value: string;

  constructor(value: string) {
    this.#value = value;
  }

  reveal(): string {
    return this.#value;
  }

  /** `text` with every occurrence of the value cut out (for backend messages that might echo it). */
  redactFrom(text: string): string {
    return this.#value.length === 0 ? text : text.replaceAll(this.#value, '[redacted]');
  }

  toString(): string {
    return '[redacted]';
  }

  toJSON(): string {
    return '[redacted]';
  }

  [inspect.custom](): string {
    return '[redacted]';
  }
}

export interface Monitor {
  /** IPv4 dotted quad, IPv6 without brackets, or a DNS name. */
  host: string;
  port: number;
}

export interface HostDeviceSource {
  type: 'hostDevice';
  path: string;
}

export interface RbdSource {
  type: 'rbd';
  pool: string;
  namespace?: string;
  image: string;
  snapshot?: string;
  monitors: Monitor[];
  user: string;
  key: Secret;
}

export type VolumeSource = HostDeviceSource | RbdSource;

/** Mode and source travel together so that `block` + `rbd` cannot be written down. */
export type AttachSpec =
  | { mode: 'block'; source: HostDeviceSource; readOnly: boolean; bus: Bus; pod?: PodRef }
  | { mode: 'rbd'; source: RbdSource; readOnly: boolean; bus: Bus; pod?: PodRef };

/** What may be stored and shown: the spec without the key. */
export type StoredSource = HostDeviceSource | Omit<RbdSource, 'key'>;
export type StoredSpec =
  | { mode: 'block'; source: HostDeviceSource; readOnly: boolean; bus: Bus }
  | { mode: 'rbd'; source: Omit<RbdSource, 'key'>; readOnly: boolean; bus: Bus };

export function toStoredSpec(spec: AttachSpec): StoredSpec {
  // The pod is kept beside the spec (journal record `pod`), not in it.
  if (spec.mode === 'block') {
    return { mode: 'block', source: { ...spec.source }, readOnly: spec.readOnly, bus: spec.bus };
  }
  const { key: _key, ...source } = spec.source;
  return {
    mode: 'rbd',
    source: { ...source, monitors: source.monitors.map((m) => ({ ...m })) },
    readOnly: spec.readOnly,
    bus: spec.bus,
  };
}

const TOP_FIELDS = new Set(['mode', 'source', 'readOnly', 'bus', 'annotations', 'pod']);
const POD_FIELDS = new Set(['uid', 'name', 'namespace']);
const HOST_DEVICE_FIELDS = new Set(['type', 'path']);
const RBD_FIELDS = new Set(['type', 'pool', 'namespace', 'image', 'snapshot', 'monitors', 'user', 'key']);

/**
 * Validates a decoded JSON attach body. Unknown fields are refused (a typo such as `readonly`
 * must not silently attach read-write).
 */
export function parseAttachRequest(body: unknown): AttachSpec {
  const top = record(body, '(body)');
  rejectUnknown(top, TOP_FIELDS, '');
  const mode = resolveMode(top.mode, top.annotations);
  const readOnly = optionalBoolean(top.readOnly, 'readOnly') ?? false;
  const bus = parseBus(top.bus);
  const pod = top.pod === undefined || top.pod === null ? undefined : parsePodRef(top.pod);
  const withPod = <T extends object>(spec: T): T & { pod?: PodRef } =>
    pod === undefined ? spec : { ...spec, pod };
  const src = record(top.source, 'source');
  const type = src.type;
  if (type !== 'hostDevice' && type !== 'rbd') {
    throw new ValidationError('source.type', 'must be "hostDevice" or "rbd"');
  }
  const expected = type === 'hostDevice' ? 'block' : 'rbd';
  if (mode !== expected) {
    throw new ValidationError(
      'mode',
      `mode "${mode}" needs a source of type "${mode === 'block' ? 'hostDevice' : 'rbd'}", got "${type}"`,
      'MODE_MISMATCH',
    );
  }
  if (type === 'hostDevice') {
    rejectUnknown(src, HOST_DEVICE_FIELDS, 'source.');
    return withPod({
      mode: 'block' as const,
      source: { type, path: parseHostDevicePath(src.path) },
      readOnly,
      bus,
    });
  }
  rejectUnknown(src, RBD_FIELDS, 'source.');
  const source: RbdSource = {
    type,
    pool: parseCephName(src.pool, 'source.pool'),
    image: parseCephName(src.image, 'source.image'),
    monitors: parseMonitors(src.monitors),
    user: parseCephUser(src.user),
    key: parseCephxKey(src.key),
  };
  const namespace = optionalCephName(src.namespace, 'source.namespace');
  if (namespace !== undefined) source.namespace = namespace;
  const snapshot = optionalCephName(src.snapshot, 'source.snapshot');
  if (snapshot !== undefined) {
    source.snapshot = snapshot;
    // librbd opens snapshots read-only only; refuse rather than silently flip the flag.
    if (!readOnly) throw new ValidationError('readOnly', 'an RBD snapshot can only be attached read-only');
  }
  return withPod({ mode: 'rbd' as const, source, readOnly, bus });
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const DNS1123_LABEL = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*$/;

/**
 * The `pod` of an attach request (and of a stored record): a UUID as Kubernetes assigns it
 * (lower-cased, so that one pod has one spelling), a name as Kubernetes allows for Pods
 * (DNS-1123 subdomain) and a namespace (DNS-1123 label). Fields are named `<prefix>uid` etc.
 */
export function parsePodRef(v: unknown, prefix = 'pod'): PodRef {
  const o = record(v, prefix);
  rejectUnknown(o, POD_FIELDS, `${prefix}.`);
  const uid = string(o.uid, `${prefix}.uid`);
  if (!UUID.test(uid)) throw new ValidationError(`${prefix}.uid`, 'must be a UUID (RFC 4122)');
  const pod: PodRef = { uid: uid.toLowerCase() };
  if (o.name !== undefined && o.name !== null && o.name !== '') {
    pod.name = dnsName(o.name, `${prefix}.name`, LIMITS.podName, DNS1123_SUBDOMAIN, 'subdomain');
  }
  if (o.namespace !== undefined && o.namespace !== null && o.namespace !== '') {
    pod.namespace = dnsName(o.namespace, `${prefix}.namespace`, LIMITS.podNamespace, DNS1123_LABEL, 'label');
  }
  return pod;
}

function dnsName(v: unknown, field: string, max: number, shape: RegExp, kind: string): string {
  const s = string(v, field);
  if (s.length > max) throw new ValidationError(field, `must be at most ${max} characters`);
  if (!shape.test(s)) {
    throw new ValidationError(
      field,
      `must be a DNS-1123 ${kind} (lower-case letters, digits, "-"${kind === 'subdomain' ? ', "."' : ''})`,
    );
  }
  return s;
}

function resolveMode(mode: unknown, annotations: unknown): Mode {
  const annotationField = `annotations['${DIRECT_MODE_ANNOTATION}']`;
  let fromAnnotation: unknown;
  if (annotations !== undefined) {
    const a = record(annotations, 'annotations');
    fromAnnotation = a[DIRECT_MODE_ANNOTATION];
    if (fromAnnotation !== undefined && !isMode(fromAnnotation)) {
      throw notPassthrough(annotationField, fromAnnotation);
    }
  }
  if (mode !== undefined && !isMode(mode)) throw notPassthrough('mode', mode);
  if (mode !== undefined && fromAnnotation !== undefined && mode !== fromAnnotation) {
    throw new ValidationError(
      'mode',
      `"${mode}" contradicts ${annotationField} "${fromAnnotation}"`,
      'MODE_MISMATCH',
    );
  }
  const resolved = mode ?? fromAnnotation;
  if (resolved === undefined) {
    throw new ValidationError(
      'mode',
      `not a passthrough volume: give mode "block" or "rbd", or the ${DIRECT_MODE_ANNOTATION} annotation`,
      'NOT_PASSTHROUGH',
    );
  }
  return resolved as Mode;
}

function isMode(v: unknown): v is Mode {
  return v === 'block' || v === 'rbd';
}

function notPassthrough(field: string, value: unknown): ValidationError {
  const shown = typeof value === 'string' ? `"${printable(value)}"` : typeof value;
  return new ValidationError(
    field,
    `not a passthrough volume: ${shown} is not "block" or "rbd"`,
    'NOT_PASSTHROUGH',
  );
}

function parseBus(v: unknown): Bus {
  if (v === undefined) return 'auto';
  if (v === 'auto' || v === 'scsi' || v === 'virtio-blk') return v;
  throw new ValidationError('bus', 'must be "auto", "scsi" or "virtio-blk"');
}

// Paths under /dev only, already normalized (no ".", "..", "//", trailing "/"), and from the
// characters device nodes and udev links actually use (/dev/disk/by-path/pci-0000:00:1f.2-ata-1,
// /dev/mapper/vg-lv, /dev/rbd/pool/image).
const DEV_PATH = /^\/dev\/[A-Za-z0-9_.:+@-]+(\/[A-Za-z0-9_.:+@-]+)*$/;

export function parseHostDevicePath(v: unknown, field = 'source.path'): string {
  const s = string(v, field);
  if (s.length > LIMITS.hostDevicePath) {
    throw new ValidationError(field, `must be at most ${LIMITS.hostDevicePath} characters`);
  }
  if (!s.startsWith('/dev/')) throw new ValidationError(field, 'must be an absolute path under /dev/');
  if (s.split('/').includes('..')) throw new ValidationError(field, 'must not contain ".."');
  if (posix.normalize(s) !== s || s.endsWith('/'))
    throw new ValidationError(field, 'must be a normalized path');
  if (!DEV_PATH.test(s)) {
    throw new ValidationError(field, 'may hold only letters, digits, "/", "_", ".", ":", "+", "@" and "-"');
  }
  return s;
}

// Ceph itself accepts nearly any pool/image/snapshot name; vmplug takes the subset that CSI
// drivers generate and that is safe everywhere it is echoed: [A-Za-z0-9_.-], not starting with
// "." or "-", bounded.
const CEPH_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;

export function parseCephName(v: unknown, field: string, max: number = LIMITS.cephName): string {
  const s = string(v, field);
  if (s.length === 0) throw new ValidationError(field, 'must not be empty');
  if (s.length > max) throw new ValidationError(field, `must be at most ${max} characters`);
  if (!CEPH_NAME.test(s)) {
    throw new ValidationError(
      field,
      'must start with a letter, digit or "_" and hold only letters, digits, "_", "." and "-"',
    );
  }
  return s;
}

/** Optional names: absent, null or "" all mean "none" (the design's example sends ""). */
function optionalCephName(v: unknown, field: string): string | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  return parseCephName(v, field);
}

export function parseCephUser(v: unknown, field = 'source.user'): string {
  const s = string(v, field);
  // QEMU passes `user` to rados_create() as the id: "client.admin" would become client.client.admin.
  if (s.startsWith('client.')) {
    throw new ValidationError(field, 'give the cephx id without the "client." prefix');
  }
  return parseCephName(s, field, LIMITS.cephUser);
}

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * A cephx key as `ceph auth get-key` prints it: base64 of a CryptoKey blob, le16 type (1 = AES),
 * 8 bytes of creation time, le16 secret length, then the secret (16 bytes today, 40 base64
 * characters in all). Checked for shape, not for one exact length, so a longer future key type
 * passes. Surrounding whitespace (a trailing newline from a file) is trimmed.
 */
export function parseCephxKey(v: unknown, field = 'source.key'): Secret {
  if (v === undefined || v === null || v === '') throw new ValidationError(field, 'is required');
  if (typeof v !== 'string') throw new ValidationError(field, 'must be a string');
  const s = v.trim();
  if (s.length > 256 || !BASE64.test(s)) {
    throw new ValidationError(field, 'must be a base64 cephx key as printed by `ceph auth get-key`');
  }
  const blob = Buffer.from(s, 'base64');
  if (blob.length < 12) throw new ValidationError(field, 'is too short to be a cephx key');
  const type = blob.readUInt16LE(0);
  const len = blob.readUInt16LE(10);
  if (type === 0 || len < 16 || blob.length !== 12 + len) {
    throw new ValidationError(field, 'is base64 but not a cephx key (`ceph auth get-key` prints one)');
  }
  return new Secret(s);
}

const HOSTNAME_LABEL = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

/**
 * Monitors as `host:port`, `[ipv6]:port`. A `v1:`/`v2:` messenger prefix is accepted only with
 * its standard port (v1:…:6789, v2:…:3300) and dropped: QEMU hands librados bare host:port, and
 * librados picks the protocol from exactly those ports. Any other prefixed address cannot be
 * expressed through QEMU and is refused. Duplicates are refused.
 */
export function parseMonitors(v: unknown, field = 'source.monitors'): Monitor[] {
  if (!Array.isArray(v)) throw new ValidationError(field, 'must be an array of "host:port" strings');
  if (v.length === 0) throw new ValidationError(field, 'must name at least one monitor');
  if (v.length > LIMITS.monitors)
    throw new ValidationError(field, `must name at most ${LIMITS.monitors} monitors`);
  const seen = new Set<string>();
  return v.map((item, i) => {
    const f = `${field}[${i}]`;
    const m = parseMonitor(item, f);
    const k = `${m.host.toLowerCase()}|${m.port}`;
    if (seen.has(k)) throw new ValidationError(f, 'duplicates an earlier monitor');
    seen.add(k);
    return m;
  });
}

export function parseMonitor(v: unknown, field: string): Monitor {
  let s = string(v, field);
  if (s.length > LIMITS.hostname + 16) throw new ValidationError(field, 'is too long');
  let prefixPort: number | undefined;
  const prefix = /^(v[12]):/.exec(s);
  if (prefix) {
    prefixPort = prefix[1] === 'v1' ? 6789 : 3300;
    s = s.slice(3);
  }
  let host: string;
  let portText: string;
  if (s.startsWith('[')) {
    const close = s.indexOf(']');
    if (close < 0 || s[close + 1] !== ':') throw new ValidationError(field, 'must be "[ipv6]:port"');
    host = s.slice(1, close);
    portText = s.slice(close + 2);
    if (!isIPv6(host) || host.includes('%')) throw new ValidationError(field, 'has an invalid IPv6 address');
  } else {
    const colon = s.lastIndexOf(':');
    if (colon < 0) throw new ValidationError(field, 'must be "host:port" (the port is required)');
    host = s.slice(0, colon);
    portText = s.slice(colon + 1);
    if (host.includes(':'))
      throw new ValidationError(field, 'an IPv6 address must be in brackets: "[ipv6]:port"');
    if (!isIPv4(host) && !isHostname(host)) throw new ValidationError(field, 'has an invalid host');
  }
  if (!/^[0-9]{1,5}$/.test(portText)) throw new ValidationError(field, 'has an invalid port');
  const port = Number(portText);
  if (port < 1 || port > 65535) throw new ValidationError(field, 'port must be 1-65535');
  if (prefixPort !== undefined && port !== prefixPort) {
    throw new ValidationError(
      field,
      `a ${prefix?.[1]}: address is only accepted on port ${prefixPort}: QEMU passes host:port and Ceph picks the protocol from the port`,
    );
  }
  return { host, port };
}

function isHostname(h: string): boolean {
  if (h.length === 0 || h.length > LIMITS.hostname) return false;
  const labels = h.split('.');
  // A name of digits and dots that is not a valid IPv4 address (999.1.1.1) is a typo, not a host.
  if (labels.every((l) => /^[0-9]+$/.test(l))) return false;
  return labels.every((l) => HOSTNAME_LABEL.test(l));
}

/** How a monitor is written back (journal, responses, logs). */
export function formatMonitor(m: Monitor): string {
  return m.host.includes(':') ? `[${m.host}]:${m.port}` : `${m.host}:${m.port}`;
}

/**
 * A stable digest of the spec for idempotency (same spec: same value; any difference: another
 * value). The key enters only as HMAC(fingerprintKey, key), so the fingerprint may be stored and
 * shown; `fingerprintKey` is a per-node random secret kept in the state directory (see journal).
 * Monitor order does not matter; absent and "" namespace/snapshot are the same.
 */
export function specFingerprint(spec: AttachSpec, fingerprintKey: Uint8Array): string {
  if (fingerprintKey.length < 16) throw new RangeError('fingerprint key must be at least 16 bytes');
  const canonical: unknown[] = ['v1', spec.mode, spec.readOnly, spec.bus];
  if (spec.mode === 'block') {
    canonical.push(spec.source.path);
  } else {
    const s = spec.source;
    const keyMac = createHmac('sha256', fingerprintKey)
      .update('cephx-key\0')
      .update(s.key.reveal())
      .digest('hex');
    const monitors = s.monitors
      .map((m) => formatMonitor({ host: m.host.toLowerCase(), port: m.port }))
      .sort();
    canonical.push(s.pool, s.namespace ?? '', s.image, s.snapshot ?? '', monitors, s.user, keyMac);
  }
  return `v1:${createHash('sha256').update(JSON.stringify(canonical)).digest('hex')}`;
}

function record(v: unknown, field: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    throw new ValidationError(field, 'must be an object');
  return v as Record<string, unknown>;
}

function rejectUnknown(o: Record<string, unknown>, known: ReadonlySet<string>, prefix: string): void {
  for (const k of Object.keys(o)) {
    if (!known.has(k)) throw new ValidationError(`${prefix}${printable(k)}`, 'is not a known field');
  }
}

function string(v: unknown, field: string): string {
  if (v === undefined || v === null) throw new ValidationError(field, 'is required');
  if (typeof v !== 'string') throw new ValidationError(field, 'must be a string');
  return v;
}

function optionalBoolean(v: unknown, field: string): boolean | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw new ValidationError(field, 'must be true or false');
  return v;
}

/** Client-supplied text echoed in an error: bounded, control characters escaped. */
function printable(s: string): string {
  const cut = s.length > 64 ? `${s.slice(0, 64)}…` : s;
  return JSON.stringify(cut).slice(1, -1);
}
