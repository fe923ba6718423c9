import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { parseCommandLine, parseSize, UsageError } from '../../../cli/args.js';
import { isRetryable, VmplugApiError, VmplugTransportError } from '../../../cli/client.js';
import { EXIT, exitCodeFor, KeyFileError } from '../../../cli/exit-codes.js';
import { readKey } from '../../../cli/main.js';

const usage = (argv: string[]) => () => parseCommandLine(argv);

describe('vmplug argument parsing', () => {
  it('parses a block attach with global options anywhere', () => {
    expect(
      parseCommandLine([
        '--socket',
        '/tmp/s.sock',
        'attach',
        'sb1',
        'vol1',
        '--device',
        '/dev/loop3',
        '--read-only',
        '--json',
      ]),
    ).toEqual({
      global: { socket: '/tmp/s.sock', json: true, timeoutMs: undefined },
      command: {
        name: 'attach',
        sandboxId: 'sb1',
        volumeId: 'vol1',
        source: { type: 'hostDevice', path: '/dev/loop3' },
        readOnly: true,
      },
    });
  });

  it('passes the pod of --pod-uid/--pod-name/--pod-namespace; a name needs the uid', () => {
    const uid = '5f0c3b1e-9d2a-4c7b-8e6f-1a2b3c4d5e6f';
    const base = ['attach', 'sb1', 'vol1', '--device', '/dev/loop3'];
    const cmd = (extra: string[]) => parseCommandLine([...base, ...extra]).command;
    expect(cmd(['--pod-uid', uid, '--pod-name', 'web-0', '--pod-namespace', 'shop'])).toMatchObject({
      pod: { uid, name: 'web-0', namespace: 'shop' },
    });
    expect(cmd(['--pod-uid', uid])).toMatchObject({ pod: { uid } });
    expect('pod' in cmd([])).toBe(false);
    expect(() => cmd(['--pod-name', 'web-0'])).toThrow(UsageError);
  });

  it('parses an rbd attach; the key is a file to read, never a value', () => {
    const { command } = parseCommandLine([
      'attach',
      'sb1',
      'vol1',
      '--mode',
      'rbd',
      '--pool',
      'rbd',
      '--namespace',
      'ns',
      '--image',
      'img',
      '--monitors',
      '10.0.0.1:6789, [::1]:3300',
      '--user',
      'vmplug',
      '--key-file',
      '-',
      '--bus',
      'virtio-blk',
      '--annotation',
      'volume.katacontainers.io/direct-mode=rbd',
      '--timeout-ms',
      '5000',
    ]);
    expect(command).toEqual({
      name: 'attach',
      sandboxId: 'sb1',
      volumeId: 'vol1',
      mode: 'rbd',
      source: {
        type: 'rbd',
        pool: 'rbd',
        namespace: 'ns',
        image: 'img',
        monitors: ['10.0.0.1:6789', '[::1]:3300'],
        user: 'vmplug',
        keyFile: '-',
      },
      bus: 'virtio-blk',
      readOnly: false,
      annotations: { 'volume.katacontainers.io/direct-mode': 'rbd' },
    });
    expect(
      usage([
        'attach',
        'sb',
        'v',
        '--pool',
        'p',
        '--image',
        'i',
        '--monitors',
        'm:1',
        '--user',
        'u',
        '--key',
        'AQ==',
      ]),
    ).toThrow(UsageError);
  });

  it('refuses incomplete or mixed attach options', () => {
    expect(usage(['attach', 'sb', 'v'])).toThrow(/--device/);
    expect(usage(['attach', 'sb', 'v', '--mode', 'block'])).toThrow(/--device/);
    expect(usage(['attach', 'sb', 'v', '--mode', 'rbd', '--pool', 'p'])).toThrow(/--image/);
    expect(usage(['attach', 'sb', 'v', '--device', '/dev/x', '--pool', 'p'])).toThrow(
      /--pool is for --mode rbd/,
    );
    expect(usage(['attach', 'sb', 'v', '--mode', 'nfs', '--device', '/dev/x'])).toThrow(/--mode/);
    expect(usage(['attach', 'sb', 'v', '--device', '/dev/x', '--bus', 'ide'])).toThrow(/--bus/);
    expect(usage(['attach', 'sb', 'v', '--device', '/dev/x', '--annotation', 'novalue'])).toThrow(
      /key=value/,
    );
    expect(usage(['attach', 'sb', '--device', '/dev/x'])).toThrow(/expects 2 argument/);
  });

  it('parses the other commands', () => {
    expect(parseCommandLine(['detach', 'sb', 'v']).command).toEqual({
      name: 'detach',
      sandboxId: 'sb',
      volumeId: 'v',
    });
    expect(parseCommandLine(['resize', 'sb', 'v', '10G']).command).toEqual({
      name: 'resize',
      sandboxId: 'sb',
      volumeId: 'v',
      sizeBytes: 10 * 1024 ** 3,
    });
    expect(parseCommandLine(['ls']).command).toEqual({ name: 'ls' });
    expect(parseCommandLine(['ls', '--pod-uid', 'u1']).command).toEqual({ name: 'ls', podUid: 'u1' });
    expect(parseCommandLine(['show', 'sb']).command).toEqual({ name: 'show', sandboxId: 'sb' });
    expect(parseCommandLine(['show', 'sb', 'v']).command).toEqual({
      name: 'show',
      sandboxId: 'sb',
      volumeId: 'v',
    });
    expect(parseCommandLine(['node', '--json']).command).toEqual({ name: 'node' });
    expect(parseCommandLine(['doctor']).command).toEqual({ name: 'doctor' });
    expect(parseCommandLine(['doctor', '--kata-config', '/etc/k.toml']).command).toEqual({
      name: 'doctor',
      kataConfig: '/etc/k.toml',
    });
    expect(parseCommandLine([]).command).toEqual({ name: 'help' });
    expect(parseCommandLine(['--version']).command).toEqual({ name: 'version' });
    expect(parseCommandLine(['attach', '--help']).command).toEqual({ name: 'help', topic: 'attach' });
    expect(parseCommandLine(['help', 'detach']).command).toEqual({ name: 'help', topic: 'detach' });
  });

  it('refuses unknown commands, options and argument counts', () => {
    expect(usage(['frobnicate'])).toThrow(/unknown command/);
    expect(usage(['ls', '--colour'])).toThrow(UsageError);
    expect(usage(['ls', 'extra'])).toThrow(/expects 0/);
    expect(usage(['detach', 'sb'])).toThrow(/expects 2/);
    expect(usage(['ls', '--timeout-ms', 'soon'])).toThrow(/--timeout-ms/);
  });

  it('parses sizes', () => {
    expect(parseSize('4096')).toBe(4096);
    expect(parseSize('1K')).toBe(1024);
    expect(parseSize('2MiB')).toBe(2 * 1024 ** 2);
    expect(parseSize('1GB')).toBe(1e9);
    expect(parseSize('3t')).toBe(3 * 1024 ** 4);
    for (const bad of ['', '0', '-1', '1.5G', '10X', 'G', '99999999999T'])
      expect(() => parseSize(bad)).toThrow(UsageError);
  });
});

