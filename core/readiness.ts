// Readiness as each part of vmplugd reports it (journal, discovery, engines, the reconcile loop)
// and as /readyz and the Kubernetes status show it.

export interface ReadinessCheck {
  ok: boolean;
  detail?: string;
}

export interface Readiness {
  ready: boolean;
  /** Named checks (e.g. `journal`, `discovery`), shown on /readyz either way. */
  checks: Record<string, ReadinessCheck>;
}

/** Whether the daemon can serve attach requests now. Must answer quickly; it is polled. */
export type ReadinessProbe = (signal: AbortSignal) => Promise<Readiness> | Readiness;
