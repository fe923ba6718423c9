#!/usr/bin/env node
// `npx vmplug` entry point: the CLI client of vmplugd (see load-entry.js for sources vs dist/).
import { loadEntry } from './load-entry.js';

const load = () => loadEntry('cli/main', 'vmplug');

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
