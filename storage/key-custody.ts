import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { BackendError } from '../core/errors.js';
import { parseCephxKey, type Secret } from './volume-spec.js';

// Where vmplugd keeps the cephx key of each published rbd pod volume between its own restarts
// (DESIGN §5b): the storage daemon of a published volume that dies must be started again, and that
// takes the key, which never goes to a file, an argv or a log. The kernel keyring holds it:
//
// - One keyring per vmplugd state directory, `vmplug:<stateDir>`, linked into the user keyring
//   of vmplugd's uid (`@u`, uid 0). @u lives as long as that uid has a process or a link, which for
//   root is until the host shuts down: the keys outlive vmplugd's exit and a restart of the
//   DaemonSet's container (a kernel object, not in the container's filesystem, and @u is per uid,
//   not per session like the session keyring a container runtime gives each container), and are
//   gone after a reboot (kernel memory only), when every storage daemon is gone too.
// - A key per export, type `user`, description `vmplug:<exportName>` (the export name is
//   stable for a pod volume: storage/pod/naming.ts), permissions possessor-all and owner-all, no
//   group or other access. Owner access is what lets a restarted vmplugd read it again: a new
//   process (or container) no longer "possesses" what the last one added.
// - A dedicated keyring rather than @u itself: listing it lists only vmplug's keys (the start-up
//   sweep removes those no intent explains), and unlinking it drops everything at once.
//
// Payloads cross into and out of the addon as Buffers that are zeroed after use; a key read back
// is a redacting `Secret` at once.

export interface KeyCustody {
  /** Keeps `key` for `name` (replaces one kept before). */
  put(name: string, key: Secret): Promise<void>;
  /** The key kept for `name`, if any. */
  get(name: string): Promise<Secret | undefined>;
  /** Forgets the key of `name`; unknown names succeed. */
  remove(name: string): Promise<void>;
  /** The names a key is kept for. */
  names(): Promise<string[]>;
  /** Where the keys are, for the start-up log line (`memory`, `kernel keyring vmplug:/x`). */
  readonly where: string;
}

const KEY_PREFIX = 'vmplug:';

/** The keyring of one vmplugd (its state directory): several test daemons never share one. */
export function keyringNameOf(stateDir: string): string {
  return `${KEY_PREFIX}${stateDir.replace(/\/+$/, '') || '/'}`;
}

export function keyDescriptionOf(name: string): string {
  return `${KEY_PREFIX}${name}`;
}

/** The export name of a key description of ours, or undefined for anything else. */
export function nameOfKeyDescription(description: string): string | undefined {
  if (!description.startsWith(KEY_PREFIX)) return undefined;
  const name = description.slice(KEY_PREFIX.length);
  return /^[a-z0-9][a-z0-9-]{0,63}$/.test(name) ? name : undefined;
}

/** Keys in vmplugd's memory only: lost with the process (the fallback without the addon, and tests). */
export class MemoryKeyCustody implements KeyCustody {
  readonly where = 'memory';
  readonly #keys = new Map<string, Secret>();
  async put(name: string, key: Secret): Promise<void> {
    this.#keys.set(name, key);
  }
  async get(name: string): Promise<Secret | undefined> {
    return this.#keys.get(name);
  }
  async remove(name: string): Promise<void> {
    this.#keys.delete(name);
  }
  async names(): Promise<string[]> {
    return [...this.#keys.keys()];
  }
}

/** The kernel-keyring addon (libvirt/native/src/keyring.cc). */
export interface KeyringAddon {
  search(ring: number, type: string, description: string): number | null;
  add(type: string, description: string, payload: Buffer | null, ring: number): number;
  read(serial: number): Buffer;
  list(ring: number): number[];
  describe(serial: number): { type: string; uid: number; description: string } | null;
  invalidate(serial: number): void;
  unlink(serial: number, ring: number): void;
  link(serial: number, ring: number): void;
  readonly USER_KEYRING: number;
  readonly SESSION_KEYRING: number;
}

/**
 * The keys in the kernel keyring. Every method runs its syscalls without yielding to the event
 * loop, so a put and a remove of this process never interleave (remove may unlink an emptied
 * keyring; a put re-creates it).
 */
export class KernelKeyCustody implements KeyCustody {
  readonly where: string;
  readonly #k: KeyringAddon;
  readonly #ringName: string;

  constructor(addon: KeyringAddon, ringName: string) {
    this.#k = addon;
    this.#ringName = ringName;
    this.where = `kernel keyring ${ringName} (@u)`;
  }

  async put(name: string, key: Secret): Promise<void> {
    const payload = Buffer.from(key.reveal(), 'utf8');
    try {
      this.#call('store the key', () =>
        this.#k.add('user', keyDescriptionOf(name), payload, this.#ring(true)),
      );
    } finally {
      payload.fill(0);
    }
  }

