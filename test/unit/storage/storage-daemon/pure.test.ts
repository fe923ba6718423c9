import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../../../core/errors.js';
import { daemonArgv, qemuOptValue, qmpSocketOfArgv } from '../../../../storage/storage-daemon/argv.js';
import { allocateMinor, splitDev } from '../../../../storage/storage-daemon/device-node.js';
import { mkfsCommand, parseBlkid } from '../../../../storage/storage-daemon/format.js';
import {
  exportKey,
  exportNameOf,
  exportPaths,
  longestSocketPath,
} from '../../../../storage/storage-daemon/naming.js';
import { connectedClients, parseProcStat } from '../../../../storage/storage-daemon/process.js';
import {
  type DaemonState,
  parseState,
  StateParseError,
  sameExport,
  serializeState,
} from '../../../../storage/storage-daemon/state.js';
import { Secret } from '../../../../storage/volume-spec.js';

const KEY = 'AQDzsBRrd8xHMRAAk4qrvKR/Sc5ypF+q++eRFA==';

const state: DaemonState = {
  version: 1,
  name: 'vmp-0123456789abcdef',
  pid: 4242,
  startTime: 81252,
  minor: 3,
  qmpSocket: '/run/vmplug/qsd/vmp-0123456789abcdef/qmp.sock',
  socketPath: '/var/run/kata-containers/vhost-user/block/sockets/vmp-0123456789abcdef',
  devicePath: '/var/run/kata-containers/vhost-user/block/devices/vmp-0123456789abcdef',
  source: {
    type: 'rbd',
    pool: 'rbd',
    image: 'vol1',
    monitors: [{ host: '127.0.0.1', port: 6789 }],
    user: 'vmplug',
  },
  readOnly: false,
  phase: 'serving',
  sizeBytes: 1 << 30,
};

describe('daemon argv', () => {
  it('holds only the QMP monitor: no key, no image, no export', () => {
    const argv = daemonArgv('/run/vmplug/qsd/vmp-a/qmp.sock');
    expect(argv).toEqual([
      '--chardev',
      'socket,id=m,path=/run/vmplug/qsd/vmp-a/qmp.sock,server=on,wait=off',
      '--monitor',
      'chardev=m',
    ]);
    expect(argv.join(' ')).not.toContain(KEY);
    expect(argv.join(' ')).not.toMatch(/rbd|secret|export/);
  });

  it('escapes commas QEMU-style, refuses control characters, and reads its own argv back', () => {
    expect(qemuOptValue('/a,b')).toBe('/a,,b');
    expect(() => qemuOptValue('/a\nb')).toThrow(RangeError);
    expect(qmpSocketOfArgv(daemonArgv('/x,y/qmp.sock'))).toBe('/x,y/qmp.sock');
    expect(qmpSocketOfArgv(['--chardev', 'socket,id=m,path=/q,server=on,wait=off'])).toBeUndefined();
    expect(qmpSocketOfArgv(['--blockdev', 'x'])).toBeUndefined();
  });
});

describe('naming', () => {
  it('accepts store-safe names only', () => {
    expect(exportKey('vmp-0123').name).toBe('vmp-0123');
    for (const bad of ['', '-a', 'A', 'a/b', 'a.b', '..', 'x'.repeat(41)]) {
      expect(() => exportKey(bad)).toThrow(ValidationError);
    }
  });

  it('derives a stable, distinct name per (owner, volume)', () => {
    const a = exportNameOf('pod-1', 'vol-1');
    expect(a).toEqual(exportNameOf('pod-1', 'vol-1'));
    expect(a.name).toMatch(/^vmp-[0-9a-f]{16}$/);
    expect(exportNameOf('pod-1', 'vol-2')).not.toEqual(a);
    expect(exportNameOf('pod-1v', 'ol-1')).not.toEqual(a);
  });

  it('puts the socket and node in Kata store layout and the rest under the state dir', () => {
    const p = exportPaths('/run/vmplug/qsd', '/var/run/kata-containers/vhost-user', { name: 'vmp-a' });
    expect(p.socketPath).toBe('/var/run/kata-containers/vhost-user/block/sockets/vmp-a');
    expect(p.devicePath).toBe('/var/run/kata-containers/vhost-user/block/devices/vmp-a');
    expect(p.qmpSocket).toBe('/run/vmplug/qsd/vmp-a/qmp.sock');
    expect(longestSocketPath('/run/vmplug/qsd', '/var/run/kata-containers/vhost-user')).toBeLessThanOrEqual(
      107,
    );
  });
});

