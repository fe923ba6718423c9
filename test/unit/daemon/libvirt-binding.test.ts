/**
 * The TS side of the libvirt binding over a fake addon. The fake rejects and emits exactly what
 * the real addon did against libvirtd 9.0 (shapes captured from test/integration/libvirt-binding):
 * an Error with libvirtKind/libvirtCode/libvirtDomain/operation, and raw event objects.
 */
import { describe, expect, it } from 'vitest';
import {
  bounded,
  LibvirtConnection,
  type LibvirtEvent,
  type NativeAddon,
  parseLibvirtUuid,
} from '../../../libvirt/binding.js';
import { fromNative, LibvirtError } from '../../../libvirt/errors.js';

function nativeError(message: string, fields: Record<string, unknown>): Error {
  return Object.assign(new Error(message), fields);
}

// As seen from libvirtd 9.0.
const noDomain = nativeError("Domain not found: no domain with matching name 'nope'", {
  operation: 'lookupByName',
  libvirtKind: 'libvirt',
  libvirtCode: 42,
  libvirtDomain: 10,
  libvirtLevel: 2,
});
const socketClosed = nativeError('internal error: client socket is closed', {
  operation: 'listDomains',
  libvirtKind: 'libvirt',
  libvirtCode: 1,
  libvirtDomain: 7,
  libvirtLevel: 2,
});
const closed = nativeError('libvirt connection is closed', {
  operation: 'listDomains',
  libvirtKind: 'closed',
});

const uuid = parseLibvirtUuid('0F8C2B4E-1D2A-4C3B-9E8F-7A6B5C4D3E2F');

type RawEventSink = Parameters<NativeAddon['connect']>[2];

function fakeAddon(overrides: Record<string, (...args: never[]) => Promise<unknown>> = {}): {
  addon: NativeAddon;
  emit: RawEventSink;
} {
  let sink: RawEventSink = () => {};
  const native = new Proxy(
    {},
    {
      // Not a thenable: connect() resolves with this object.
      get: (_t, prop: string) =>
        prop === 'then'
          ? undefined
          : (overrides[prop] ?? (() => Promise.reject(nativeError('not faked', { libvirtKind: 'invalid' })))),
    },
  );
  const addon = {
    libvirtVersion: 9_000_000,
    connect: (_uri: string, _opts: unknown, onEvent: RawEventSink) => {
      sink = onEvent;
      return Promise.resolve(native);
    },
  } as unknown as NativeAddon;
  return { addon, emit: (e) => sink(e) };
}

describe('libvirt error mapping', () => {
  it('maps libvirt codes to stable codes and keeps the numbers', () => {
    const e = fromNative(noDomain, 'lookupByName');
    expect(e).toBeInstanceOf(LibvirtError);
    expect(e).toMatchObject({
      code: 'LIBVIRT_NO_DOMAIN',
      libvirtCode: 42,
      libvirtDomain: 10,
      operation: 'lookupByName',
    });
    expect(e.message).toBe("lookupByName: Domain not found: no domain with matching name 'nope'");
    expect(e.retryable).toBe(false);
  });

  it('tells a lost connection, a closed handle and a failed connect apart', () => {
    expect(fromNative(socketClosed, 'listDomains')).toMatchObject({
      code: 'LIBVIRT_CONNECTION_LOST',
      retryable: true,
    });
    expect(fromNative(closed, 'listDomains').code).toBe('LIBVIRT_CLOSED');
    const refused = nativeError('Failed to connect socket', {
      libvirtKind: 'libvirt',
      libvirtCode: 38,
      libvirtDomain: 7,
    });
    expect(fromNative(refused, 'connect').code).toBe('LIBVIRT_CONNECT_FAILED');
  });

  it('maps argument errors thrown by the addon and unknown libvirt codes', () => {
    expect(fromNative(new TypeError('uuid must be a string'), 'getInfo').code).toBe('LIBVIRT_INVALID_ARG');
    const odd = nativeError('something new', { libvirtKind: 'libvirt', libvirtCode: 1000, libvirtDomain: 0 });
    expect(fromNative(odd, 'getInfo')).toMatchObject({ code: 'LIBVIRT_ERROR', libvirtCode: 1000 });
    for (const [code, expected] of [
      [66, 'LIBVIRT_NO_SECRET'],
      [99, 'LIBVIRT_DEVICE_MISSING'],
      [27, 'LIBVIRT_XML'],
      [55, 'LIBVIRT_OPERATION_INVALID'],
      [68, 'LIBVIRT_OPERATION_TIMEOUT'],
    ] as const) {
      expect(
        fromNative(nativeError('x', { libvirtKind: 'libvirt', libvirtCode: code, libvirtDomain: 10 }), 'op')
          .code,
      ).toBe(expected);
    }
  });

  it('accepts UUIDs in any case and refuses anything else', () => {
    expect(uuid).toBe('0f8c2b4e-1d2a-4c3b-9e8f-7a6b5c4d3e2f');
    expect(() => parseLibvirtUuid('../etc')).toThrow(LibvirtError);
  });
});

