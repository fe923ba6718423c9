#!/usr/bin/env node
// `npx vmplug` entry point: the CLI client of vmplugd (see load-entry.js for sources vs dist/).
import { runEntry } from './load-entry.js';

async function version() {
  try {
    const { readFile } = await import('node:fs/promises');
    return JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8')).version;
  } catch {
    return undefined;
  }
}

await runEntry('cli/main', 'vmplug', { stdin: process.stdin, version: await version() }, (code) => {
  // Let stdout drain (a pipe to a CSI plugin) before exiting: set the code, do not exit.
  process.exitCode = code;
  process.stdin.unref?.();
});