describe('exit codes', () => {
  const api = (status: number, code: string) => new VmplugApiError({ status, code, detail: 'x' });

  it('maps answers and failures to the documented codes', () => {
    expect(exitCodeFor(new UsageError('x'))).toBe(EXIT.USAGE);
    expect(exitCodeFor(new KeyFileError('x'))).toBe(EXIT.USAGE);
    expect(exitCodeFor(api(400, 'INVALID_ID'))).toBe(EXIT.USAGE);
    expect(exitCodeFor(api(422, 'INVALID_FIELD'))).toBe(EXIT.USAGE);
    expect(exitCodeFor(api(413, 'BODY_TOO_LARGE'))).toBe(EXIT.USAGE);
    expect(exitCodeFor(api(404, 'NOT_FOUND'))).toBe(EXIT.NOT_FOUND);
    expect(exitCodeFor(api(404, 'ROUTE_NOT_FOUND'))).toBe(EXIT.OTHER);
    expect(exitCodeFor(api(409, 'SPEC_CONFLICT'))).toBe(EXIT.CONFLICT);
    expect(exitCodeFor(api(409, 'LANES_FULL'))).toBe(EXIT.CONFLICT);
    expect(exitCodeFor(api(503, 'DETACH_PENDING'))).toBe(EXIT.RETRY);
    expect(exitCodeFor(api(503, 'CEPH_UNREACHABLE'))).toBe(EXIT.RETRY);
    expect(exitCodeFor(api(503, 'NOT_READY'))).toBe(EXIT.RETRY);
    expect(exitCodeFor(api(503, 'SHUTTING_DOWN'))).toBe(EXIT.RETRY);
    expect(exitCodeFor(api(502, 'BACKEND_FAILED'))).toBe(EXIT.OTHER);
    expect(exitCodeFor(api(500, 'INTERNAL'))).toBe(EXIT.OTHER);
    expect(exitCodeFor(new VmplugTransportError('TIMEOUT', 'x'))).toBe(EXIT.RETRY);
    expect(exitCodeFor(new VmplugTransportError('DAEMON_UNREACHABLE', 'x'))).toBe(EXIT.RETRY);
    expect(exitCodeFor(new VmplugTransportError('PERMISSION_DENIED', 'x'))).toBe(EXIT.OTHER);
    expect(exitCodeFor(new VmplugTransportError('ABORTED', 'x'))).toBe(EXIT.OTHER);
    expect(exitCodeFor(new Error('boom'))).toBe(EXIT.OTHER);
  });

  it('retryable follows the status and the retryable codes', () => {
    expect(isRetryable(503, 'ANYTHING')).toBe(true);
    expect(isRetryable(504, 'X')).toBe(true);
    expect(isRetryable(500, 'DETACH_PENDING')).toBe(true);
    expect(isRetryable(409, 'SPEC_CONFLICT')).toBe(false);
  });
});

