import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../../core/errors.js';
import { parseSandboxId, parseVolumeId } from '../../../core/ids.js';
import type { QmpExecutor } from '../../../qmp/index.js';
import { attachmentFromRecord, pendingRecord } from '../../../storage/attach-service.js';
import { parseRecord } from '../../../storage/journal.js';
import {
  chardevId,
  guestRamShared,
  hotAttachExportKey,
  resolveBackend,
  vhostUserDeviceArgs,
} from '../../../storage/vhost-user.js';
import { parseAttachRequest, specFingerprint } from '../../../storage/volume-spec.js';

const KEY = 'AQDuSQNrSIzGGhAAA42jGo01/mILR5NFi7XNYA==';
const body = (top: Record<string, unknown> = {}) => ({
  mode: 'rbd',
  source: { type: 'rbd', pool: 'rbd', image: 'vol1', monitors: ['127.0.0.1:6789'], user: 'vmplug', key: KEY },
  ...top,
});

/** A QMP executor answering qom-list /objects and qom-get share from a table. */
function qomFake(
  objects: Record<string, { type: string; share?: boolean }>,
): QmpExecutor & { calls: string[] } {
  const calls: string[] = [];
  return {
    calls,
    async execute<T>(command: string, args?: Record<string, unknown>): Promise<T> {
      calls.push(command);
      if (command === 'qom-list') {
        return Object.entries(objects).map(([name, o]) => ({ name, type: o.type })) as T;
      }
      if (command === 'qom-get') {
        const name = String(args?.path).replace('/objects/', '');
        return (objects[name]?.share ?? false) as T;
      }
      throw new Error(`unexpected ${command}`);
    },
  } as unknown as QmpExecutor & { calls: string[] };
}

describe('backend in the attach request', () => {
  it('defaults to auto, takes qemu and storage-daemon, and refuses the rest naming backend', () => {
    expect(parseAttachRequest(body())).toMatchObject({ backend: 'auto' });
    expect(parseAttachRequest(body({ backend: 'qemu' }))).toMatchObject({ backend: 'qemu' });
    expect(parseAttachRequest(body({ backend: 'storage-daemon' }))).toMatchObject({
      backend: 'storage-daemon',
    });
    for (const [b, field] of [
      [body({ backend: 'nbd' }), 'backend'],
      [body({ backend: 1 }), 'backend'],
      [body({ backend: 'storage-daemon', bus: 'scsi' }), 'bus'],
      [{ mode: 'block', source: { type: 'hostDevice', path: '/dev/sda' }, backend: 'qemu' }, 'backend'],
    ] as const) {
      expect(() => parseAttachRequest(b)).toThrow(ValidationError);
      try {
        parseAttachRequest(b);
      } catch (err) {
        expect((err as ValidationError).field).toBe(field);
      }
    }
  });

  it("keeps the fingerprint of 'auto' as before backends existed, and tells explicit backends apart", () => {
    const fp = Buffer.alloc(32, 7);
    const auto = specFingerprint(parseAttachRequest(body()), fp);
    const qemu = specFingerprint(parseAttachRequest(body({ backend: 'qemu' })), fp);
    const qsd = specFingerprint(parseAttachRequest(body({ backend: 'storage-daemon' })), fp);
    expect(new Set([auto, qemu, qsd]).size).toBe(3);
  });

  it('stores the resolved backend in the record, which the journal reads back, and the attachment shows it', () => {
    const spec = parseAttachRequest(body());
    const record = pendingRecord(
      {
        sandboxId: parseSandboxId('s1'),
        volumeId: parseVolumeId('v1'),
        kind: 'kata',
        fingerprint: specFingerprint(spec, Buffer.alloc(32, 7)),
        bus: 'virtio-blk',
        lane: { bus: 'virtio-blk', port: 'vmplug-rp1' },
      },
      spec,
      'storage-daemon',
    );
    expect(record.spec).toMatchObject({ backend: 'storage-daemon' });
    expect(JSON.stringify(record)).not.toContain(KEY);
    const reread = (json: unknown) => parseRecord(json, record.sandboxId, record.volumeId, '/x.json');
    const back = reread(JSON.parse(JSON.stringify(record)));
    expect(back.spec).toEqual(record.spec);
    const a = attachmentFromRecord(back);
    expect(a.backend).toBe('storage-daemon');
    expect(a.guestHint).toContain('PCI path');
    expect(a.guestHint).toContain('vmplug-rp1');
    // A record of before backends: qemu.
    const old = JSON.parse(JSON.stringify(record));
    delete old.spec.backend;
    expect(attachmentFromRecord(reread(old)).backend).toBe('qemu');
  });
});

