import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../../core/errors.js';
import { compileDeviceGlob } from '../../../storage/device-glob.js';
import { admitSpec, hostDeviceCheck, hostDevicePolicy } from '../../../storage/host-device.js';
import { parseAttachRequest } from '../../../storage/volume-spec.js';

describe('hostDeviceCheck', () => {
  it('refuses a missing path, a character device and a regular file with a 422 naming source.path', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vmp-hd-'));
    const check = hostDeviceCheck(hostDevicePolicy('/dev/*'));
    try {
      const file = join(dir, 'file');
      await writeFile(file, 'x');
      for (const [path, says] of [
        [join(dir, 'missing'), 'does not exist'],
        ['/dev/null', 'is not a block device'],
        [file, 'is not a block device'],
        [dir, 'is not a block device'],
      ] as const) {
        const err = await check(path, { signal: new AbortController().signal }).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err, path).toBeInstanceOf(ValidationError);
        expect((err as ValidationError).field).toBe('source.path');
        expect((err as ValidationError).status).toBe(422);
        expect((err as Error).message).toContain(says);
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('the default policy allows rbd, nbd and device-mapper mappings only', () => {
    expect(hostDevicePolicy().allowedDevices.map((g) => g.pattern)).toEqual([
      '/dev/rbd*',
      '/dev/nbd*',
      '/dev/mapper/*',
    ]);
    expect(hostDevicePolicy('').allowedDevices).toEqual([]);
    expect(hostDevicePolicy([compileDeviceGlob('/dev/loop*')]).allowedDevices).toHaveLength(1);
  });

  it('admitSpec replaces a block path by the checked one and leaves rbd alone', async () => {
    const signal = new AbortController().signal;
    const block = parseAttachRequest({
      mode: 'block',
      source: { type: 'hostDevice', path: '/dev/disk/by-id/x' },
    });
    const admitted = await admitSpec(block, async () => '/dev/rbd3', signal);
    expect(admitted.mode === 'block' && admitted.source.path).toBe('/dev/rbd3');
    expect(block.mode === 'block' && block.source.path).toBe('/dev/disk/by-id/x');
    const rbd = parseAttachRequest({
      mode: 'rbd',
      source: {
        type: 'rbd',
        pool: 'p',
        image: 'i',
        monitors: ['127.0.0.1:6789'],
        user: 'u',
        key: 'AQDuSQNrSIzGGhAAA42jGo01/mILR5NFi7XNYA==',
      },
    });
    let called = false;
    expect(
      await admitSpec(
        rbd,
        async (p) => {
          called = true;
          return p;
        },
        signal,
      ),
    ).toBe(rbd);
    expect(called).toBe(false);
  });
});