describe('readKey', () => {
  it('reads the key from stdin, trimmed; an empty or multi-word input is refused without echoing it', async () => {
    const stdin = new PassThrough();
    const p = readKey('-', stdin);
    stdin.end('AQBkey==\n');
    await expect(p).resolves.toBe('AQBkey==');
    const empty = new PassThrough();
    const q = readKey('-', empty);
    empty.end('\n');
    await expect(q).rejects.toThrow(/holds no key/);
    const two = new PassThrough();
    const r = readKey('-', two);
    two.end('secret1 secret2');
    await expect(r).rejects.toSatisfy(
      (e: Error) => e instanceof KeyFileError && !e.message.includes('secret'),
    );
  });

  it('a missing key file is a usage error naming the file only', async () => {
    await expect(readKey('/nonexistent/key', new PassThrough())).rejects.toThrow(
      /\/nonexistent\/key: cannot read \(ENOENT\)/,
    );
  });
});

describe('publish / unpublish command lines', () => {
  const uid = '5f0c3b1e-9d2a-4c7b-8e6f-1a2b3c4d5e6f';
  const target = `/var/lib/kubelet/pods/${uid}/volumes/kubernetes.io~csi/pvc-1/mount`;
  it('parses block and rbd publishes, and unpublish', () => {
    expect(
      parseCommandLine([
        'publish',
        uid,
        'v1',
        '--target-path',
        target,
        '--device',
        '/dev/loop3',
        '--fs-type',
        'xfs',
        '--mount-option',
        'noatime',
      ]).command,
    ).toEqual({
      name: 'publish',
      podUid: uid,
      volumeId: 'v1',
      targetPath: target,
      fsType: 'xfs',
      source: { type: 'hostDevice', path: '/dev/loop3' },
      readOnly: false,
      mountOptions: ['noatime'],
    });
    const rbd = parseCommandLine([
      'publish',
      uid,
      'v1',
      '--target-path',
      target,
      '--rbd-pool',
      'rbd',
      '--rbd-image',
      'img',
      '--monitors',
      '127.0.0.1:6789',
      '--user',
      'vmplug',
      '--key-file',
      '-',
    ]).command;
    expect(rbd).toMatchObject({
      source: { type: 'rbd', pool: 'rbd', image: 'img', monitors: ['127.0.0.1:6789'], keyFile: '-' },
    });
    expect(parseCommandLine(['unpublish', uid, 'v1']).command).toEqual({
      name: 'unpublish',
      podUid: uid,
      volumeId: 'v1',
    });
  });
  it('refuses a publish without target path, without a source, or with both', () => {
    expect(() => parseCommandLine(['publish', uid, 'v1', '--device', '/dev/x'])).toThrow(/--target-path/);
    expect(() => parseCommandLine(['publish', uid, 'v1', '--target-path', target])).toThrow(/--device/);
    expect(() =>
      parseCommandLine([
        'publish',
        uid,
        'v1',
        '--target-path',
        target,
        '--device',
        '/dev/x',
        '--rbd-pool',
        'p',
      ]),
    ).toThrow(/--rbd-pool/);
  });
});
