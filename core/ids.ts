import { ValidationError } from './errors.js';

// Ids reach file names (journal), QEMU object names (hashed, see naming.ts), URLs and logs, so
// they are checked once, at the edge, and carried branded afterwards.
//
// The rule, for every kind of id: 1 to 128 characters from [A-Za-z0-9_.-], starting with a letter
// or digit, and no "..". It is the rule bin/vmplug-qemu applies to sandbox ids, so any sandbox the
// wrapper gave a monitor is addressable. It admits:
//   - Kata sandbox ids (64 hex digits) and libvirt domain names made of that alphabet (dots
//     included); libvirt names with spaces, slashes or other characters are not managed;
//   - CSI volume ids such as 0001-0009-rook-ceph-0000000000000001-<uuid> (73 chars) and PV names
//     such as pvc-<uuid>.
// Because an id never starts with a dot, journal temp and quarantine files (which do) can never
// be mistaken for a record. Ids are case-sensitive and never rewritten.

declare const brand: unique symbol;
type Brand<T, B extends string> = T & { readonly [brand]: B };

export type SandboxId = Brand<string, 'SandboxId'>;
export type VolumeId = Brand<string, 'VolumeId'>;
export type NicId = Brand<string, 'NicId'>;
/** A Kubernetes Pod UID (RFC 4122 UUID), always lower-cased: one pod, one spelling. */
export type PodUid = Brand<string, 'PodUid'>;

export const ID_MAX_LENGTH = 128;
const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** Why `value` is not a valid id, or undefined when it is. */
export function idProblem(value: unknown): string | undefined {
  if (typeof value !== 'string') return 'must be a string';
  if (value.length === 0) return 'must not be empty';
  if (value.length > ID_MAX_LENGTH) return `must be at most ${ID_MAX_LENGTH} characters`;
  if (!ID_PATTERN.test(value)) {
    return 'must start with a letter or digit and hold only letters, digits, "_", "." and "-"';
  }
  if (value.includes('..')) return 'must not contain ".."';
  return undefined;
}

function parseId<T extends string>(value: unknown, field: string): T {
  const problem = idProblem(value);
  if (problem !== undefined) throw new ValidationError(field, problem, 'INVALID_ID');
  return value as T;
}

export function parseSandboxId(value: unknown, field = 'sandboxId'): SandboxId {
  return parseId<SandboxId>(value, field);
}

export function parseVolumeId(value: unknown, field = 'volumeId'): VolumeId {
  return parseId<VolumeId>(value, field);
}

export function parseNicId(value: unknown, field = 'nicId'): NicId {
  return parseId<NicId>(value, field);
}

export function isSandboxId(value: unknown): value is SandboxId {
  return idProblem(value) === undefined;
}

export function isVolumeId(value: unknown): value is VolumeId {
  return idProblem(value) === undefined;
}

export function isNicId(value: unknown): value is NicId {
  return idProblem(value) === undefined;
}

const POD_UID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A pod UID from a URL or body: a UUID in any case, returned lower-cased; else 400 INVALID_ID. */
export function parsePodUid(value: unknown, field = 'podUid'): PodUid {
  if (typeof value !== 'string' || !POD_UID.test(value)) {
    throw new ValidationError(field, 'must be a UUID (RFC 4122), as Kubernetes gives a Pod', 'INVALID_ID');
  }
  return value.toLowerCase() as PodUid;
}

export function isPodUid(value: unknown): value is PodUid {
  return typeof value === 'string' && POD_UID.test(value) && value === value.toLowerCase();
}
