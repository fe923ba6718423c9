import { inspect } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../../core/errors.js';
import {
  type AttachSpec,
  DIRECT_MODE_ANNOTATION,
  parseAttachRequest,
  parseMonitors,
  Secret,
  specFingerprint,
  toStoredSpec,
} from '../../../storage/volume-spec.js';

// Real keys as `ceph-authtool --gen-print-key` / `ceph auth get-key` print them (40 chars).
const KEY = 'AQDuSQNrSIzGGhAAA42jGo01/mILR5NFi7XNYA==';
const KEY2 = 'AQDuSQNrmDwvHBAAOl+mxJ7qi+8Iiuz9B9f4dA==';
const FP_KEY = Buffer.alloc(32, 7);

function rbdBody(
  source: Record<string, unknown> = {},
  top: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    mode: 'rbd',
    source: {
      type: 'rbd',
      pool: 'rbd',
      namespace: '',
      image: 'vol1',
      snapshot: '',
      monitors: ['127.0.0.1:6789'],
      user: 'vmplug',
      key: KEY,
      ...source,
    },
    readOnly: false,
    bus: 'auto',
    annotations: { [DIRECT_MODE_ANNOTATION]: 'rbd' },
    ...top,
  };
}

function rejection(body: unknown): ValidationError {
  try {
    parseAttachRequest(body);
  } catch (err) {
    expect(err).toBeInstanceOf(ValidationError);
    return err as ValidationError;
  }
  throw new Error('accepted');
}

function strip<T extends Record<string, unknown>>(o: T, ...keys: string[]): T {
  const c: Record<string, unknown> = { ...o };
  for (const k of keys) delete c[k];
  return c as T;
}

