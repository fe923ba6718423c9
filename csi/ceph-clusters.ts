// Monitors of a Ceph cluster by clusterID, from a file in ceph-csi's own config.json format
// (`[{"clusterID": "...", "monitors": ["10.0.0.1:6789", ...]}]`, the ConfigMap ceph-csi mounts at
// /etc/ceph-csi-config/config.json): vmplug-csi mounts the same ConfigMap, so one place names the
// monitors. Read at each NodeStage of a direct rbd volume (a few hundred bytes; a ConfigMap update
// is seen without a restart).
import { readFile } from 'node:fs/promises';
import type { MonitorsOf } from './direct-mode.js';
import { failedPrecondition } from './status.js';

const MAX_BYTES = 1024 * 1024;

export function monitorsFromFile(path: string | undefined, timeoutMs = 5_000): MonitorsOf {
  return async (clusterId) => {
    if (path === undefined) return undefined;
    let text: string;
    try {
      text = await readFile(path, { encoding: 'utf8', signal: AbortSignal.timeout(timeoutMs) });
    } catch (err) {
      throw failedPrecondition(
        `cannot read the Ceph cluster config ${path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`,
      );
    }
    return monitorsIn(text.slice(0, MAX_BYTES), clusterId, path);
  };
}

/** The monitors of `clusterId` in a ceph-csi config.json text. */
export function monitorsIn(text: string, clusterId: string, path = 'config'): string[] | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw failedPrecondition(`${path} is not JSON`);
  }
  if (!Array.isArray(parsed))
    throw failedPrecondition(`${path} must be a JSON array of {clusterID, monitors}`);
  for (const entry of parsed as unknown[]) {
    const e = entry as { clusterID?: unknown; monitors?: unknown };
    if (e?.clusterID !== clusterId) continue;
    if (!Array.isArray(e.monitors) || !e.monitors.every((m) => typeof m === 'string' && m.length > 0)) {
      throw failedPrecondition(`${path}: clusterID ${JSON.stringify(clusterId)} has no list of monitors`);
    }
    return e.monitors as string[];
  }
  return undefined;
}
