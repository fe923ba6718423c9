import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../../core/errors.js';
import { idProblem, parseNicId, parseSandboxId, parseVolumeId } from '../../../core/ids.js';

describe('ids', () => {
  it.each([
    'a',
    '0'.repeat(64),
    '0001-0009-rook-ceph-0000000000000001-8f0c7a3e-3c1d-4a8e-9d0b-1d2e3f4a5b6c',
    'pvc-8f0c7a3e-3c1d-4a8e-9d0b-1d2e3f4a5b6c',
    'web.example_domain-1',
    'a'.repeat(128),
    'A.b.c',
  ])('accepts %s', (id) => {
    expect(idProblem(id)).toBeUndefined();
    expect(parseSandboxId(id)).toBe(id);
    expect(parseVolumeId(id)).toBe(id);
    expect(parseNicId(id)).toBe(id);
  });

  it.each([
    ['', 'empty'],
    ['a'.repeat(129), 'at most 128'],
    ['../etc', 'start with'],
    ['a/b', 'only letters'],
    ['a..b', '".."'],
    ['vol..', '".."'],
    ['.hidden', 'start with'],
    ['-rf', 'start with'],
    ['_x', 'start with'],
    ['a b', 'only letters'],
    ['a\0b', 'only letters'],
    ['a\nb', 'only letters'],
    ['vol,x', 'only letters'],
    ['été', 'start with'],
    ['a:b', 'only letters'],
  ])('rejects %j', (id, why) => {
    expect(idProblem(id)).toContain(why);
    const err = (() => {
      try {
        parseVolumeId(id);
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(ValidationError);
    expect(err).toMatchObject({ code: 'INVALID_ID', status: 400, field: 'volumeId' });
  });

  it.each([undefined, null, 12, {}, ['a']])('rejects non-strings (%j)', (v) => {
    expect(() => parseSandboxId(v, 'params.sandboxId')).toThrowError(
      expect.objectContaining({ code: 'INVALID_ID', field: 'params.sandboxId' }),
    );
  });
});
