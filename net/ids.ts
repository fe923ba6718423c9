import { InvalidNicSpecError } from './errors.js';

// Ids reach journal file names, QEMU names (hashed) and logs, so they are checked at the edge and
// carried branded. The rule is the one core/ids.ts and bin/vmplug-qemu apply (1 to 128 of
// [A-Za-z0-9_.-], a letter or digit first, no ".."), restated here because net/ may import only
// qmp/: a sandbox id valid for storage is valid here and the other way round.

declare const brand: unique symbol;
type Brand<T, B extends string> = T & { readonly [brand]: B };

export type NetSandboxId = Brand<string, 'NetSandboxId'>;
export type NicId = Brand<string, 'NicId'>;

const ID_MAX_LENGTH = 128;
const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

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
  if (problem !== undefined) throw new InvalidNicSpecError(field, problem, 'INVALID_ID');
  return value as T;
}

export function parseNetSandboxId(value: unknown, field = 'sandboxId'): NetSandboxId {
  return parseId<NetSandboxId>(value, field);
}

export function parseNicId(value: unknown, field = 'nicId'): NicId {
  return parseId<NicId>(value, field);
}

export function isNicId(value: unknown): value is NicId {
  return idProblem(value) === undefined;
}

export function isNetSandboxId(value: unknown): value is NetSandboxId {
  return idProblem(value) === undefined;
}
