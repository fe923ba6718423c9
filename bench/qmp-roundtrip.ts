/**
 * QMP round trips against a real Kata-shaped sandbox's private vmplug monitor (TCG guest running):
 *   - query-status over one connection, one at a time (after a warm-up);
 *   - the same with 16 commands in flight (throughput of one connection);
 *   - connect + greeting + qmp_capabilities + query-status + close, a fresh connection each time.
 * Prints min / median / p99 / max; asserts nothing. Cleans up the sandbox however it ends.
 *
 *   npm run bench:qmp-roundtrip [-- <round trips> <connects>]   (default 2000 200)
 */
import { performance } from 'node:perf_hooks';
import { QmpClient, queryStatus } from '../qmp/index.js';
import { createTestRoot, startKataSandbox } from '../test/env/sandbox.js';
import { hostContext, printTable, summarize } from './figures.js';

const roundTrips = Number(process.argv[2] ?? 2000);
const connects = Number(process.argv[3] ?? 200);
const warmUp = 200;
const inFlight = 16;

async function main(): Promise<void> {
  const root = await createTestRoot();
  try {
    const sandbox = await startKataSandbox(root);
    process.stdout.write(
      `sandbox ${sandbox.id} booted in ${(sandbox.bootMs / 1000).toFixed(1)} s; monitor ${sandbox.vmplugQmpPath}\n${hostContext()}\n`,
    );

    const qmp = await QmpClient.connect(sandbox.vmplugQmpPath);
    const sequential: number[] = [];
    let pipelinedMs: number;
    try {
      for (let i = 0; i < warmUp; i++) await queryStatus(qmp);
      for (let i = 0; i < roundTrips; i++) {
        const t = performance.now();
        await queryStatus(qmp);
        sequential.push(performance.now() - t);
      }
      // Many in flight on one connection: QEMU answers in order, the client matches by id.
      const t = performance.now();
      let next = 0;
      await Promise.all(
        Array.from({ length: inFlight }, async () => {
          while (next++ < roundTrips) await queryStatus(qmp);
        }),
      );
      pipelinedMs = performance.now() - t;
    } finally {
      await qmp.close();
    }

    // A monitor serves one client at a time: each connect waits for the previous close.
    const fresh: number[] = [];
    for (let i = 0; i < connects; i++) {
      const t = performance.now();
      const c = await QmpClient.connect(sandbox.vmplugQmpPath);
      try {
        await queryStatus(c);
      } finally {
        await c.close();
      }
      fresh.push(performance.now() - t);
    }

    printTable('QMP on the private monitor', [
      ['query-status, one connection, sequential', summarize(sequential)],
      ['connect+negotiate+query-status+close', summarize(fresh)],
    ]);
    process.stdout.write(
      `\nquery-status with ${inFlight} in flight on one connection: ${roundTrips} in ${pipelinedMs.toFixed(0)} ms = ` +
        `${Math.round((roundTrips / pipelinedMs) * 1000)} commands/s ` +
        `(sequential: ${Math.round((1000 * sequential.length) / sequential.reduce((a, b) => a + b, 0))} commands/s)\n`,
    );
  } finally {
    await root.cleanup();
  }
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
