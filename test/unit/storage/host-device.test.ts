import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ValidationError } from '../../../core/errors.js';
import { checkHostBlockDevice } from '../../../storage/host-device.js';

describe('checkHostBlockDevice', () => {
  it('refuses a missing path, a character device and a regular file with a 422 naming source.path', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vmp-hd-'));
    try {
      const file = join(dir, 'file');
      await writeFile(file, 'x');
      for (const [path, says] of [
        [join(dir, 'missing'), 'does not exist'],
        ['/dev/null', 'is not a block device'],
        [file, 'is not a block device'],
        [dir, 'is not a block device'],
      ] as const) {
        const err = await checkHostBlockDevice(path).then(
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
});
