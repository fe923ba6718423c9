#!/usr/bin/env node
// Builds vmplug's libvirt addon (and the small peer-credentials addon beside it) with node-gyp against Debian's libvirt-dev. Runs as the root
// package's `install` script (so `npm ci` leaves a working checkout) and from test/env/setup.
// Skips the build when the sources are unchanged since the last one (a hash, not mtimes: a fresh
// clone gives every file the same mtime). `--force` always rebuilds. Set
// VMPLUG_SKIP_LIBVIRT_ADDON=1 to install without it (vmplugd then runs without libvirt support).
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
// Four targets: the libvirt addon, and three libc-only ones: peer credentials (src/peercred.cc),
// the kernel keyring (src/keyring.cc) and the one-trip file replace (src/fsio.cc).
const outputs = [
  'vmplug_libvirt.node',
  'vmplug_peercred.node',
  'vmplug_keyring.node',
  'vmplug_fsio.node',
].map((f) => join(here, 'build', 'Release', f));
const stampPath = join(here, 'build', 'vmplug-sources.sha256');

async function sourceHash() {
  const h = createHash('sha256');
  const files = ['binding.gyp', ...(await readdir(join(here, 'src'))).sort().map((f) => join('src', f))];
  for (const f of files) {
    h.update(f);
    h.update(await readFile(join(here, f)));
  }
  // The addon is Node-API (ABI-stable), but a different libvirt-dev or node-addon-api must rebuild.
  h.update(process.platform + process.arch);
  return h.digest('hex');
}

function run(cmd, args, opts) {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 64 * 1024 * 1024, timeout: 300_000, ...opts }, (err, stdout, stderr) => {
      if (err) reject(Object.assign(err, { output: `${stdout}${stderr}` }));
      else resolve(`${stdout}${stderr}`);
    });
  });
}

async function main() {
  if (process.env.VMPLUG_SKIP_LIBVIRT_ADDON === '1') {
    process.stderr.write('libvirt addon: skipped (VMPLUG_SKIP_LIBVIRT_ADDON=1)\n');
    return;
  }
  const force = process.argv.includes('--force');
  const hash = await sourceHash();
  const built = outputs.every((o) => existsSync(o));
  if (!force && built && (await readFile(stampPath, 'utf8').catch(() => '')) === hash) return;

  try {
    await run('pkg-config', ['--exists', 'libvirt']);
  } catch {
    throw new Error('libvirt-dev is missing (pkg-config cannot find libvirt): run test/env/setup as root');
  }
  const require = createRequire(import.meta.url);
  const nodeGyp = join(dirname(require.resolve('node-gyp/package.json')), 'bin', 'node-gyp.js');
  const args = [nodeGyp, 'rebuild', '-j', 'max'];
  // Headers of the running Node, where its package put them: node-gyp would otherwise download
  // them, and CI reaches no download site.
  const prefix = dirname(dirname(process.execPath));
  if (existsSync(join(prefix, 'include', 'node', 'node_api.h'))) args.push(`--nodedir=${prefix}`);

  const t0 = performance.now();
  try {
    await run(process.execPath, args, { cwd: here });
  } catch (err) {
    process.stderr.write(`${err.output ?? ''}\n`);
    throw new Error(`libvirt addon: node-gyp failed (${err.message.split('\n')[0]})`);
  }
  await mkdir(dirname(stampPath), { recursive: true });
  await writeFile(stampPath, hash);
  process.stderr.write(`libvirt addon: built in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
}

main().catch((err) => {
  process.stderr.write(`${err.message}\n`);
  process.exitCode = 1;
});
