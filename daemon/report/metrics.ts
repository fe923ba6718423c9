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
  readonly #qmpReconnects: Counter;
  readonly #qmpBusy: Counter;
  readonly #qmpConnectFailures: Counter<'code'>;
  readonly #reconcileRuns: Counter<'result'>;
  readonly #reconcileRepairs: Counter<'action'>;
  readonly #reconcileFailures: Counter;
  readonly #reconcileDuration: Histogram;

  constructor(opts: MetricsOptions = {}) {
    const registers = [this.registry];
    const opLabels = ['mode', 'frontend', 'result'] as const;
    this.#ops = {
      attach: new Counter({
        name: 'vmplug_attach_total',
        help: 'Attach requests by mode, frontend and result (ok, error)',
        labelNames: opLabels,
        registers,
      }),
      detach: new Counter({
        name: 'vmplug_detach_total',
        help: 'Detach requests by mode, frontend and result (ok, error)',
        labelNames: opLabels,
        registers,
      }),
    };
    this.#latency = {
      attach: new Histogram({
        name: 'vmplug_attach_duration_seconds',
        help: 'Attach request duration (successful ones) by mode and frontend',
        labelNames: ['mode', 'frontend'],
        buckets: LATENCY_BUCKETS,
        registers,
      }),
      detach: new Histogram({
        name: 'vmplug_detach_duration_seconds',
        help: 'Detach request duration (successful ones) by mode and frontend',
        labelNames: ['mode', 'frontend'],
        buckets: LATENCY_BUCKETS,
        registers,
      }),
    };
    this.#errors = new Counter({
      name: 'vmplug_operation_errors_total',
      help: 'Failed attach and detach requests by operation and error code',
      labelNames: ['op', 'code'],
      registers,
    });
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
    this.#qmpReconnects = new Counter({
      name: 'vmplug_qmp_reconnects_total',
      help: "Connections to a sandbox's monitor made ready again after the first one",
      registers,
    });
    this.#qmpBusy = new Counter({
      name: 'vmplug_qmp_busy_retries_total',
      help: 'Connection attempts that found the monitor held by another client and were retried',
      registers,
    });
    this.#qmpConnectFailures = new Counter({
      name: 'vmplug_qmp_connect_failures_total',
      help: 'Failed or dropped monitor connections by error code',
      labelNames: ['code'],
      registers,
    });
    this.#reconcileRuns = new Counter({
      name: 'vmplug_reconcile_runs_total',
      help: 'Reconcile runs by result (ok, error)',
      labelNames: ['result'],
      registers,
    });
    this.#reconcileRepairs = new Counter({
      name: 'vmplug_reconcile_repairs_total',
      help: 'Repairs made by reconcile, by action',
      labelNames: ['action'],
      registers,
    });
    this.#reconcileFailures = new Counter({
      name: 'vmplug_reconcile_repair_failures_total',
      help: 'Repairs that failed in a reconcile run (retried the next run)',
      registers,
    });
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
