#!/usr/bin/env node
// `npx vmplug-csi` entry point: the CSI node plugin proxy (see load-entry.js for sources vs dist/).
import { readFile } from 'node:fs/promises';
import { loadEntry } from './load-entry.js';

try {
  const { main } = await loadEntry('csi/main', 'vmplug-csi');
  const pkg = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8'));
  const code = await main({
    argv: process.argv.slice(2),
    stdout: process.stdout,
    stderr: process.stderr,
    version: pkg.version,
  });
  process.exit(code);
} catch (err) {
  process.stderr.write(`vmplug-csi: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
}
