import { describe, expect, it } from 'vitest';
import { parseCommandLine } from '../../../cli/args.js';

describe('vmplug nic-attach / nic-detach command lines', () => {
  it('parses a bridge NIC with MAC and MTU', () => {
    expect(
      parseCommandLine([
        'nic-attach',
        'sb1',
        'net1',
        '--bridge',
        'br0',
        '--mac',
        '52:54:00:00:00:01',
        '--mtu',
        '9000',
      ]).command,
    ).toEqual({
      name: 'nic-attach',
      sandboxId: 'sb1',
      nicId: 'net1',
      bridge: 'br0',
      mac: '52:54:00:00:00:01',
      mtu: 9000,
    });
  });

  it('parses an existing tap and a detach', () => {
    expect(parseCommandLine(['--json', 'nic-attach', 'sb1', 'net1', '--tap', 'tap0']).command).toEqual({
      name: 'nic-attach',
      sandboxId: 'sb1',
      nicId: 'net1',
      tap: 'tap0',
    });
    expect(parseCommandLine(['nic-detach', 'sb1', 'net1']).command).toEqual({
      name: 'nic-detach',
      sandboxId: 'sb1',
      nicId: 'net1',
    });
  });

  it('refuses neither or both of --bridge and --tap, and a bad --mtu', () => {
    expect(() => parseCommandLine(['nic-attach', 'sb1', 'net1'])).toThrow(/--bridge/);
    expect(() => parseCommandLine(['nic-attach', 'sb1', 'net1', '--bridge', 'b', '--tap', 't'])).toThrow(
      /either/,
    );
    expect(() => parseCommandLine(['nic-attach', 'sb1', 'net1', '--bridge', 'b', '--mtu', 'x'])).toThrow(
      /--mtu/,
    );
    expect(() => parseCommandLine(['nic-detach', 'sb1'])).toThrow(/expects 2/);
  });
});