describe('parseAttachRequest', () => {
  it('parses the design example bodies', () => {
    const rbd = parseAttachRequest(rbdBody());
    expect(rbd.mode).toBe('rbd');
    if (rbd.mode !== 'rbd') throw new Error('unreachable');
    expect(rbd.source).toMatchObject({
      pool: 'rbd',
      image: 'vol1',
      user: 'vmplug',
      monitors: [{ host: '127.0.0.1', port: 6789 }],
    });
    expect(rbd.source).not.toHaveProperty('namespace');
    expect(rbd.source).not.toHaveProperty('snapshot');
    expect(rbd.source.key).toBeInstanceOf(Secret);
    expect(rbd.source.key.reveal()).toBe(KEY);
    expect(rbd).toMatchObject({ readOnly: false, bus: 'auto' });

    const block = parseAttachRequest({ mode: 'block', source: { type: 'hostDevice', path: '/dev/rbd0' } });
    expect(block).toEqual({
      mode: 'block',
      source: { type: 'hostDevice', path: '/dev/rbd0' },
      readOnly: false,
      bus: 'auto',
    });
  });

  it('takes the mode from the annotation when mode is absent', () => {
    const spec = parseAttachRequest({
      source: { type: 'hostDevice', path: '/dev/loop3' },
      annotations: { [DIRECT_MODE_ANNOTATION]: 'block', other: 'x' },
    });
    expect(spec.mode).toBe('block');
  });

  it.each([
    [{ source: { type: 'hostDevice', path: '/dev/sda' } }, 'mode', 'NOT_PASSTHROUGH'],
    [{ source: { type: 'hostDevice', path: '/dev/sda' }, annotations: {} }, 'mode', 'NOT_PASSTHROUGH'],
    [{ mode: 'filesystem', source: { type: 'hostDevice', path: '/dev/sda' } }, 'mode', 'NOT_PASSTHROUGH'],
    [
      { source: { type: 'hostDevice', path: '/dev/sda' }, annotations: { [DIRECT_MODE_ANNOTATION]: 'true' } },
      `annotations['${DIRECT_MODE_ANNOTATION}']`,
      'NOT_PASSTHROUGH',
    ],
    [
      {
        mode: 'block',
        source: { type: 'hostDevice', path: '/dev/sda' },
        annotations: { [DIRECT_MODE_ANNOTATION]: 'rbd' },
      },
      'mode',
      'MODE_MISMATCH',
    ],
    [{ mode: 'block', source: { type: 'rbd' } }, 'mode', 'MODE_MISMATCH'],
    [rbdBody({ type: 'hostDevice', path: '/dev/sda' }), 'mode', 'MODE_MISMATCH'],
  ])('mode rules: %j -> %s %s', (body, field, code) => {
    const err = rejection(body);
    expect(err.field).toBe(field);
    expect(err.code).toBe(code);
    expect(err.status).toBe(422);
  });

  const badRbd: [string, Record<string, unknown>, Record<string, unknown>?][] = [
    ['source.pool', { pool: '' }],
    ['source.pool', { pool: 'a/b' }],
    ['source.pool', { pool: '.mgr' }],
    ['source.pool', { pool: 'x'.repeat(129) }],
    ['source.pool', { pool: 7 }],
    ['source.pool', { pool: undefined }],
    ['source.namespace', { namespace: 'ns@x' }],
    ['source.image', { image: 'img@snap' }],
    ['source.image', { image: '-rf' }],
    ['source.image', { image: 'a b' }],
    ['source.snapshot', { snapshot: 's:1' }],
    ['source.user', { user: 'client.admin' }],
    ['source.user', { user: '' }],
    ['source.user', { user: 'u'.repeat(65) }],
    ['source.key', { key: undefined }],
    ['source.key', { key: '' }],
    ['source.key', { key: 42 }],
    ['source.key', { key: 'not base64!' }],
    ['source.key', { key: 'AQDuSQNrSIzGGhAAA42jGo01/mILR5NFi7XNYA' }],
    ['source.key', { key: Buffer.alloc(28).toString('base64') }],
    ['source.key', { key: Buffer.from('hello world, not a key').toString('base64') }],
    ['source.key', { key: 'QUFBQQ==' }],
    ['source.monitors', { monitors: [] }],
    ['source.monitors', { monitors: '127.0.0.1:6789' }],
    ['source.monitors', { monitors: Array.from({ length: 17 }, (_, i) => `10.0.0.${i}:6789`) }],
    ['source.monitors[1]', { monitors: ['127.0.0.1:6789', '127.0.0.1'] }],
    ['source.monitors[0]', { monitors: ['127.0.0.1:0'] }],
    ['source.monitors[0]', { monitors: ['127.0.0.1:65536'] }],
    ['source.monitors[0]', { monitors: ['127.0.0.1:-1'] }],
    ['source.monitors[0]', { monitors: ['127.0.0.1:67890'] }],
    ['source.monitors[0]', { monitors: ['999.1.1.1:6789'] }],
    ['source.monitors[0]', { monitors: ['::1:6789'] }],
    ['source.monitors[0]', { monitors: ['[::1:6789'] }],
    ['source.monitors[0]', { monitors: ['[zz::1]:6789'] }],
    ['source.monitors[0]', { monitors: ['[fe80::1%eth0]:6789'] }],
    ['source.monitors[0]', { monitors: ['mon_a.example:6789'] }],
    ['source.monitors[0]', { monitors: ['-mon.example:6789'] }],
    ['source.monitors[0]', { monitors: [':6789'] }],
    ['source.monitors[0]', { monitors: ['v2:10.0.0.1:6789'] }],
    ['source.monitors[0]', { monitors: ['v1:10.0.0.1:3300'] }],
    ['source.monitors[0]', { monitors: ['v3:10.0.0.1:3300'] }],
    ['source.monitors[0]', { monitors: [6789] }],
    ['source.monitors[1]', { monitors: ['10.0.0.1:6789', 'v1:10.0.0.1:6789'] }],
    ['source.keyring', { keyring: '/etc/ceph/keyring' }],
    ['source.type', { type: 'nbd' }],
    ['readOnly', { snapshot: 'snap1' }],
    ['readOnly', {}, { readOnly: 'yes' }],
    ['bus', {}, { bus: 'ide' }],
    ['readonly', {}, { readonly: true }],
    ['annotations', {}, { annotations: ['x'] }],
    ['source', {}, { source: null }],
  ];
  it.each(badRbd)('rejects bad %s (%j %j)', (field, source, top = {}) => {
    const err = rejection(rbdBody(source, top));
    expect(err.field).toBe(field);
    expect(err.code).toBe('INVALID_FIELD');
    expect(err.status).toBe(422);
    expect(err.message.startsWith(`${field}: `)).toBe(true);
    expect(err.message).not.toContain(KEY);
  });

  it('rejects a body that is not an object', () => {
    for (const body of [null, 'x', [], 3]) expect(rejection(body).field).toBe('(body)');
  });

  it.each([
    '/dev',
    '/dev/',
    'dev/sda',
    '/etc/passwd',
    '/dev/../etc/passwd',
    '/dev/./sda',
    '/dev//sda',
    '/dev/sda/',
    '/dev/disk/by-id/a b',
    '/dev/sda;rm',
    `/dev/${'a'.repeat(260)}`,
    '/devices/sda',
  ])('rejects hostDevice path %j', (path) => {
    const err = rejection({ mode: 'block', source: { type: 'hostDevice', path } });
    expect(err.field).toBe('source.path');
  });

  it.each([
    '/dev/rbd0',
    '/dev/nbd12',
    '/dev/mapper/vg0-lv_data',
    '/dev/disk/by-path/pci-0000:00:1f.2-ata-1',
    '/dev/rbd/pool/img',
  ])('accepts hostDevice path %s', (path) => {
    expect(parseAttachRequest({ mode: 'block', source: { type: 'hostDevice', path } }).source).toEqual({
      type: 'hostDevice',
      path,
    });
  });

  it('rejects unknown hostDevice fields', () => {
    expect(
      rejection({ mode: 'block', source: { type: 'hostDevice', path: '/dev/sda', pool: 'x' } }).field,
    ).toBe('source.pool');
  });

  it('accepts a key with a trailing newline, snapshots read-only, namespaces', () => {
    const spec = parseAttachRequest(
      rbdBody({ key: `${KEY}\n`, snapshot: 'snap1', namespace: 'tenant-a' }, { readOnly: true }),
    );
    if (spec.mode !== 'rbd') throw new Error('unreachable');
    expect(spec.source.key.reveal()).toBe(KEY);
    expect(spec.source).toMatchObject({ snapshot: 'snap1', namespace: 'tenant-a' });
    expect(spec.readOnly).toBe(true);
  });
});

