// The vmplug-csi process end to end on temp sockets: flags, the proxy socket, kubelet's
// registration socket (GetInfo, NotifyRegistrationStatus) and an orderly stop.
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { main } from '../../../csi/main.js';
import { decode, encode } from '../../../csi/messages.js';
import { TestPlugin } from './harness.js';

const identity = (b: Buffer): Buffer => b;

function unary(socket: string, path: string, req: Buffer): Promise<Buffer> {
  const client = new grpc.Client(`unix:${socket}`, grpc.credentials.createInsecure());
  return new Promise<Buffer>((resolve, reject) =>
    client.makeUnaryRequest(path, identity, identity, req, { deadline: Date.now() + 5_000 }, (err, res) => {
      client.close();
      if (err) reject(err);
      else resolve(res!);
    }),
  );
}

async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 25));
}

let dir: string;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('vmplug-csi main', () => {
  it('refuses bad flags with exit code 2', async () => {
    const err = new PassThrough();
    const text: string[] = [];
    err.on('data', (c) => text.push(String(c)));
    expect(await main({ argv: ['--driver', 'bad/name'], stdout: new PassThrough(), stderr: err })).toBe(2);
    expect(await main({ argv: ['--nope'], stdout: new PassThrough(), stderr: err })).toBe(2);
    expect(
      await main({
        argv: ['--driver', 'd.x', '--listen', '/a', '--upstream', '/a'],
        stdout: new PassThrough(),
        stderr: err,
      }),
    ).toBe(2);
    expect(text.join('')).toContain('--driver');
  });

  it('serves the proxy and kubelet registration, and removes its sockets on stop', async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmplug-csi-main-'));
    const plugin = new TestPlugin();
    await plugin.listen(join(dir, 'upstream.sock'));
    plugin.answer = () => Buffer.from([0x0a, 0x01, 0x6e]);
    let stop!: () => void;
    const stopSignal = new Promise<void>((r) => {
      stop = r;
    });
    const listen = join(dir, 'csi.sock');
    const reg = join(dir, 'registry');
    await import('node:fs/promises').then((fs) => fs.mkdir(reg));
    const done = main({
      argv: [
        '--driver',
        'rbd.csi.ceph.com',
        '--listen',
        listen,
        '--registration-dir',
        reg,
        '--vmplug-socket',
        join(dir, 'v.sock'),
      ],
      stdout: new PassThrough(),
      stderr: new PassThrough(),
      version: '9.9.9',
      stopSignal,
    });
    const regSock = join(reg, 'rbd.csi.ceph.com-reg.sock');
    await until(() => existsSync(regSock));

    const info = decode(
      'pluginregistration.PluginInfo',
      await unary(regSock, '/pluginregistration.Registration/GetInfo', Buffer.alloc(0)),
    );
    expect(info).toEqual({
      type: 'CSIPlugin',
      name: 'rbd.csi.ceph.com',
      endpoint: listen,
      supportedVersions: ['1.0.0'],
    });
    await unary(
      regSock,
      '/pluginregistration.Registration/NotifyRegistrationStatus',
      encode('pluginregistration.RegistrationStatus', { pluginRegistered: true }),
    );
    // The proxy forwards to the default upstream socket beside --listen.
    const got = await unary(listen, '/csi.v1.Node/NodeGetInfo', Buffer.alloc(0));
    expect(got.equals(Buffer.from([0x0a, 0x01, 0x6e]))).toBe(true);

    stop();
    expect(await done).toBe(0);
    expect(existsSync(listen)).toBe(false);
    expect(existsSync(regSock)).toBe(false);
    await plugin.close();
  });
});
