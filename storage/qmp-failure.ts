import { BackendError, type Redactable, VmplugError } from '../core/errors.js';
import { QmpCommandError, QmpError } from '../qmp/index.js';

// Turns whatever a QMP step threw into a storage error with a stable code. QEMU's own class and
// description go into the message (they name nodes and ids, useful to an operator); anything that
// could echo a secret is cut out by the caller's Redactables. Transport failures (timeout, closed,
// busy monitor) are retryable: the same request may succeed once QEMU answers again.

export function backendFailure(step: string, err: unknown, secrets: readonly Redactable[] = []): VmplugError {
  if (err instanceof VmplugError) return err;
  if (err instanceof QmpCommandError) {
    return new BackendError(step, `${err.errorClass}: ${err.desc}`, { cause: err, secrets });
  }
  if (err instanceof QmpError) {
    return new BackendError(step, `${err.code}: ${err.message}`, {
      cause: err,
      secrets,
      retryable: err.retryable || err.code === 'QMP_ABORTED',
    });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new BackendError(step, message, { cause: err, secrets, retryable: false });
}

/** QEMU 7.2 refusing a second object/node/device of the same name (a resumed step raced itself). */
export function isDuplicate(err: unknown): boolean {
  if (!(err instanceof QmpCommandError) || err.errorClass !== 'GenericError') return false;
  return (
    err.desc.startsWith('Duplicate nodes with node-name=') ||
    err.desc.startsWith('Duplicate device ID ') ||
    err.desc.startsWith('attempt to add duplicate property ')
  );
}

/**
 * device_add on a lane some device holds: QEMU 7.2's "lun already used by '<id>'" (scsi) and
 * "PCI: slot 0 function 0 not available for <driver>, in use by ..." (a root port).
 */
export function isLaneTaken(err: unknown): boolean {
  if (!(err instanceof QmpCommandError) || err.errorClass !== 'GenericError') return false;
  return (
    /^lun already used by /.test(err.desc) || /^PCI: slot \d+ function \d+ not available for /.test(err.desc)
  );
}

/** blockdev-del of a node a device still uses: "Node <name> is in use". */
export function isNodeInUse(err: unknown): boolean {
  return err instanceof QmpCommandError && / is in use$/.test(err.desc);
}

/** blockdev-del / object-del of something already gone. */
export function isAbsent(err: unknown): boolean {
  if (!(err instanceof QmpCommandError)) return false;
  return (
    err.errorClass === 'DeviceNotFound' ||
    err.desc.startsWith('Failed to find node with node-name=') ||
    /^object '.*' not found$/.test(err.desc)
  );
}

/** A second device_del while the guest has not finished the first unplug. */
export function isUnplugInProgress(err: unknown): boolean {
  return err instanceof QmpCommandError && err.desc.endsWith('is already in the process of unplug');
}

/**
 * librados could not reach the cluster (client_mount_timeout ran out, or no monitor took the
 * connection). Other connect errors (a refused key: "error connecting: Permission denied") are the
 * request's fault and stay BACKEND_FAILED.
 */
export function isCephConnectFailure(err: unknown): boolean {
  return (
    err instanceof QmpCommandError &&
    /error connecting: (Connection timed out|Connection refused|No route to host|Network is unreachable)/i.test(
      err.desc,
    )
  );
}
