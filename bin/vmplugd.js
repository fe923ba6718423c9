#!/usr/bin/env -S node --max-semi-space-size=2
// `npx vmplugd` entry point (and the image's): the daemon (see load-entry.js for sources vs dist/).
// --max-semi-space-size=2 (MiB): V8's young generation at 2 MiB semi-spaces instead of up to 16
// keeps vmplugd's resident memory at about 75 MiB idle and 82 MiB at its peak instead of 90 and
// 117 (bench:attach, 2026-12-06), with no change in attach latency or throughput above the noise.
// The systemd unit starts node with the same option (a unit test keeps the two equal).
import { runEntry } from './load-entry.js';

await runEntry('daemon/main', 'vmplugd', {}, (code) => process.exit(code));
