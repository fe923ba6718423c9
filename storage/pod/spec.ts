import { createHash } from 'node:crypto';
import { posix } from 'node:path';
import { FS_TYPES, type FsType, POD_LIMITS } from '../../api/index.js';
import { ValidationError } from '../../core/errors.js';
import type { PodUid } from '../../core/ids.js';
import {
  type AttachSpec,
  type PodRef,
  parseAttachRequest,
  parsePodRef,
  type StoredSpec,
  specFingerprint,
  toStoredSpec,
} from '../volume-spec.js';

// The publish request of DESIGN §5b: the `mode` and `source` of an attach (one parser for both,
// same rules and codes), plus where and how the volume is mounted. Every rejection names the
// field; nothing is journalled before this parser and the host-device check have passed.

export const DEFAULT_KUBELET_ROOT = '/var/lib/kubelet';

export interface PublishSpec {
  /** mode + source + readOnly, as an attach spec (bus is not the publisher's to choose). */
  volume: AttachSpec;
  targetPath: string;
  fsType: FsType;
  mountOptions: string[];
  /** Where Events go; not part of what is published (a retry that adds it is the same). */
  pod?: PodRef;
}

export interface StoredPublishSpec {
  volume: StoredSpec;
  targetPath: string;
  fsType: FsType;
  mountOptions: string[];
}

const TOP_FIELDS = new Set([
  'mode',
  'source',
  'readOnly',
  'annotations',
  'targetPath',
  'fsType',
  'mountOptions',
  'pod',
]);
const POD_FIELDS = new Set(['name', 'namespace', 'uid']);

export function parsePublishRequest(body: unknown, podUid: PodUid, kubeletRoot: string): PublishSpec {
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw new ValidationError('(body)', 'must be an object');
  const top = body as Record<string, unknown>;
  for (const k of Object.keys(top)) {
    if (!TOP_FIELDS.has(k)) throw new ValidationError(printable(k), 'is not a known field');
  }
  const { mode, source, readOnly, annotations } = top;
  const volume = parseAttachRequest(
    Object.fromEntries(
      Object.entries({ mode, source, readOnly, annotations }).filter(([, v]) => v !== undefined),
    ),
  );
  const spec: PublishSpec = {
    volume,
    targetPath: parseTargetPath(top.targetPath, podUid, kubeletRoot),
    fsType: parseFsType(top.fsType),
    mountOptions: parseMountOptions(top.mountOptions),
  };
  const pod = parsePublishPod(top.pod, podUid);
  if (pod !== undefined) spec.pod = pod;
  return spec;
}

/**
 * The CSI mount path kubelet gives NodePublishVolume for a pod's volume:
 * `<kubeletRoot>/pods/<podUid>/volumes/kubernetes.io~csi/<volume name>/mount`, of THIS pod,
 * already normalized (Kata finds the record by the exact mount source, so a path that merely
 * resolves to the same place would be a record nobody reads).
 */
export function parseTargetPath(
  v: unknown,
  podUid: PodUid,
  kubeletRoot: string,
  field = 'targetPath',
): string {
  if (typeof v !== 'string' || v === '') throw new ValidationError(field, 'is required');
  if (v.length > POD_LIMITS.targetPath)
    throw new ValidationError(field, `must be at most ${POD_LIMITS.targetPath} characters`);
  if (v.includes('\0')) throw new ValidationError(field, 'must not contain NUL');
  if (!v.startsWith('/')) throw new ValidationError(field, 'must be an absolute path');
  if (v.split('/').includes('..')) throw new ValidationError(field, 'must not contain ".."');
  if (posix.normalize(v) !== v || v.endsWith('/'))
    throw new ValidationError(field, 'must be a normalized path');
  const prefix = `${kubeletRoot === '/' ? '' : kubeletRoot}/pods/`;
  if (!v.startsWith(prefix))
    throw new ValidationError(field, `must lie under the kubelet root ${kubeletRoot}/pods/`);
  const parts = v.slice(prefix.length).split('/');
  if (
    parts.length !== 5 ||
    parts[1] !== 'volumes' ||
    parts[2] !== 'kubernetes.io~csi' ||
    parts[4] !== 'mount'
  ) {
    throw new ValidationError(
      field,
      `must be ${prefix}<podUid>/volumes/kubernetes.io~csi/<volume name>/mount (the CSI NodePublish target path)`,
    );
  }
  if (parts[0]?.toLowerCase() !== podUid)
    throw new ValidationError(field, `is the path of another pod than ${podUid}`);
  const name = parts[3] ?? '';
  if (
    name.length === 0 ||
    name.length > POD_LIMITS.csiVolumeName ||
    !/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(name)
  ) {
    throw new ValidationError(field, 'has a volume name that is not a Kubernetes volume name');
  }
  return v;
}

