import { describe, expect, it } from 'vitest';
import {
  compileDeviceGlob,
  firstMatch,
  matchesDeviceGlob,
  parseDeviceGlobList,
} from '../../../storage/device-glob.js';

describe('device globs', () => {
  it('* matches within one path component, ? one character', () => {
    const rbd = compileDeviceGlob('/dev/rbd*');
    expect(matchesDeviceGlob(rbd, '/dev/rbd0')).toBe(true);
    expect(matchesDeviceGlob(rbd, '/dev/rbd')).toBe(true);
    expect(matchesDeviceGlob(rbd, '/dev/rbd/pool/image')).toBe(false);
    expect(matchesDeviceGlob(rbd, '/dev/vda')).toBe(false);
    const mapper = compileDeviceGlob('/dev/mapper/*');
    expect(matchesDeviceGlob(mapper, '/dev/mapper/vmplug-x')).toBe(true);
    expect(matchesDeviceGlob(mapper, '/dev/mapper/a/b')).toBe(false);
    const nbd = compileDeviceGlob('/dev/nbd?');
    expect(matchesDeviceGlob(nbd, '/dev/nbd1')).toBe(true);
    expect(matchesDeviceGlob(nbd, '/dev/nbd12')).toBe(false);
  });

  it('everything else is literal: dots, pluses and parentheses do not act as regex', () => {
    const g = compileDeviceGlob('/dev/a.b+(c)');
    expect(matchesDeviceGlob(g, '/dev/a.b+(c)')).toBe(true);
    expect(matchesDeviceGlob(g, '/dev/aXbb(c)')).toBe(false);
    expect(matchesDeviceGlob(compileDeviceGlob('/dev/loop*'), '/dev/loop1p2')).toBe(true);
  });

  it('refuses patterns it does not support instead of half-matching them', () => {
    for (const bad of [
      'dev/rbd*',
      '/etc/*',
      '/dev/**',
      '/dev/sd[a-z]',
      '/dev/{a,b}',
      '/dev/../sda',
      '/dev//x',
      '/dev/a\\*',
    ]) {
      expect(() => compileDeviceGlob(bad), bad).toThrow();
    }
  });

  it('parses the setting: comma separated, blanks ignored, empty means nothing', () => {
    expect(parseDeviceGlobList(' /dev/rbd* , /dev/loop*,').map((g) => g.pattern)).toEqual([
      '/dev/rbd*',
      '/dev/loop*',
    ]);
    expect(parseDeviceGlobList('')).toEqual([]);
    const list = parseDeviceGlobList('/dev/rbd*,/dev/mapper/*');
    expect(firstMatch(list, ['/dev/dm-0', '/dev/mapper/data'])?.pattern).toBe('/dev/mapper/*');
    expect(firstMatch(list, ['/dev/vda'])).toBeUndefined();
  });
});
