/**
 * vmplugd's memory (VmRSS, VmHWM from /proc/<pid>/status) idle after start-up and after a burst
 * of REST calls, against a bare `node` process measured in the same run (the floor no Node daemon
 * goes below). No guests: the attach bench (bench/attach.ts) measures it with sandboxes and under
 * load. Variants:
 *   sources  bin/vmplugd.js as the tests run it: the TypeScript through tsx (its loader thread and
 *            esbuild cost memory a production install does not pay)
 *   build    the tsc build (what `npm run build` ships) with node's default options
 *   build --max-semi-space-size=2  a smaller V8 young generation: what production runs (bin/vmplugd.js's
 *            first line and the systemd unit), measured 2026-12-06 at 79/82 MiB (idle / after the
 *            calls) against 90/108 for the default
 *
 *   npm run bench:daemon-memory [-- --calls 3000]
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildDaemon, type DaemonProcess, startDaemonProcess } from '../test/env/daemon.js';
import { hostContext } from './figures.js';

const out = (line = ''): void => {
  process.stdout.write(`${line}\n`);
};
const calls = (() => {
  const i = process.argv.indexOf('--calls');
  return i >= 0 ? Number(process.argv[i + 1]) : 3000;
})();

interface Mem {
  rssKiB: number;
  hwmKiB: number;
}
async function memory(pid: number): Promise<Mem> {
  const text = await readFile(`/proc/${pid}/status`, 'utf8');
  const kib = (key: string): number =>
    Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
  return { rssKiB: kib('VmRSS'), hwmKiB: kib('VmHWM') };
}
const mib = (kib: number): string => `${(kib / 1024).toFixed(1)}`.padStart(8);

async function bareNode(): Promise<Mem> {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
  try {
    await new Promise((r) => setTimeout(r, 1500));
    return await memory(child.pid as number);
  } finally {
    child.kill('SIGKILL');
  }
}

async function measure(
  dir: string,
  label: string,
  opts: { script?: string; nodeArgs?: string[] },
): Promise<[string, Mem, Mem]> {
  const d: DaemonProcess = await startDaemonProcess({
    dir: join(dir, label.replace(/\W/g, '-')),
    monitorDir: join(dir, 'monitors'),
    kataVmRoot: join(dir, 'kata'),
    logLevel: 'info',
    startTimeoutMs: 60_000,
    ...opts,
  });
  try {
    // Start-up work (node facts, first reconcile) settles within a couple of seconds.
    await new Promise((r) => setTimeout(r, 3000));
    const idle = await memory(d.pid);
    for (let i = 0; i < calls; i += 10) {
      await Promise.all(
        Array.from({ length: 10 }, (_, k) =>
          d.call('GET', k % 2 === 0 ? '/v1/sandboxes' : '/v1/sandboxes/sb-nope/volumes/v'),
        ),
      );
    }
    return [label, idle, await memory(d.pid)];
  } finally {
    await d.stop();
  }
}

async function main(): Promise<void> {
  out('bench:daemon-memory: vmplugd VmRSS / VmHWM (MiB) idle after start-up and after REST calls');
  out(hostContext());
  const dir = await mkdtemp(join(tmpdir(), 'vmplug-mem-'));
  try {
    await mkdir(join(dir, 'monitors'), { recursive: true });
    await mkdir(join(dir, 'kata'), { recursive: true });
    const runner = await buildDaemon(join(dir, 'build'));
    const bare = await bareNode();
    const rows = [
      await measure(dir, 'sources (tsx)', {}),
      await measure(dir, 'build', { script: runner }),
      await measure(dir, 'build --max-semi-space-size=2', {
        script: runner,
        nodeArgs: ['--max-semi-space-size=2'],
      }),
    ];
    out(
      `bare node (setInterval): VmRSS ${mib(bare.rssKiB).trim()} MiB, VmHWM ${mib(bare.hwmKiB).trim()} MiB`,
    );
    out(
      `\n  ${'variant'.padEnd(40)}${'idle RSS'.padStart(9)}${'HWM'.padStart(8)}${`after ${calls} calls RSS`.padStart(23)}${'HWM'.padStart(8)}${'idle RSS / bare'.padStart(17)}`,
    );
    for (const [label, idle, after] of rows) {
      out(
        `  ${label.padEnd(40)}${mib(idle.rssKiB).padStart(9)}${mib(idle.hwmKiB)}${mib(after.rssKiB).padStart(23)}${mib(after.hwmKiB)}` +
          `${`${(idle.rssKiB / bare.rssKiB).toFixed(2)}x`.padStart(17)}`,
      );
    }
    out(hostContext());
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