describe('monitors', () => {
  it('parses IPv4, bracketed IPv6, hostnames and standard-port msgr prefixes', () => {
    expect(
      parseMonitors([
        '10.0.0.1:6789',
        '[2001:db8::1]:3300',
        'mon-a.ceph.svc.cluster.local:6789',
        'v2:10.0.0.2:3300',
        'v1:10.0.0.3:6789',
      ]),
    ).toEqual([
      { host: '10.0.0.1', port: 6789 },
      { host: '2001:db8::1', port: 3300 },
      { host: 'mon-a.ceph.svc.cluster.local', port: 6789 },
      { host: '10.0.0.2', port: 3300 },
      { host: '10.0.0.3', port: 6789 },
    ]);
  });
});

describe('Secret', () => {
  it('never prints its value', () => {
    const s = new Secret(KEY);
    expect(String(s)).toBe('[redacted]');
    expect(`${s}`).toBe('[redacted]');
    expect(JSON.stringify({ s })).toBe('{"s":"[redacted]"}');
    expect(inspect(s)).toBe('[redacted]');
    expect(inspect({ deep: { s } }, { depth: 5, showHidden: true })).not.toContain(KEY);
    expect(Object.keys(s)).toEqual([]);
    const spec = parseAttachRequest(rbdBody());
    expect(JSON.stringify(spec)).not.toContain(KEY);
    expect(inspect(spec, { depth: 10 })).not.toContain(KEY);
  });

  it('toStoredSpec drops the key entirely', () => {
    const stored = toStoredSpec(parseAttachRequest(rbdBody()));
    expect(stored.source).not.toHaveProperty('key');
    expect(JSON.stringify(stored)).not.toContain('redacted');
  });
});

describe('specFingerprint', () => {
  const fp = (body: Record<string, unknown>, key = FP_KEY): string =>
    specFingerprint(parseAttachRequest(body), key);

  it('is stable for the same spec and its equivalent spellings', () => {
    const a = fp(rbdBody());
    expect(a).toMatch(/^v1:[0-9a-f]{64}$/);
    expect(fp(rbdBody())).toBe(a);
    expect(fp(strip(rbdBody(), 'mode', 'readOnly', 'bus'))).toBe(a);
    expect(fp(rbdBody({ namespace: undefined, snapshot: undefined }))).toBe(a);
    expect(fp(rbdBody({ key: `${KEY}\n` }))).toBe(a);
    // Pinned: a change of the canonical form would turn every retry after an upgrade into a 409.
    expect(a).toBe('v1:f218cd4c6802b2dc209639c071851b18d0aa9275b4703dd54411378648817deb');
  });

  it('ignores monitor order', () => {
    const m = ['10.0.0.1:6789', '10.0.0.2:6789'];
    expect(fp(rbdBody({ monitors: m }))).toBe(fp(rbdBody({ monitors: [...m].reverse() })));
  });

  it.each([
    ['pool', rbdBody({ pool: 'other' })],
    ['namespace', rbdBody({ namespace: 'ns' })],
    ['image', rbdBody({ image: 'vol2' })],
    ['snapshot', rbdBody({ snapshot: 's' }, { readOnly: true })],
    ['monitors', rbdBody({ monitors: ['127.0.0.1:3300'] })],
    ['user', rbdBody({ user: 'other' })],
    ['key', rbdBody({ key: KEY2 })],
    ['readOnly', rbdBody({}, { readOnly: true })],
    ['bus', rbdBody({}, { bus: 'scsi' })],
  ])('changes with %s', (_field, body) => {
    expect(fp(body)).not.toBe(fp(rbdBody()));
  });

  it('holds the key only as a keyed hash', () => {
    const spec = parseAttachRequest(rbdBody());
    const a = specFingerprint(spec, FP_KEY);
    expect(a).not.toContain(KEY);
    expect(specFingerprint(spec, Buffer.alloc(32, 8))).not.toBe(a);
    expect(() => specFingerprint(spec, Buffer.alloc(8))).toThrow(RangeError);
  });

  it('separates block specs by path and flags', () => {
    const b = (path: string, readOnly = false): string =>
      fp({ mode: 'block', source: { type: 'hostDevice', path }, readOnly });
    expect(b('/dev/rbd0')).toBe(b('/dev/rbd0'));
    expect(b('/dev/rbd0')).not.toBe(b('/dev/rbd1'));
    expect(b('/dev/rbd0')).not.toBe(b('/dev/rbd0', true));
    const spec: AttachSpec = parseAttachRequest({
      mode: 'block',
      source: { type: 'hostDevice', path: '/dev/rbd0' },
    });
    expect(specFingerprint(spec, FP_KEY)).toBe(b('/dev/rbd0'));
  });
});
