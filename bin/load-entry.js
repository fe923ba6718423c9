// Shared by the npm bin entry points (vmplugd, vmplug). In a checkout (sources present and tsx
// installed by `npm ci`) they run the TypeScript sources directly, so there is no build step to
// forget and never a stale build; where only the build exists (an image made with `npm run build`
// and `npm ci --omit=dev`) they run dist/.
import { existsSync } from 'node:fs';

/** Imports `<top>/<module>.ts` through tsx, or `<top>/dist/<module>.js`; `name` is for the error. */
export async function loadEntry(module, name) {
  const source = new URL(`../${module}.ts`, import.meta.url);
  const built = new URL(`../dist/${module}.js`, import.meta.url);
  if (existsSync(source)) {
    const tsx = await import('tsx/esm/api').catch(() => undefined);
    if (tsx !== undefined) return tsx.tsImport(source.href, import.meta.url);
  }
  if (existsSync(built)) return import(built.href);
  throw new Error(
    `${name}: neither the sources with tsx (run \`npm ci\`) nor dist/ (run \`npm run build\`) found`,
  );
}

/**
 * Loads `module`, runs its `main` with the process's argv, env and output streams (plus `io`) and
 * hands the exit code to `finish`; a failure to load or an escaped error is printed, code 1.
 */
export async function runEntry(module, name, io, finish) {
  try {
    const { main } = await loadEntry(module, name);
    const code = await main({
      argv: process.argv.slice(2),
      env: process.env,
      stdout: process.stdout,
      stderr: process.stderr,
      ...io,
    });
    finish(code);
  } catch (err) {
    process.stderr.write(`${name}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    finish(1);
  }
}
