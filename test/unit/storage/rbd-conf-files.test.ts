import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { confDir, confPath, removeConfFile, writeConfFile } from '../../../storage/rbd-conf-files.js';

const dirs: string[] = [];
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
});

describe('rbd conf files', () => {
  it('makes their directory when it is missing, and again after it went', async () => {
    const stateDir = await mkdtemp(join(tmpdir(), 'vmplug-conf-'));
    dirs.push(stateDir);
    const a = await writeConfFile(stateDir, { hash: 'aaaa' });
    expect(a).toBe(confPath(stateDir, { hash: 'aaaa' }));
    expect((await stat(confDir(stateDir))).mode & 0o777).toBe(0o755);
    expect((await stat(a)).mode & 0o777).toBe(0o644);
    // Written again over the first (the directory now known to be there).
    await writeConfFile(stateDir, { hash: 'aaaa' });
    expect(await readFile(a, 'utf8')).toMatch(/\[global\]/);
    await rm(confDir(stateDir), { recursive: true });
    const b = await writeConfFile(stateDir, { hash: 'bbbb' });
    expect(await readFile(b, 'utf8')).toMatch(/\[global\]/);
    expect(await removeConfFile(stateDir, { hash: 'bbbb' })).toBe(true);
    expect(await removeConfFile(stateDir, { hash: 'bbbb' })).toBe(false);
  });
});
