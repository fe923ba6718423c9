#!/usr/bin/env node
// `npx vmplugd` entry point. In a checkout (sources present and tsx installed by `npm ci`) it runs
// the TypeScript sources directly, so there is no build step to forget and never a stale build;
// where only the build exists (an image made with `npm run build` and `npm ci --omit=dev`) it
// runs dist/.
import { existsSync } from 'node:fs';

const source = new URL('../daemon/main.ts', import.meta.url);
const built = new URL('../dist/daemon/main.js', import.meta.url);

async function load() {
  if (existsSync(source)) {
    const tsx = await import('tsx/esm/api').catch(() => undefined);
    if (tsx !== undefined) return tsx.tsImport(source.href, import.meta.url);
  }
  if (existsSync(built)) return import(built.href);
  throw new Error(
    'vmplugd: neither the sources with tsx (run `npm ci`) nor dist/ (run `npm run build`) found',
  );
}

try {
  const { main } = await load();
  const code = await main({
    argv: process.argv.slice(2),
    env: process.env,
    stdout: process.stdout,
    stderr: process.stderr,
  });
  process.exit(code);
} catch (err) {
  process.stderr.write(`vmplugd: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
}
