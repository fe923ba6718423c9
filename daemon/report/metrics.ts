import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { QmpSessionStateChange } from '../../qmp/session.js';
import type { ReconcileSummary } from '../../storage/reconcile.js';
import type { VolumeOperation } from './observed-service.js';

// vmplugd's Prometheus metrics (GET /metrics). One Registry per daemon instance, never
// prom-client's global one: two daemons in one process (tests) must not share counters.

const LATENCY_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export interface MetricsOptions {
  /** The sandboxes now, for the by-state gauge (read at scrape time). */
  sandboxes?: () => readonly { kind: string; state: string }[];
  /** Process metrics (CPU, memory, event loop lag, handles); default true. */
  processMetrics?: boolean;
}

export class DaemonMetrics {
  readonly registry = new Registry();
  readonly #ops: Record<'attach' | 'detach', Counter<'mode' | 'frontend' | 'result'>>;
  readonly #latency: Record<'attach' | 'detach', Histogram<'mode' | 'frontend'>>;
  readonly #errors: Counter<'op' | 'code'>;
  readonly #qmpReconnects: Counter<never>;
  readonly #qmpBusy: Counter<never>;
  readonly #qmpConnectFailures: Counter<'code'>;
  readonly #reconcileRuns: Counter<'result'>;
  readonly #reconcileRepairs: Counter<'action'>;
  readonly #reconcileFailures: Counter<never>;
  readonly #reconcileDuration: Histogram;

  constructor(opts: MetricsOptions = {}) {
    const registers = [this.registry];
    const counter = <L extends string>(name: string, help: string, labelNames: readonly L[]) =>
      new Counter<L>({ name, help, labelNames, registers });
    /** One metric per operation, named and described after it (attach first, as registered). */
    const perOp = <T>(make: (op: 'attach' | 'detach', title: string) => T) => ({
      attach: make('attach', 'Attach'),
      detach: make('detach', 'Detach'),
    });
    this.#ops = perOp((op, title) =>
      counter(`vmplug_${op}_total`, `${title} requests by mode, frontend and result (ok, error)`, [
        'mode',
        'frontend',
        'result',
      ]),
    );
    this.#latency = perOp(
      (op, title) =>
        new Histogram({
          name: `vmplug_${op}_duration_seconds`,
          help: `${title} request duration (successful ones) by mode and frontend`,
          labelNames: ['mode', 'frontend'],
          buckets: LATENCY_BUCKETS,
          registers,
        }),
    );
    this.#errors = counter(
      'vmplug_operation_errors_total',
      'Failed attach and detach requests by operation and error code',
      ['op', 'code'],
    );
    const sandboxes = opts.sandboxes;
    new Gauge({
      name: 'vmplug_sandboxes',
      help: 'Known sandboxes and domains by kind and state',
      labelNames: ['kind', 'state'],
      registers,
      collect() {
        this.reset();
        for (const s of sandboxes?.() ?? []) this.inc({ kind: s.kind, state: s.state });
      },
    });
    this.#qmpReconnects = counter(
      'vmplug_qmp_reconnects_total',
      "Connections to a sandbox's monitor made ready again after the first one",
      [],
    );
    this.#qmpBusy = counter(
      'vmplug_qmp_busy_retries_total',
      'Connection attempts that found the monitor held by another client and were retried',
      [],
    );
    this.#qmpConnectFailures = counter(
      'vmplug_qmp_connect_failures_total',
      'Failed or dropped monitor connections by error code',
      ['code'],
    );
    this.#reconcileRuns = counter('vmplug_reconcile_runs_total', 'Reconcile runs by result (ok, error)', [
      'result',
    ]);
    this.#reconcileRepairs = counter(
      'vmplug_reconcile_repairs_total',
      'Repairs made by reconcile, by action',
      ['action'],
    );
    this.#reconcileFailures = counter(
      'vmplug_reconcile_repair_failures_total',
      'Repairs that failed in a reconcile run (retried the next run)',
      [],
    );
    this.#reconcileDuration = new Histogram({
      name: 'vmplug_reconcile_duration_seconds',
      help: 'Duration of reconcile runs',
      buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60],
      registers,
    });
    if (opts.processMetrics !== false) collectDefaultMetrics({ register: this.registry });
  }

  observeOperation(op: VolumeOperation): void {
    const labels = { mode: op.mode, frontend: op.frontend };
    this.#ops[op.op].inc({ ...labels, result: op.ok ? 'ok' : 'error' });
    if (op.ok) this.#latency[op.op].observe(labels, op.ms / 1000);
    else this.#errors.inc({ op: op.op, code: op.code });
  }

  /** A QmpSession state change of a sandbox's monitor (discovery.onSessionState). */
  observeQmpState(change: QmpSessionStateChange): void {
    if (change.state === 'ready' && change.generation > 1) this.#qmpReconnects.inc();
    if (change.state === 'connecting' && change.error !== undefined) {
      if (change.error.code === 'QMP_BUSY') this.#qmpBusy.inc();
      this.#qmpConnectFailures.inc({ code: change.error.code });
    }
  }

  observeReconcile(r: { ms: number; summary?: ReconcileSummary; failed?: boolean }): void {
    this.#reconcileRuns.inc({ result: r.failed ? 'error' : 'ok' });
    this.#reconcileDuration.observe(r.ms / 1000);
    for (const repair of r.summary?.repairs ?? []) this.#reconcileRepairs.inc({ action: repair.action });
    const failures = r.summary?.failures.length ?? 0;
    if (failures > 0) this.#reconcileFailures.inc(failures);
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}

/** A reconcile function that tells `metrics` about each run. */
export function measuredReconcile(
  reconcile: (signal: AbortSignal) => Promise<unknown>,
  metrics: DaemonMetrics,
): (signal: AbortSignal) => Promise<unknown> {
  return async (signal) => {
    const started = performance.now();
    try {
      const summary = await reconcile(signal);
      metrics.observeReconcile({
        ms: performance.now() - started,
        ...(isSummary(summary) ? { summary } : {}),
      });
      return summary;
    } catch (err) {
      if (!signal.aborted) metrics.observeReconcile({ ms: performance.now() - started, failed: true });
      throw err;
    }
  };
}

function isSummary(x: unknown): x is ReconcileSummary {
  return (
    typeof x === 'object' &&
    x !== null &&
    Array.isArray((x as ReconcileSummary).repairs) &&
    Array.isArray((x as ReconcileSummary).failures)
  );
}
