import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readSmallFile, unlinkDurable, writeFileAtomic } from '../../../core/atomic-file.js';
import { fsioAddon } from '../../../core/native-fsio.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmplug-atomic-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('writeFileAtomic', () => {
  it('replaces the file whole, with the mode given, and leaves no temp file', async () => {
    const path = join(dir, 'sub', 'a.json');
    await writeFileAtomic(path, 'one', { mode: 0o600, dirMode: 0o700 });
    await writeFileAtomic(path, 'two', { mode: 0o600 });
    expect(await readFile(path, 'utf8')).toBe('two');
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    expect(await readdir(join(dir, 'sub'))).toEqual(['a.json']);
  });

  it('writes nothing when aborted, and reports each failing step through `step`', async () => {
    const path = join(dir, 'b.json');
    const ac = new AbortController();
    ac.abort();
    await expect(writeFileAtomic(path, 'x', { mode: 0o600, signal: ac.signal })).rejects.toThrow();
    expect(await readdir(dir)).toEqual([]);
    const steps: string[] = [];
    await expect(
      writeFileAtomic(join(dir, 'missing', 'c.json'), 'x', {
        mode: 0o600,
        native: false,
        step: async (operation, _path, fn) => {
          steps.push(operation);
          return fn();
        },
      }),
    ).rejects.toMatchObject({ code: 'ENOENT' });
    expect(steps).toEqual(['create']);
  });

  it('fsyncs the file and its directory, unless told the file need not survive a power cut', async () => {
    const record =
      (steps: string[]) =>
      async <T>(operation: string, _path: string, fn: () => Promise<T>) => {
        steps.push(operation);
        return fn();
      };
    const durable: string[] = [];
    await writeFileAtomic(join(dir, 'd.json'), 'x', { mode: 0o600, native: false, step: record(durable) });
    expect(durable).toEqual(['create', 'write', 'fsync', 'rename', 'open', 'fsync']);
    const volatile: string[] = [];
    await writeFileAtomic(join(dir, 'e.conf'), 'y', {
      mode: 0o644,
      durable: false,
      native: false,
      step: record(volatile),
    });
    expect(volatile).toEqual(['create', 'write', 'rename']);
    expect(await readFile(join(dir, 'e.conf'), 'utf8')).toBe('y');
  });

  it('takes one trip through the native addon when it is built: same file, one step, errors as node:fs', async () => {
    expect(fsioAddon(), 'the addon is built by npm run build:libvirt').toBeDefined();
    const steps: string[] = [];
    const step = async <T>(operation: string, _path: string, fn: () => Promise<T>) => {
      steps.push(operation);
      return fn();
    };
    const path = join(dir, 'n.json');
    await writeFileAtomic(path, 'one', { mode: 0o600, step });
    await writeFileAtomic(path, new TextEncoder().encode('two'), { mode: 0o640, durable: false, step });
    expect(steps).toEqual(['replace', 'replace']);
    expect(await readFile(path, 'utf8')).toBe('two');
    expect((await stat(path)).mode & 0o777).toBe(0o640);
    expect(await readdir(dir)).toEqual(['n.json']);
    await expect(writeFileAtomic(join(dir, 'missing', 'm.json'), 'x', { mode: 0o600 })).rejects.toMatchObject(
      {
        code: 'ENOENT',
        syscall: 'open',
        path: join(dir, 'missing'),
      },
    );
    // A directory in the way of the rename: refused, and the temp file goes.
    await mkdir(join(dir, 'taken.json'));
    await writeFile(join(dir, 'taken.json', 'x'), '');
    await expect(writeFileAtomic(join(dir, 'taken.json'), 'x', { mode: 0o600 })).rejects.toMatchObject({
      code: 'EISDIR',
      syscall: 'rename',
    });
    expect((await readdir(dir)).sort()).toEqual(['n.json', 'taken.json']);
  });

  it('reads a small regular file whole, refusing what is not one, and removes one durably', async () => {
    const path = join(dir, 'r.json');
    await writeFile(path, 'x'.repeat(100));
    expect((await readSmallFile(path, 100)).toString()).toBe('x'.repeat(100));
    await expect(readSmallFile(path, 99)).rejects.toMatchObject({ code: 'EFBIG' });
    await expect(readSmallFile(join(dir, 'none'), 10)).rejects.toMatchObject({ code: 'ENOENT' });
    await mkdir(join(dir, 'sub'));
    await expect(readSmallFile(join(dir, 'sub'), 10)).rejects.toMatchObject({ code: 'EISDIR' });
    // A FIFO in a record's place: refused, never opened for a read that would wait for a writer.
    await promisify(execFile)('mkfifo', [join(dir, 'fifo')]);
    await expect(readSmallFile(join(dir, 'fifo'), 10)).rejects.toMatchObject({ code: 'EINVAL' });
    expect(await unlinkDurable(path)).toBe(true);
    expect(await unlinkDurable(path)).toBe(false);
    expect(await unlinkDurable(join(dir, 'no-dir', 'x'))).toBe(false);
    expect((await readdir(dir)).sort()).toEqual(['fifo', 'sub']);
  });

  it('uses a fixed temp path when asked (for sweeps that look for it by name)', async () => {
    const path = join(dir, 'c.conf');
    await writeFileAtomic(path, 'x', { mode: 0o644, tempPath: `${path}.tmp` });
    expect(await readdir(dir)).toEqual(['c.conf']);
    expect((await stat(path)).mode & 0o777).toBe(0o644);
  });
});
