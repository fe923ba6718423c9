import { describe, expect, it } from 'vitest';
import {
  KernelKeyCustody,
  type KeyringAddon,
  keyDescriptionOf,
  keyringFailure,
  keyringNameOf,
  nameOfKeyDescription,
} from '../../../storage/key-custody.js';
import { Secret } from '../../../storage/volume-spec.js';
import { cephxKey } from '../daemon/helpers.js';

// The key custody's pure parts, and KernelKeyCustody over an addon that behaves like the kernel's
// keyrings (the real syscalls are exercised by test/integration/pod-volumes.test.ts).

const USER = -4;

interface FakeKey {
  type: string;
  description: string;
  payload: Buffer;
  links: Set<number>;
}

class FakeKernel implements KeyringAddon {
  readonly USER_KEYRING = USER;
  readonly SESSION_KEYRING = -3;
  readonly keys = new Map<number, FakeKey>();
  readonly payloadsSeen: Buffer[] = [];
  #next = 100;
  fail: string | undefined;

  #check(): void {
    if (this.fail !== undefined) throw Object.assign(new Error('blocked'), { code: this.fail });
  }
  #children(ring: number): number[] {
    return [...this.keys.entries()].filter(([, k]) => k.links.has(ring)).map(([id]) => id);
  }
  search(ring: number, type: string, description: string): number | null {
    this.#check();
    for (const id of this.#children(ring)) {
      const k = this.keys.get(id) as FakeKey;
      if (k.type === type && k.description === description) return id;
    }
    return null;
  }
  add(type: string, description: string, payload: Buffer | null, ring: number): number {
    this.#check();
    if (payload !== null) this.payloadsSeen.push(payload);
    const same = this.search(ring, type, description);
    const id = same ?? this.#next++;
    this.keys.set(id, { type, description, payload: Buffer.from(payload ?? []), links: new Set([ring]) });
    return id;
  }
  read(serial: number): Buffer {
    this.#check();
    return Buffer.from((this.keys.get(serial) as FakeKey).payload);
  }
  list(ring: number): number[] {
    this.#check();
    return this.#children(ring);
  }
  describe(serial: number) {
    const k = this.keys.get(serial);
    return k === undefined ? null : { type: k.type, uid: 0, description: k.description };
  }
  invalidate(serial: number): void {
    // As the kernel: the key is dead at once, but stays linked (and listed) until its gc runs.
    const k = this.keys.get(serial);
    if (k !== undefined) k.type = 'dead';
  }
  link(serial: number, ring: number): void {
    this.keys.get(serial)?.links.add(ring);
  }
  unlink(serial: number, ring: number): void {
    this.keys.get(serial)?.links.delete(ring);
    if (this.keys.get(serial)?.links.size === 0) this.keys.delete(serial);
  }
}

describe('key custody naming', () => {
  it('one keyring per state directory; one key per export, only names of ours read back', () => {
    expect(keyringNameOf('/var/lib/vmplug/')).toBe('vmplug:/var/lib/vmplug');
    expect(keyDescriptionOf('vmpx-0123456789abcdef01234567')).toBe('vmplug:vmpx-0123456789abcdef01234567');
    expect(nameOfKeyDescription('vmplug:vmpx-0123456789abcdef01234567')).toBe(
      'vmpx-0123456789abcdef01234567',
    );
    expect(nameOfKeyDescription('ceph:vmpx-1')).toBeUndefined();
    expect(nameOfKeyDescription('vmplug:../x')).toBeUndefined();
    expect(nameOfKeyDescription('vmplug:')).toBeUndefined();
  });

  it('says why the syscalls fail, never more', () => {
    expect(keyringFailure(Object.assign(new Error('x'), { code: 'EPERM' }))).toMatch(/seccomp/);
    expect(keyringFailure(Object.assign(new Error('x'), { code: 'EDQUOT' }))).toMatch(/root_maxkeys/);
    expect(keyringFailure(Object.assign(new Error('x'), { code: 'EACCES' }))).toBe('EACCES');
  });
});

describe('KernelKeyCustody', () => {
  it('puts, reads back as a Secret, lists, removes; an emptied keyring is unlinked from @u', async () => {
    const k = new FakeKernel();
    const c = new KernelKeyCustody(k, 'vmplug:/state');
    expect(await c.names()).toEqual([]);
    expect(await c.get('vmpx-a')).toBeUndefined();
    await c.put('vmpx-a', new Secret(cephxKey()));
    await c.put('vmpx-b', new Secret(cephxKey()));
    const ring = k.search(USER, 'keyring', 'vmplug:/state');
    expect(ring).not.toBeNull();
    // The payload handed to the kernel is zeroed once it is stored.
    expect(k.payloadsSeen.every((b) => b.every((x) => x === 0))).toBe(true);
    const got = await c.get('vmpx-a');
    expect(got).toBeInstanceOf(Secret);
    expect(got?.reveal()).toBe(cephxKey());
    expect(String(got)).toBe('[redacted]');
    expect((await c.names()).sort()).toEqual(['vmpx-a', 'vmpx-b']);
    // A key of somebody else's in our keyring is never one of ours.
    k.add('user', 'other', Buffer.from('x'), ring as number);
    expect((await c.names()).sort()).toEqual(['vmpx-a', 'vmpx-b']);
    k.unlink(k.search(ring as number, 'user', 'other') as number, ring as number);
    await c.remove('vmpx-a');
    await c.remove('vmpx-a');
    expect(await c.get('vmpx-a')).toBeUndefined();
    expect(k.search(USER, 'keyring', 'vmplug:/state')).toBe(ring);
    await c.remove('vmpx-b');
    expect(k.search(USER, 'keyring', 'vmplug:/state')).toBeNull();
    expect(await c.names()).toEqual([]);
    await c.put('vmpx-c', new Secret(cephxKey()));
    expect(await c.names()).toEqual(['vmpx-c']);
  });

  it('a payload that is not a cephx key is an error that does not show it', async () => {
    const k = new FakeKernel();
    const c = new KernelKeyCustody(k, 'vmplug:/state');
    await c.put('vmpx-a', new Secret('not-a-key-but-secret'));
    const err = await c.get('vmpx-a').catch((e: unknown) => e as Error);
    expect(err).toMatchObject({ code: 'BACKEND_FAILED' });
    expect((err as Error).message).not.toContain('not-a-key-but-secret');
  });

  it('blocked syscalls become BACKEND_FAILED naming the reason', async () => {
    const k = new FakeKernel();
    k.fail = 'EPERM';
    const c = new KernelKeyCustody(k, 'vmplug:/state');
    await expect(c.put('vmpx-a', new Secret(cephxKey()))).rejects.toMatchObject({
      code: 'BACKEND_FAILED',
      message: expect.stringMatching(/seccomp/),
    });
  });
});
