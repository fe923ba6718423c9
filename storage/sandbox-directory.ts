import type { SandboxId } from '../core/ids.js';
import type { SandboxPresence as CoreSandboxPresence } from '../core/sandbox.js';
import type { QmpExecutor } from '../qmp/index.js';

// The attach engine's view of the sandboxes on the node. Discovery (daemon/) implements it from
// the private monitors under --monitor-dir; tests implement it over sandboxes they started.

/** A Kata sandbox vmplug can drive: QEMU started through bin/vmplug-qemu. */
export interface ManagedSandbox {
  readonly id: SandboxId;
  readonly kind: 'kata';
  /**
   * vmplug's private monitor, kept connected (a reconnecting QmpSession in the daemon). Commands
   * fail with a typed QMP error while QEMU is unreachable.
   */
  readonly qmp: QmpExecutor;
}

export type SandboxPresence = CoreSandboxPresence<ManagedSandbox>;

export interface SandboxDirectory {
  lookup(id: SandboxId): SandboxPresence;
  /** Every sandbox discovery knows of, present or unreachable (not gone). */
  known(): SandboxId[];
}