  async get(name: string): Promise<Secret | undefined> {
    const ring = this.#ring(false);
    if (ring === undefined) return undefined;
    const id = this.#call('find the key', () => this.#k.search(ring, 'user', keyDescriptionOf(name)));
    if (id === null) return undefined;
    let payload: Buffer | undefined;
    try {
      payload = this.#call('read the key', () => this.#k.read(id));
      const text = payload.toString('utf8');
      try {
        return parseCephxKey(text);
      } catch {
        throw new BackendError('kernel keyring', `the key kept for ${name} is not a cephx key`);
      }
    } finally {
      payload?.fill(0);
    }
  }

  async remove(name: string): Promise<void> {
    const ring = this.#ring(false);
    if (ring === undefined) return;
    const id = this.#call('find the key', () => this.#k.search(ring, 'user', keyDescriptionOf(name)));
    if (id !== null) {
      // Unlinked first: an invalidated key stays listed in its keyring until the kernel's gc ran.
      this.#call('unlink the key', () => this.#k.unlink(id, ring));
      // Then destroyed wherever else it may be linked (its payload is freed by the gc).
      this.#call('invalidate the key', () => this.#k.invalidate(id));
    }
    // An emptied keyring goes too: nothing of vmplug's stays in @u once nothing is published.
    if (this.#call('list the keyring', () => this.#k.list(ring)).length === 0) {
      this.#call('unlink the keyring', () => this.#k.unlink(ring, this.#k.USER_KEYRING));
    }
  }

  async names(): Promise<string[]> {
    const ring = this.#ring(false);
    if (ring === undefined) return [];
    const out: string[] = [];
    for (const id of this.#call('list the keyring', () => this.#k.list(ring))) {
      const d = this.#call('describe a key', () => this.#k.describe(id));
      const name = d?.type === 'user' ? nameOfKeyDescription(d.description) : undefined;
      if (name !== undefined) out.push(name);
    }
    return out;
  }

  #ring(create: true): number;
  #ring(create: false): number | undefined;
  #ring(create: boolean): number | undefined {
    const found = this.#call('find the keyring', () =>
      this.#k.search(this.#k.USER_KEYRING, 'keyring', this.#ringName),
    );
    if (found !== null) return found;
    if (!create) return undefined;
    return this.#call('create the keyring', () =>
      this.#k.add('keyring', this.#ringName, null, this.#k.USER_KEYRING),
    );
  }

  #call<T>(step: string, fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      if (err instanceof BackendError) throw err;
      throw new BackendError('kernel keyring', `${step}: ${keyringFailure(err)}`, { cause: err });
    }
  }
}

/** An addon error as a sentence an operator can act on (never the payload: the addon has none in it). */
export function keyringFailure(err: unknown): string {
  const code = (err as { code?: unknown })?.code;
  if (code === 'ENOSYS' || code === 'EPERM') {
    return `${String(code)}: the keyring syscalls are blocked (a container seccomp profile: vmplugd runs privileged, see docs/security.md)`;
  }
  if (code === 'EDQUOT')
    return 'EDQUOT: the key quota of the uid is used up (/proc/sys/kernel/keys/root_maxkeys)';
  return typeof code === 'string' ? code : ((err as Error)?.message ?? String(err));
}

function addonCandidates(): string[] {
  const rel = 'libvirt/native/build/Release/vmplug_keyring.node';
  const fromEnv = process.env.VMPLUG_KEYRING_ADDON;
  return [
    ...(fromEnv ? [fromEnv] : []),
    // Sources (storage/) and dist/storage/.
    fileURLToPath(new URL(`../${rel}`, import.meta.url)),
    fileURLToPath(new URL(`../../${rel}`, import.meta.url)),
  ];
}

/** The addon, or why there is none (not built). */
export function loadKeyringAddon(): { addon: KeyringAddon } | { missing: string } {
  const require = createRequire(import.meta.url);
  for (const path of addonCandidates()) {
    try {
      return { addon: require(path) as KeyringAddon };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND') continue;
      return { missing: `cannot load ${path}: ${(err as Error).message}` };
    }
  }
  return { missing: 'the kernel-keyring addon is not built (npm run build:libvirt)' };
}

/**
 * The node's custody: the kernel keyring of `stateDir` when the addon loads and the syscalls are
 * allowed (probed once), else memory, with the reason (a published volume's dead storage daemon
 * then waits for a republish after a vmplugd restart).
 */
export function openKeyCustody(stateDir: string): { custody: KeyCustody; fallback?: string } {
  const loaded = loadKeyringAddon();
  if ('missing' in loaded) return { custody: new MemoryKeyCustody(), fallback: loaded.missing };
  const custody = new KernelKeyCustody(loaded.addon, keyringNameOf(stateDir));
  try {
    // @u linked into this process's session keyring, as a login session's keyring links it: a
    // container runtime gives each container a fresh session keyring that does not, and then
    // nothing vmplugd adds under @u is "possessed", so it cannot even set the permissions of the
    // keyring it just created (EACCES, seen under runc). Idempotent.
    loaded.addon.link(loaded.addon.USER_KEYRING, loaded.addon.SESSION_KEYRING);
    loaded.addon.search(loaded.addon.USER_KEYRING, 'keyring', keyringNameOf(stateDir));
  } catch (err) {
    return { custody: new MemoryKeyCustody(), fallback: keyringFailure(err) };
  }
  return { custody };
}
