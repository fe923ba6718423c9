import type { SandboxId } from './ids.js';

// What the node runs, as every part of vmplugd sees it: Kata sandboxes from discovery and libvirt
// domains, each a catalog of SandboxRecords. The REST routes add volumes and NICs to a record
// for their view; reporting and the attach router read the catalogs directly.

/** The coarse state of a sandbox. */
export type SandboxState =
  | 'running'
  | 'paused'
  | 'shutdown'
  | 'shutoff'
  | 'crashed'
  | 'unknown'
  | 'unreachable';

export interface SandboxPod {
  uid?: string;
  name?: string;
  namespace?: string;
}

/** One sandbox as a catalog knows it, before volumes are added. */
export interface SandboxRecord {
  id: string;
  kind: 'kata' | 'libvirt';
  state: SandboxState;
  /** Why it is unreachable. */
  reason?: string;
  /** The hypervisor's own run state (QEMU's query-status) when known. */
  hypervisorStatus?: string;
  pod?: SandboxPod;
  pid?: number;
  /** When vmplugd first saw it (ISO 8601). */
  discoveredAt: string;
}

/** Where sandboxes come from (discovery; a composite once libvirt domains join). */
export interface SandboxCatalog {
  list(): SandboxRecord[];
  get(id: SandboxId): SandboxRecord | undefined;
}

export const emptyCatalog: SandboxCatalog = { list: () => [], get: () => undefined };
