/**
 * The REST API fuzz of test/integration/api-fuzz.test.ts, longer: a live vmplugd, a real
 * Kata-shaped sandbox, three loop devices, `--requests` generated requests (default 100,000),
 * `--seed` to replay one. Prints the figures and what the aftermath check found; exits 1 on any
 * broken property (fast-check prints the seed and the failing batch).
 *
 *   npm run bench:fuzz [-- --requests 100000 --seed 42 --concurrency 8]
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QmpClient } from '../qmp/index.js';
import { fuzzAftermath, fuzzApi } from '../test/env/api-fuzz.js';
import { type DaemonProcess, startServingDaemon } from '../test/env/daemon.js';
import { createLoopDevice, type LoopDevice } from '../test/env/loop.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../test/env/sandbox.js';
import { hostContext } from './figures.js';

function arg(name: string): number | undefined {
  const i = process.argv.indexOf(`--${name}`);
  const v = i === -1 ? undefined : Number(process.argv[i + 1]);
  return v !== undefined && Number.isFinite(v) ? v : undefined;
}

async function main(): Promise<void> {
  const requests = arg('requests') ?? 100_000;
  let root: TestRoot | undefined;
  let sandbox: KataSandbox | undefined;
  let inspector: QmpClient | undefined;
  let daemon: DaemonProcess | undefined;
  let dir: string | undefined;
  const loops: LoopDevice[] = [];
  try {
    root = await createTestRoot();
    sandbox = await startKataSandbox(root, { inspectMonitor: true, bootTimeoutMs: 180_000 });
    inspector = await QmpClient.connect(sandbox.inspectQmpPath ?? '');
    for (let i = 0; i < 3; i++) loops.push(await createLoopDevice(8 * 1024 * 1024));
    dir = await mkdtemp(join(tmpdir(), 'vmp-fuzz-'));
    daemon = await startServingDaemon(root, sandbox.id, dir);
    console.log(`fuzz: ${requests} requests; ${hostContext()}`);
    const target = { daemon, sandboxId: sandbox.id, devices: loops.map((l) => l.path), inspector };
    const seed = arg('seed');
    const concurrency = arg('concurrency');
    const report = await fuzzApi(target, {
      requests,
      ...(seed !== undefined ? { seed } : {}),
      ...(concurrency !== undefined ? { concurrency } : {}),
    });
    console.log(
      `${report.requests} requests in ${report.ms} ms (${Math.round((report.requests * 1000) / report.ms)}/s, seed ${report.seed})`,
    );
    console.log(`by status ${JSON.stringify(report.byStatus)}`);
    console.log(`declared 5xx ${JSON.stringify(report.declaredFailures)}; ${report.attached} real attaches`);
    const problems = await fuzzAftermath(target, report);
    console.log(problems.length === 0 ? 'aftermath: clean' : `aftermath:\n  ${problems.join('\n  ')}`);
    if (problems.length > 0) process.exitCode = 1;
  } finally {
    await daemon?.stop().catch(() => undefined);
    await inspector?.close().catch(() => undefined);
    await sandbox?.stop().catch(() => undefined);
    await root?.cleanup().catch(() => undefined);
    await Promise.allSettled(loops.map((l) => l.detach()));
    if (dir) await rm(dir, { recursive: true, force: true });
  }
}

await main();