describe('bounded calls', () => {
  it('times out a call that never answers, and drops its late result', async () => {
    let settle: (v: string) => void = () => {};
    const p = bounded('getXMLDesc', () => new Promise<string>((r) => (settle = r)), 20);
    await expect(p).rejects.toMatchObject({ code: 'LIBVIRT_TIMEOUT', operation: 'getXMLDesc' });
    settle('<domain/>');
  });

  it('rejects on abort, and at once when already aborted', async () => {
    const ac = new AbortController();
    const p = bounded('attachDeviceFlags', () => new Promise<void>(() => {}), 10_000, ac.signal);
    ac.abort();
    await expect(p).rejects.toMatchObject({ code: 'LIBVIRT_ABORTED' });
    let called = false;
    await expect(
      bounded(
        'x',
        async () => {
          called = true;
        },
        10_000,
        AbortSignal.abort(),
      ),
    ).rejects.toMatchObject({ code: 'LIBVIRT_ABORTED' });
    expect(called).toBe(false);
  });

  it('maps a synchronous throw of the addon (argument check)', async () => {
    await expect(
      bounded(
        'setVcpusFlags',
        () => {
          throw new RangeError('vcpus is out of range');
        },
        1000,
      ),
    ).rejects.toMatchObject({ code: 'LIBVIRT_INVALID_ARG' });
  });
});

describe('LibvirtConnection over a fake addon', () => {
  it('converts records and rejects with typed errors', async () => {
    const { addon } = fakeAddon({
      listDomains: () =>
        Promise.resolve([
          { name: 'a', uuid, id: 3, state: 1, reason: 1 },
          { name: 'b', uuid, id: -1, state: 5, reason: 0 },
        ]),
      lookupByName: () => Promise.reject(noDomain),
    });
    const c = await LibvirtConnection.connect('qemu:///system', {}, addon);
    expect(await c.listDomains()).toEqual([
      { name: 'a', uuid, id: 3, state: 'running', reason: 1 },
      { name: 'b', uuid, id: null, state: 'shutoff', reason: 0 },
    ]);
    await expect(c.lookupByName('nope')).rejects.toMatchObject({ code: 'LIBVIRT_NO_DOMAIN' });
  });

  it('delivers typed events, records a lost connection, and waitForEvent unsubscribes', async () => {
    const { addon, emit } = fakeAddon();
    const c = await LibvirtConnection.connect('qemu:///system', {}, addon);
    const seen: LibvirtEvent[] = [];
    const off = c.onEvent((e) => seen.push(e));
    const removed = c.waitForEvent((e) => e.kind === 'deviceRemoved' && e.alias === 'ua-x');
    emit({ kind: 'lifecycle', name: 'a', uuid, id: 3, event: 3, detail: 0 });
    emit({ kind: 'deviceRemoved', name: 'a', uuid, id: 3, alias: 'ua-x' });
    await expect(removed).resolves.toMatchObject({
      kind: 'deviceRemoved',
      domain: { name: 'a', uuid, id: 3 },
    });
    emit({ kind: 'closed', reason: 2 });
    expect(seen.map((e) => (e.kind === 'lifecycle' ? e.event : e.kind))).toEqual([
      'suspended',
      'deviceRemoved',
      'closed',
    ]);
    expect(c.lostReason).toBe('keepalive');
    off();
    emit({ kind: 'lifecycle', name: 'a', uuid, id: -1, event: 5, detail: 2 });
    expect(seen).toHaveLength(3);
    await expect(c.waitForEvent(() => false, { timeoutMs: 10 })).rejects.toMatchObject({
      code: 'LIBVIRT_TIMEOUT',
    });
  });

  it('wipes the caller buffer after the addon copied it, even when the call fails', async () => {
    let copy: Buffer | undefined;
    const { addon } = fakeAddon({
      secretSetValue: (_uuid: never, value: never) => {
        copy = Buffer.from(value as Buffer);
        return Promise.reject(
          nativeError('Secret not found', { libvirtKind: 'libvirt', libvirtCode: 66, libvirtDomain: 36 }),
        );
      },
    });
    const c = await LibvirtConnection.connect('qemu:///system', {}, addon);
    const value = Buffer.from('AQBkZXZlbG9wZXIta2V5', 'base64');
    const err = await c.secretSetValue(uuid, value, { wipe: true }).catch((e: unknown) => e as LibvirtError);
    expect(err).toMatchObject({ code: 'LIBVIRT_NO_SECRET' });
    expect(copy?.toString('base64')).toBe('AQBkZXZlbG9wZXIta2V5');
    expect(value.every((b) => b === 0)).toBe(true);
  });

  it('closes once, whatever the number of close() calls', async () => {
    let closes = 0;
    const { addon } = fakeAddon({
      close: async () => {
        closes++;
      },
    });
    const c = await LibvirtConnection.connect('qemu:///system', {}, addon);
    await Promise.all([c.close(), c.close()]);
    await c.close();
    expect(closes).toBe(1);
  });
});
