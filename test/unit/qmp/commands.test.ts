import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { QmpClient } from '../../../qmp/client.js';
import * as cmd from '../../../qmp/commands.js';
import { QmpCommandError } from '../../../qmp/errors.js';
import { FakeQemu } from '../fakes/qmp-server.js';

let fake: FakeQemu;
let qmp: QmpClient;

beforeEach(async () => {
  fake = await FakeQemu.start();
  for (const name of [
    'object-add',
    'object-del',
    'blockdev-add',
    'blockdev-del',
    'device_add',
    'block_resize',
    'netdev_add',
    'netdev_del',
  ]) {
    fake.handlers.set(name, () => ({ return: {} }));
  }
  qmp = await QmpClient.connect(fake.path);
});

afterEach(async () => {
  qmp.destroy();
  await fake.close();
});

function last(): unknown {
  const m = fake.received.at(-1);
  return { execute: m?.execute, arguments: m?.arguments };
}

describe('typed command wrappers', () => {
  it('send the QAPI command names and argument shapes', async () => {
    fake.handlers.set('query-named-block-nodes', () => ({ return: [] }));
    await cmd.queryNamedBlockNodes(qmp);
    expect(last()).toEqual({ execute: 'query-named-block-nodes', arguments: { flat: true } });

    fake.handlers.set('query-blockstats', () => ({ return: [] }));
    await cmd.queryBlockstats(qmp, true);
    expect(last()).toEqual({ execute: 'query-blockstats', arguments: { 'query-nodes': true } });

    fake.handlers.set('qom-list', () => ({ return: [{ name: 'type', type: 'string' }] }));
    expect(await cmd.qomList(qmp, '/machine/peripheral')).toEqual([{ name: 'type', type: 'string' }]);
    expect(last()).toEqual({ execute: 'qom-list', arguments: { path: '/machine/peripheral' } });

    await cmd.objectAdd(qmp, { 'qom-type': 'secret', id: 'vmps-1', data: 'a2V5', format: 'base64' });
    expect(last()).toEqual({
      execute: 'object-add',
      arguments: { 'qom-type': 'secret', id: 'vmps-1', data: 'a2V5', format: 'base64' },
    });

    await cmd.blockdevAdd(qmp, {
      driver: 'rbd',
      'node-name': 'vmp-1',
      pool: 'rbd',
      image: 'vol1',
      user: 'vmplug',
      server: [{ host: '127.0.0.1', port: '6789' }],
      'auth-client-required': ['cephx'],
      'key-secret': 'vmps-1',
    });
    expect(last()).toMatchObject({
      execute: 'blockdev-add',
      arguments: { driver: 'rbd', 'key-secret': 'vmps-1' },
    });

    await cmd.deviceAdd(qmp, {
      driver: 'virtio-blk-pci',
      id: 'vmpd-1',
      drive: 'vmp-1',
      bus: 'rp0',
      serial: 's1',
    });
    expect(last()).toEqual({
      execute: 'device_add',
      arguments: { driver: 'virtio-blk-pci', id: 'vmpd-1', drive: 'vmp-1', bus: 'rp0', serial: 's1' },
    });

    await cmd.blockResize(qmp, { 'node-name': 'vmp-1', size: 2 ** 31 });
    expect(last()).toEqual({ execute: 'block_resize', arguments: { 'node-name': 'vmp-1', size: 2 ** 31 } });

    await cmd.netdevAdd(qmp, { type: 'tap', id: 'n0', ifname: 'tap0', script: 'no', downscript: 'no' });
    expect(last()).toMatchObject({ execute: 'netdev_add', arguments: { type: 'tap', id: 'n0' } });
    await cmd.netdevDel(qmp, 'n0');
    await cmd.blockdevDel(qmp, 'vmp-1');
    expect(last()).toEqual({ execute: 'blockdev-del', arguments: { 'node-name': 'vmp-1' } });
    await cmd.objectDel(qmp, 'vmps-1');
    expect(last()).toEqual({ execute: 'object-del', arguments: { id: 'vmps-1' } });

    expect(await cmd.queryStatus(qmp)).toEqual({ status: 'running', singlestep: false, running: true });
  });

  it('deviceDelAndWait resolves on the event for the device itself, even before the reply', async () => {
    fake.handlers.set('device_del', (args, ctx) => {
      ctx.emit('DEVICE_DELETED', { path: `/machine/peripheral/${args?.id}/virtio-backend` });
      ctx.emit('DEVICE_DELETED', { device: String(args?.id), path: `/machine/peripheral/${args?.id}` });
      return { return: {} };
    });
    const ev = await cmd.deviceDelAndWait(qmp, 'vmpd-1', { timeoutMs: 1_000 });
    expect(ev.data).toEqual({ device: 'vmpd-1', path: '/machine/peripheral/vmpd-1' });
  });

  it('deviceDelAndWait rethrows a failed device_del and releases its waiter', async () => {
    fake.handlers.set('device_del', () => ({
      error: { class: 'DeviceNotFound', desc: "Device 'vmpd-2' not found" },
    }));
    await expect(cmd.deviceDelAndWait(qmp, 'vmpd-2', { timeoutMs: 60_000 })).rejects.toBeInstanceOf(
      QmpCommandError,
    );
  });
});
