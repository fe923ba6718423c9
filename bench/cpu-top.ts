/**
 * The top of a V8 .cpuprofile (vmplugd's, from `bench:attach --cpu-prof DIR`): self time by
 * function and by package, and how much of the profiled time the process was busy at all. With
 * --since-ms / --until-ms only the samples in that window of the profile count (ms from its start).
 *
 *   npx tsx bench/cpu-top.ts DIR/CPU.*.cpuprofile [--top 25] [--since-ms N] [--until-ms N]
 */
import { readFile } from 'node:fs/promises';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

/** `fastify`, `pino`, `node:internal`, `vmplug storage/`, or a V8 bucket like `(garbage collector)`. */
function packageOf(frame: ProfileNode['callFrame']): string {
  const url = frame.url;
  if (url === '') return frame.functionName.startsWith('(') ? frame.functionName : '(native)';
  if (url.startsWith('node:')) return 'node:internal';
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (nm?.[1] !== undefined) return nm[1];
  const ours = /\/(api|core|qmp|storage|net|daemon|libvirt|cli|systemd)\//.exec(url);
  return ours?.[1] !== undefined ? `vmplug ${ours[1]}/` : url;
}

async function main(): Promise<void> {
  const file = process.argv[2];
  if (file === undefined || file.startsWith('--')) throw new Error('usage: cpu-top.ts FILE.cpuprofile');
  const top = Number(arg('top') ?? 25);
  const since = Number(arg('since-ms') ?? 0) * 1000;
  const until = Number(arg('until-ms') ?? Number.POSITIVE_INFINITY) * 1000;
  const p = JSON.parse(await readFile(file, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  let t = 0;
  let windowUs = 0;
  for (const [i, id] of p.samples.entries()) {
    const dt = p.timeDeltas[i] ?? 0;
    t += dt;
    if (t < since || t > until) continue;
    windowUs += dt;
    selfUs.set(id, (selfUs.get(id) ?? 0) + dt);
  }
  const byFunction = new Map<string, number>();
  const byPackage = new Map<string, number>();
  let idle = 0;
  for (const [id, us] of selfUs) {
    const f = (byId.get(id) as ProfileNode).callFrame;
    if (f.functionName === '(idle)') {
      idle += us;
      continue;
    }
    const where =
      f.url === '' ? '' : ` ${f.url.replace(/^.*\/(node_modules|wt\/[^/]+|main)\//, '')}:${f.lineNumber + 1}`;
    const key = `${f.functionName || '(anonymous)'}${where}`;
    byFunction.set(key, (byFunction.get(key) ?? 0) + us);
    byPackage.set(packageOf(f), (byPackage.get(packageOf(f)) ?? 0) + us);
  }
  const busy = windowUs - idle;
  const ms = (us: number): string => (us / 1000).toFixed(1).padStart(9);
  const pct = (us: number): string => `${((100 * us) / Math.max(1, busy)).toFixed(1)}%`.padStart(7);
  process.stdout.write(
    `${file}\nwindow ${ms(windowUs).trim()} ms, busy ${ms(busy).trim()} ms (${((100 * busy) / Math.max(1, windowUs)).toFixed(1)}% of one core), idle ${ms(idle).trim()} ms\n`,
  );
  process.stdout.write('\nself time by package (share of busy time)\n');
  for (const [k, us] of [...byPackage].sort((a, b) => b[1] - a[1]).slice(0, 15))
    process.stdout.write(`${ms(us)} ms${pct(us)}  ${k}\n`);
  process.stdout.write(`\ntop ${top} functions by self time\n`);
  for (const [k, us] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top))
    process.stdout.write(`${ms(us)} ms${pct(us)}  ${k}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
