/**
 * Summaries and a plain-text table for the benchmarks' printed figures. Percentiles use the
 * nearest-rank method on the sorted samples (p99 of 200 samples is the 198th smallest).
 */
import { cpus, loadavg } from 'node:os';

export interface Summary {
  n: number;
  min: number;
  median: number;
  p90: number;
  p99: number;
  max: number;
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1] as number;
}

export function summarize(samples: readonly number[]): Summary {
  const s = [...samples].sort((a, b) => a - b);
  const n = s.length;
  const median =
    n === 0
      ? Number.NaN
      : n % 2
        ? (s[(n - 1) / 2] as number)
        : ((s[n / 2 - 1] as number) + (s[n / 2] as number)) / 2;
  return {
    n,
    min: s[0] ?? Number.NaN,
    median,
    p90: percentile(s, 90),
    p99: percentile(s, 99),
    max: s[n - 1] ?? Number.NaN,
  };
}

function num(x: number): string {
  if (!Number.isFinite(x)) return '-';
  return x < 1 ? x.toFixed(3) : x < 100 ? x.toFixed(2) : x.toFixed(0);
}

/** Prints rows of (label, summary) with the chosen columns, all in milliseconds. */
export function printTable(
  title: string,
  rows: ReadonlyArray<readonly [string, Summary]>,
  columns: ReadonlyArray<keyof Summary> = ['n', 'min', 'median', 'p99', 'max'],
): void {
  const width = Math.max(...rows.map(([l]) => l.length), 4) + 2;
  const head = columns.map((c) => (c === 'n' ? 'n' : `${c} ms`).padStart(11)).join('');
  process.stdout.write(`\n${title}\n  ${'case'.padEnd(width)}${head}\n`);
  for (const [label, s] of rows) {
    const cells = columns.map((c) => (c === 'n' ? String(s.n) : num(s[c])).padStart(11)).join('');
    process.stdout.write(`  ${label.padEnd(width)}${cells}\n`);
  }
}

/** One line of context: figures from a loaded 2-core machine mean something else. */
export function hostContext(): string {
  const [l1 = 0, l5 = 0] = loadavg();
  return `host: ${cpus().length} cores, load average ${l1.toFixed(2)} (1 min) ${l5.toFixed(2)} (5 min), Node ${process.version}`;
}
