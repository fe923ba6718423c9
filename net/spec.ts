import { createHash } from 'node:crypto';
import { ValidationError } from '../core/errors.js';
import type { NicId, SandboxId } from '../core/ids.js';
import { defaultMac, isNicTapName } from './naming.js';

// The body of PUT /v1/sandboxes/{sandboxId}/nics/{nicId}, validated field by field. Every error
// names the field in the request's own spelling (`hostInterface.bridge`).
//
//   { mac?: "52:54:00:12:34:56",
//     hostInterface: { type: "tap", name?: "tap0" } | { type: "tap", bridge?: "br0" },
//     mtu?: 1500, queues?: 1 }
//
// Exactly one of hostInterface.name (an existing tap: vmplug uses it and never deletes it) and
// hostInterface.bridge (vmplug creates its own tap, enslaves it to that existing bridge and
// deletes it on detach).

export type HostInterface =
  | { type: 'tap'; mode: 'existing'; name: string }
  | { type: 'tap'; mode: 'bridge'; bridge: string };

export interface NicSpec {
  /** Always set after parsing: the request's MAC (lower case) or the derived default. */
  mac: string;
  hostInterface: HostInterface;
  mtu?: number;
  queues: 1;
}

/** The request's own spelling, as the API shows it back. */
export interface NicSpecInput {
  mac?: string;
  hostInterface: { type: 'tap'; name?: string; bridge?: string };
  mtu?: number;
  queues?: 1;
}

export const MTU_MIN = 68;
export const MTU_MAX = 65535;
const IFNAME_MAX = 15;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function rejectUnknown(obj: Record<string, unknown>, allowed: readonly string[], prefix: string): void {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) throw new ValidationError(`${prefix}${k}`, 'is not a known field');
  }
}

/** Why `name` is not a Linux interface name, or undefined. */
export function ifnameProblem(name: unknown): string | undefined {
  if (typeof name !== 'string') return 'must be a string';
  if (name.length === 0) return 'must not be empty';
  if (name.length > IFNAME_MAX) return `must be at most ${IFNAME_MAX} characters (IFNAMSIZ)`;
  // The kernel refuses "/", ":" and white space (dev_valid_name); vmplug also keeps "." and ".."
  // out and holds names to a plain alphabet, since they reach argv, QEMU options and logs.
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(name) || name === '.' || name === '..') {
    return 'must start with a letter or digit and hold only letters, digits, "_", "." and "-"';
  }
  return undefined;
}

/** A unicast MAC in xx:xx:xx:xx:xx:xx form, lower-cased; undefined with the problem otherwise. */
export function macProblem(mac: unknown): string | undefined {
  if (typeof mac !== 'string') return 'must be a string';
  if (!/^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$/.test(mac)) return 'must be six hex octets separated by ":"';
  const first = Number.parseInt(mac.slice(0, 2), 16);
  if ((first & 1) === 1) return 'must be a unicast address (the lowest bit of the first octet clear)';
  if (/^00(:00){5}$/.test(mac)) return 'must not be all zeros';
  return undefined;
}

export function parseNicSpec(body: unknown, sandboxId: SandboxId, nicId: NicId): NicSpec {
  if (!isObject(body)) throw new ValidationError('body', 'must be a JSON object');
  rejectUnknown(body, ['mac', 'hostInterface', 'mtu', 'queues'], '');
  let mac: string;
  if (body.mac === undefined) mac = defaultMac(sandboxId, nicId);
  else {
    const p = macProblem(body.mac);
    if (p !== undefined) throw new ValidationError('mac', p);
    mac = (body.mac as string).toLowerCase();
  }
  const hi = body.hostInterface;
  if (hi === undefined) throw new ValidationError('hostInterface', 'is required');
  if (!isObject(hi)) throw new ValidationError('hostInterface', 'must be an object');
  rejectUnknown(hi, ['type', 'name', 'bridge'], 'hostInterface.');
  if (hi.type !== 'tap') throw new ValidationError('hostInterface.type', 'must be "tap"');
  let hostInterface: HostInterface;
  if (hi.name !== undefined && hi.bridge !== undefined) {
    throw new ValidationError(
      'hostInterface',
      'give either name (an existing tap) or bridge (vmplug creates the tap), not both',
    );
  } else if (hi.name !== undefined) {
    const p = ifnameProblem(hi.name);
    if (p !== undefined) throw new ValidationError('hostInterface.name', p);
    // vmplug's own taps are its to create and delete; naming one as "existing" would let two NICs
    // share it or leave it to a reconcile that deletes it.
    if (isNicTapName(hi.name as string)) {
      throw new ValidationError('hostInterface.name', 'names a tap vmplug manages itself (vmpt...)');
    }
    hostInterface = { type: 'tap', mode: 'existing', name: hi.name as string };
  } else if (hi.bridge !== undefined) {
    const p = ifnameProblem(hi.bridge);
    if (p !== undefined) throw new ValidationError('hostInterface.bridge', p);
    hostInterface = { type: 'tap', mode: 'bridge', bridge: hi.bridge as string };
  } else {
    throw new ValidationError('hostInterface', 'needs name (an existing tap) or bridge');
  }
  const spec: NicSpec = { mac, hostInterface, queues: 1 };
  if (body.mtu !== undefined) {
    const m = body.mtu;
    if (typeof m !== 'number' || !Number.isInteger(m) || m < MTU_MIN || m > MTU_MAX) {
      throw new ValidationError('mtu', `must be a whole number from ${MTU_MIN} to ${MTU_MAX}`);
    }
    spec.mtu = m;
  }
  if (body.queues !== undefined && body.queues !== 1) {
    // Multiqueue needs a multi_queue tap, one fd per queue and vectors=2n+2; not built yet.
    throw new ValidationError('queues', 'must be 1 (multiqueue is not supported yet)');
  }
  return spec;
}

/** The spec in the API's spelling. */
export function specToInput(spec: NicSpec): NicSpecInput {
  const hi = spec.hostInterface;
  const out: NicSpecInput = {
    mac: spec.mac,
    hostInterface:
      hi.mode === 'existing' ? { type: 'tap', name: hi.name } : { type: 'tap', bridge: hi.bridge },
    queues: spec.queues,
  };
  if (spec.mtu !== undefined) out.mtu = spec.mtu;
  return out;
}

/** Equal specs (after defaults) have equal fingerprints: the idempotency check of attach. */
export function nicSpecFingerprint(spec: NicSpec): string {
  const canonical = JSON.stringify([
    spec.mac,
    spec.hostInterface.mode,
    spec.hostInterface.mode === 'existing' ? spec.hostInterface.name : spec.hostInterface.bridge,
    spec.mtu ?? null,
    spec.queues,
  ]);
  return createHash('sha256').update(canonical).digest('hex');
}
