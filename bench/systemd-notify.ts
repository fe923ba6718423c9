/**
 * What one sd_notify costs vmplugd: `systemd-notify --no-block` run through execFile (the glue in
 * systemd/notify.ts), from the call until the datagram reached a receiver standing in for
 * systemd's notification socket, and until the helper had exited (the promise vmplugd awaits).
 * Also the event-loop time vmplugd spends per send (the synchronous part of the fork+exec), which
 * is what the WATCHDOG=1 pings every 15 s take from request handling. Prints figures; asserts nothing.
 *
 *   npx tsx bench/systemd-notify.ts [sends]   (default 200)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { systemdNotifySender } from '../systemd/notify.js';
import { startNotifyReceiver } from '../test/env/notify.js';
import { hostContext, printTable, summarize } from './figures.js';

const sends = Number(process.argv[2] ?? 200);

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'vmplug-bench-notify-'));
  const receiver = await startNotifyReceiver(join(dir, 'notify'));
  try {
    const send = systemdNotifySender(receiver.socketPath);
    const toExit: number[] = [];
    const toReceiver: number[] = [];
    const blocking: number[] = [];
    for (let i = 0; i < sends + 10; i++) {
      const assignment = `STATUS=bench ${i}`;
      const t0 = performance.now();
      const done = send(['WATCHDOG=1', assignment], AbortSignal.timeout(10_000));
      const sync = performance.now() - t0;
      const arrived = receiver.waitFor(assignment, { timeoutMs: 10_000 }).then(() => performance.now() - t0);
      await done;
      const exited = performance.now() - t0;
      const received = await arrived;
      if (i < 10) continue; // warm-up
      blocking.push(sync);
      toExit.push(exited);
      toReceiver.push(received);
    }
    process.stdout.write(`${hostContext()}\n`);
    printTable(`systemd-notify --no-block, ${sends} sends`, [
      ['event loop blocked (spawn)', summarize(blocking)],
      ['call -> datagram received', summarize(toReceiver)],
      ['call -> helper exited', summarize(toExit)],
    ]);
    const pids = new Set(receiver.received.map((n) => n.pid));
    process.stdout.write(`\nsender pids seen: ${[...pids].join(', ')} (this process: ${process.pid})\n`);
  } finally {
    await receiver.close();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