describe('state file', () => {
  it('round-trips and never carries a key', () => {
    const withKey = { ...state, source: { ...state.source, key: new Secret(KEY) } } as DaemonState;
    const text = serializeState(withKey);
    expect(text).not.toContain(KEY);
    expect(text).not.toContain('key');
    expect(parseState(text)).toEqual(state);
  });

  it('refuses torn or foreign files', () => {
    const ok = JSON.parse(serializeState(state)) as Record<string, unknown>;
    const bad = (patch: Record<string, unknown>): string => JSON.stringify({ ...ok, ...patch });
    for (const text of [
      '{',
      '[]',
      bad({ version: 2 }),
      bad({ name: '../x' }),
      bad({ pid: null }),
      bad({ minor: 2 ** 20 }),
      bad({ phase: 'weird' }),
      bad({ socketPath: 'relative' }),
      bad({ source: { ...state.source, key: KEY } }),
      bad({ source: { ...state.source, monitors: [] } }),
    ]) {
      expect(() => parseState(text), text).toThrow(StateParseError);
    }
    expect(parseState(bad({ pid: null, startTime: null, phase: 'starting' })).pid).toBeNull();
  });

  it('sameExport compares the image and mode, not the monitor order', () => {
    const other = {
      source: { ...state.source, monitors: [...state.source.monitors, { host: '10.0.0.2', port: 6789 }] },
      readOnly: false,
    };
    const swapped = {
      source: { ...other.source, monitors: [...other.source.monitors].reverse() },
      readOnly: false,
    };
    expect(sameExport(other, swapped)).toBe(true);
    expect(sameExport(state, { ...state, readOnly: true })).toBe(false);
    expect(sameExport(state, { ...state, source: { ...state.source, image: 'vol2' } })).toBe(false);
  });
});

describe('minors and device numbers', () => {
  it('allocates the lowest free minor', () => {
    expect(allocateMinor([])).toBe(0);
    expect(allocateMinor([0, 1, 3])).toBe(2);
    expect(allocateMinor(new Set([1, 2]))).toBe(0);
  });

  it("splits dev_t like glibc's major()/minor()", () => {
    // makedev(241, 5) and makedev(241, 0x12345)
    expect(splitDev((241n << 8n) | 5n)).toEqual({ major: 241, minor: 5 });
    const m = 0x12345n;
    expect(splitDev((241n << 8n) | (m & 0xffn) | ((m & ~0xffn) << 12n))).toEqual({
      major: 241,
      minor: 0x12345,
    });
  });
});

describe('proc parsing', () => {
  it('reads state and start time past a comm with spaces and parentheses', () => {
    const fields = Array.from({ length: 50 }, (_, i) => String(i + 3));
    fields[0] = 'S';
    fields[19] = '81252';
    expect(parseProcStat(`123 (qemu (x) y) ${fields.join(' ')}`)).toEqual({ state: 'S', startTime: 81252 });
  });

  it('counts only connected sockets on the path', () => {
    const text = [
      'Num       RefCount Protocol Flags    Type St Inode Path',
      '00000000ee8c4d8f: 00000002 00000000 00010000 0001 01 56545 /s/vmp-a',
      '00000000dbd1a088: 00000003 00000000 00000000 0001 03 56547 /s/vmp-a',
      '00000000dbd1a089: 00000003 00000000 00000000 0001 03 56548 /s/vmp-ab',
      '00000000dbd1a08a: 00000003 00000000 00000000 0001 03 56549',
    ].join('\n');
    expect(connectedClients(text, '/s/vmp-a')).toBe(1);
    expect(connectedClients(text, '/s/vmp-b')).toBe(0);
  });
});

describe('format decisions', () => {
  it('formats only when blkid finds nothing', () => {
    expect(parseBlkid(2, '')).toEqual({ kind: 'blank' });
    expect(parseBlkid(0, 'DEVNAME=/f\nUUID=x\nTYPE=ext4\n')).toEqual({ kind: 'signature', type: 'ext4' });
    expect(parseBlkid(0, 'PTTYPE=gpt\n')).toEqual({ kind: 'signature', type: 'partition table gpt' });
    expect(parseBlkid(8, '')).toEqual({ kind: 'signature', type: 'ambivalent' });
    expect(() => parseBlkid(4, '')).toThrow();
    expect(() => parseBlkid(0, 'DEVNAME=/f\n')).toThrow();
  });

  it('runs mkfs forced and quiet on the file, without discard', () => {
    expect(mkfsCommand('ext4', '/f')).toEqual(['mkfs.ext4', ['-F', '-q', '-E', 'nodiscard', '--', '/f']]);
    expect(mkfsCommand('xfs', '/f')).toEqual(['mkfs.xfs', ['-f', '-q', '-K', '--', '/f']]);
  });
});