describe('vhost-user pieces', () => {
  it('names the chardev and the export from the volume, and puts the device on a root port at addr 0', () => {
    const names = { device: 'vmpd-0123456789abcdef', hash: '0123456789abcdef' };
    expect(chardevId(names)).toBe('vmpc-0123456789abcdef');
    expect(vhostUserDeviceArgs(names, { bus: 'virtio-blk', port: 'vmplug-rp2' })).toEqual({
      driver: 'vhost-user-blk-pci',
      id: 'vmpd-0123456789abcdef',
      chardev: 'vmpc-0123456789abcdef',
      bus: 'vmplug-rp2',
      addr: '0',
    });
    expect(() => vhostUserDeviceArgs(names, { bus: 'scsi', scsiId: 1 })).toThrow(RangeError);
    const k = hotAttachExportKey(parseSandboxId('s1'), parseVolumeId('v1'));
    expect(k.name).toMatch(/^vmp-[0-9a-f]{16}$/);
    expect(hotAttachExportKey(parseSandboxId('s1'), parseVolumeId('v2')).name).not.toBe(k.name);
  });

  it('sees shared RAM only in a memory backend with share=true', async () => {
    const q = { timeoutMs: 1000 };
    expect(
      await guestRamShared(qomFake({ mem: { type: 'child<memory-backend-memfd>', share: true } }), q),
    ).toBe(true);
    expect(
      await guestRamShared(qomFake({ mem: { type: 'child<memory-backend-ram>', share: false } }), q),
    ).toBe(false);
    expect(
      await guestRamShared(
        qomFake({ rng0: { type: 'child<rng-random>', share: true }, type: { type: 'string' } }),
        q,
      ),
    ).toBe(false);
  });

  it('resolves auto by the RAM, the bus and whether a backend exists; an explicit choice stands', async () => {
    const q = { timeoutMs: 1000 };
    const shared = qomFake({ dimm1: { type: 'child<memory-backend-file>', share: true } });
    const plain = qomFake({ pc: { type: 'child<memory-backend-ram>' } });
    expect(await resolveBackend(parseAttachRequest(body()), shared, q, true)).toBe('storage-daemon');
    expect(await resolveBackend(parseAttachRequest(body()), plain, q, true)).toBe('qemu');
    expect(await resolveBackend(parseAttachRequest(body()), shared, q, false)).toBe('qemu');
    expect(await resolveBackend(parseAttachRequest(body({ bus: 'scsi' })), shared, q, true)).toBe('qemu');
    expect(await resolveBackend(parseAttachRequest(body({ backend: 'qemu' })), shared, q, true)).toBe('qemu');
    const untouched = qomFake({});
    expect(
      await resolveBackend(parseAttachRequest(body({ backend: 'storage-daemon' })), untouched, q, true),
    ).toBe('storage-daemon');
    expect(untouched.calls).toEqual([]);
    expect(
      await resolveBackend(
        parseAttachRequest({ mode: 'block', source: { type: 'hostDevice', path: '/dev/sda' } }),
        shared,
        q,
        true,
      ),
    ).toBeUndefined();
  });

  it('asks a QMP session whether the RAM is shared once, again after a reconnect', async () => {
    const q = { timeoutMs: 1000 };
    const fake = qomFake({ dimm1: { type: 'child<memory-backend-file>', share: true } });
    let generation = 1;
    Object.defineProperty(fake, 'generation', { get: () => generation });
    for (let i = 0; i < 3; i++)
      expect(await resolveBackend(parseAttachRequest(body()), fake, q, true)).toBe('storage-daemon');
    expect(fake.calls).toEqual(['qom-list', 'qom-get']);
    generation = 2;
    await resolveBackend(parseAttachRequest(body()), fake, q, true);
    expect(fake.calls).toEqual(['qom-list', 'qom-get', 'qom-list', 'qom-get']);
  });
});
