import type { SandboxId } from './ids.js';

// What the node runs, as every part of vmplugd sees it: Kata sandboxes from discovery and libvirt
// domains, each a catalog of SandboxRecords. The REST routes add volumes and NICs to a record
// for their view; reporting and the attach router read the catalogs directly.

// The record types are the REST contract's (api/sandboxes.ts), written once there.
import type { SandboxRecord } from '../api/index.js';

export type { SandboxPod, SandboxRecord, SandboxState } from '../api/index.js';

/** Where sandboxes come from (discovery; a composite once libvirt domains join). */
export interface SandboxCatalog {
  list(): SandboxRecord[];
  get(id: SandboxId): SandboxRecord | undefined;
}

export const emptyCatalog: SandboxCatalog = { list: () => [], get: () => undefined };
