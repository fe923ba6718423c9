#!/usr/bin/env node
// `npx vmplugd` entry point: the daemon (see load-entry.js for sources vs dist/).
import { loadEntry } from './load-entry.js';

const load = () => loadEntry('daemon/main', 'vmplugd');

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
