import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { writeFileAtomic } from '../../../core/atomic-file.js';

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
        step: async (operation, _path, fn) => {
          steps.push(operation);
          return fn();
        },
      }),
    ).rejects.toMatchObject({ code: 'ENOENT' });
    expect(steps).toEqual(['create']);
  });

  it('uses a fixed temp path when asked (for sweeps that look for it by name)', async () => {
    const path = join(dir, 'c.conf');
    await writeFileAtomic(path, 'x', { mode: 0o644, tempPath: `${path}.tmp` });
    expect(await readdir(dir)).toEqual(['c.conf']);
    expect((await stat(path)).mode & 0o777).toBe(0o644);
  });

  it('fsyncs the file and the directory unless durable is false (still atomic: temp + rename)', async () => {
    const record = (durable?: boolean) => {
      const steps: string[] = [];
      return {
        steps,
        run: () =>
          writeFileAtomic(join(dir, 'd.json'), 'x', {
            mode: 0o600,
            ...(durable !== undefined ? { durable } : {}),
            step: async (operation, _path, fn) => {
              steps.push(operation);
              return fn();
            },
          }),
      };
    };
    const durable = record();
    await durable.run();
    expect(durable.steps).toEqual(['create', 'write', 'fsync', 'rename', 'open', 'fsync']);
    const volatile = record(false);
    await volatile.run();
    expect(volatile.steps).toEqual(['create', 'write', 'rename']);
    expect(await readFile(join(dir, 'd.json'), 'utf8')).toBe('x');
    expect(await readdir(dir)).toEqual(['d.json']);
  });
});
