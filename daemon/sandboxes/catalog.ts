import type { SandboxId } from '../../core/ids.js';
import type { SandboxCatalog, SandboxRecord } from '../../core/sandbox.js';
import type { DiscoveredSandbox, SandboxDiscovery } from './discovery.js';

// Discovery's sandboxes in the REST API's shape.

export function sandboxRecord(s: DiscoveredSandbox): SandboxRecord {
  const r: SandboxRecord = {
    id: s.id,
    kind: s.kind,
    state: s.reachability === 'unreachable' ? 'unreachable' : s.vmState,
    discoveredAt: s.discoveredAt,
  };
  if (s.reason !== undefined) r.reason = s.reason;
  if (s.qemuStatus !== undefined) r.hypervisorStatus = s.qemuStatus;
  if (s.pod !== undefined) r.pod = { ...s.pod };
  if (s.qemuPid !== undefined) r.pid = s.qemuPid;
  return r;
}

export function discoveryCatalog(discovery: Pick<SandboxDiscovery, 'list' | 'get'>): SandboxCatalog {
  return {
    list: () => discovery.list().map(sandboxRecord),
    get: (id: SandboxId) => {
      const s = discovery.get(id);
      return s === undefined ? undefined : sandboxRecord(s);
    },
  };
}

/**
 * Several sources as one catalog (Kata discovery, libvirt domains): listed together, sorted by
 * kind then id; get() asks each in turn. Ids of different kinds never clash in practice (a Kata id
 * is 64 hex digits), and when they would, the first source wins.
 */
export function combineCatalogs(...catalogs: SandboxCatalog[]): SandboxCatalog {
  return {
    list: () =>
      catalogs
        .flatMap((c) => c.list())
        .sort((a, b) =>
          a.kind === b.kind ? (a.id < b.id ? -1 : a.id > b.id ? 1 : 0) : a.kind < b.kind ? -1 : 1,
        ),
    get: (id: SandboxId) => {
      for (const c of catalogs) {
        const r = c.get(id);
        if (r !== undefined) return r;
      }
      return undefined;
    },
  };
}
