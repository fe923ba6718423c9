#!/usr/bin/env node
// `npx vmplugd` entry point: the daemon (see load-entry.js for sources vs dist/).
import { runEntry } from './load-entry.js';

await runEntry('daemon/main', 'vmplugd', {}, (code) => process.exit(code));
