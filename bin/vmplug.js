#!/usr/bin/env node
// `npx vmplug` entry point: the CLI client of vmplugd. Like bin/vmplugd.js, it runs the TypeScript
// sources through tsx in a checkout and dist/ where only the build exists.
import { existsSync } from 'node:fs';

const source = new URL('../daemon/cli/main.ts', import.meta.url);
const built = new URL('../dist/daemon/cli/main.js', import.meta.url);

async function load() {
  if (existsSync(source)) {
    const tsx = await import('tsx/esm/api').catch(() => undefined);
    if (tsx !== undefined) return tsx.tsImport(source.href, import.meta.url);
  }
  if (existsSync(built)) return import(built.href);
  throw new Error(
    'vmplug: neither the sources with tsx (run `npm ci`) nor dist/ (run `npm run build`) found',
  );
}

async function version() {
  try {
    const { readFile } = await import('node:fs/promises');
    return JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8')).version;
  } catch {
    return undefined;
  }
}

try {
  const { main } = await load();
  const code = await main({
    argv: process.argv.slice(2),
    env: process.env,
    stdin: process.stdin,
    stdout: process.stdout,
    stderr: process.stderr,
    version: await version(),
  });
  // Let stdout drain (a pipe to a CSI plugin) before exiting.
  process.exitCode = code;
  process.stdin.unref?.();
} catch (err) {
  process.stderr.write(`vmplug: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
}