export function parseFsType(v: unknown, field = 'fsType'): FsType {
  // CSI leaves fs_type empty to mean "the driver's default": ext4, as most drivers do.
  if (v === undefined || v === null || v === '') return 'ext4';
  if (typeof v !== 'string' || !(FS_TYPES as readonly string[]).includes(v)) {
    throw new ValidationError(field, `must be one of ${FS_TYPES.join(', ')}`);
  }
  return v as FsType;
}

// Mount options go into the record's `options` and from there to the guest's mount(2): plain
// `name` or `name=value` tokens only, no commas (one option each), and never ro/rw (that is
// `readOnly`'s to say, so the two can never disagree).
const MOUNT_OPTION = /^[a-z0-9_]+(?:=[A-Za-z0-9_.:/+@-]+)?$/;

export function parseMountOptions(v: unknown, field = 'mountOptions'): string[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new ValidationError(field, 'must be an array of strings');
  if (v.length > POD_LIMITS.mountOptions)
    throw new ValidationError(field, `must hold at most ${POD_LIMITS.mountOptions} options`);
  const seen = new Set<string>();
  return v.map((o, i) => {
    const f = `${field}[${i}]`;
    if (typeof o !== 'string') throw new ValidationError(f, 'must be a string');
    if (o.length === 0 || o.length > POD_LIMITS.mountOption)
      throw new ValidationError(f, `must be 1 to ${POD_LIMITS.mountOption} characters`);
    if (o === 'ro' || o === 'rw') throw new ValidationError(f, 'say readOnly instead of ro/rw');
    if (!MOUNT_OPTION.test(o))
      throw new ValidationError(f, 'must be one mount option, "name" or "name=value"');
    if (seen.has(o)) throw new ValidationError(f, 'duplicates an earlier option');
    seen.add(o);
    return o;
  });
}

function parsePublishPod(v: unknown, podUid: PodUid): PodRef | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'object' || Array.isArray(v)) throw new ValidationError('pod', 'must be an object');
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (!POD_FIELDS.has(k)) throw new ValidationError(`pod.${printable(k)}`, 'is not a known field');
  }
  if (o.uid !== undefined && (typeof o.uid !== 'string' || o.uid.toLowerCase() !== podUid)) {
    throw new ValidationError('pod.uid', 'must be the podUid of the URL (or left out)');
  }
  return parsePodRef({ ...o, uid: podUid });
}

/** The record's `options`: rw/ro first (from readOnly), then the caller's. */
export function recordOptions(spec: Pick<PublishSpec, 'volume' | 'mountOptions'>): string[] {
  return [spec.volume.readOnly ? 'ro' : 'rw', ...spec.mountOptions];
}

export function toStoredPublishSpec(spec: PublishSpec): StoredPublishSpec {
  return {
    volume: toStoredSpec(spec.volume),
    targetPath: spec.targetPath,
    fsType: spec.fsType,
    mountOptions: [...spec.mountOptions],
  };
}

/** Same publish: same volume (keyed, as attaches), same target path, filesystem and options. */
export function publishFingerprint(spec: PublishSpec, fingerprintKey: Uint8Array): string {
  const canonical = [
    'pod-v1',
    specFingerprint(spec.volume, fingerprintKey),
    spec.targetPath,
    spec.fsType,
    spec.mountOptions,
  ];
  return `v1:${createHash('sha256').update(JSON.stringify(canonical)).digest('hex')}`;
}

function printable(s: string): string {
  const cut = s.length > 64 ? `${s.slice(0, 64)}…` : s;
  return JSON.stringify(cut).slice(1, -1);
}
