import { NotFoundError } from './errors.js';
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

/** What an engine's directory of sandboxes answers for one id. */
export type SandboxPresence<S> =
  /** Its monitor is there: operate on it. */
  | { state: 'present'; sandbox: S }
  /** Known but its monitor does not answer right now (QEMU restarting, busy): retry later. */
  | { state: 'unreachable'; reason: string }
  /** No such sandbox on this node (never was, or its monitor directory is gone for good). */
  | { state: 'gone' };

/**
 * The sandbox an operation acts on: NotFoundError when it is gone; while its monitor does not
 * answer, the engine's own retryable backend error, made by `unreachable` from the detail.
 */
export function presentSandbox<S>(
  presence: SandboxPresence<S>,
  id: SandboxId,
  unreachable: (detail: string) => Error,
): S {
  if (presence.state === 'gone') throw new NotFoundError('sandbox', id);
  if (presence.state === 'unreachable') {
    throw unreachable(`the monitor of sandbox ${id} does not answer (${presence.reason})`);
  }
  return presence.sandbox;
}
