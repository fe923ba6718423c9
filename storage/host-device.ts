import { realpath, stat } from 'node:fs/promises';
import { BackendError, DeviceInUseError, DeviceNotAllowedError, ValidationError } from '../core/errors.js';
import { type DeviceGlob, firstMatch, parseDeviceGlobList } from './device-glob.js';
import {
  DEFAULT_HOST_FACTS_PATHS,
  gatherHostUseFacts,
  type HostFactsPaths,
  kernelDevice,
  majMinOf,
  readHostTables,
} from './host-facts.js';
import { describeHostUses, hostUseVerdict } from './host-use.js';
import type { AttachSpec } from './volume-spec.js';

// Block mode hands a guest a device node of this host. Before anything is journalled, every engine
// (Kata, libvirt, the pod API) runs one check, `HostDeviceCheck`, in this order:
//   1. the path must be a block device here (422 on source.path: a vanished mapping, a file);
//   2. symlinks (/dev/disk/by-id/...) are resolved, and the resolved device must match the node's
//      allow-list (`allowedDevices`; 403 DEVICE_NOT_ALLOWED naming the setting), so a caller of the
//      socket cannot name the node's own disks through a link;
//   3. the host must not use it or any of its partitions: mounted, swap, held by dm/md/LVM, or
//      claimed exclusively by the kernel (409 DEVICE_IN_USE on source.path).
// It answers the resolved path, which is what QEMU or libvirt then get: a link re-pointed between
// the check and the attach cannot swap the device. A read-only request is checked the same way: a
// guest reading a mounted filesystem under the host's writes sees garbage, and the host's disks
// are not the guest's to read.

/** The allow-list when none is configured: mappings a CSI plugin makes, never the node's disks. */
export const DEFAULT_ALLOWED_DEVICES = '/dev/rbd*,/dev/nbd*,/dev/mapper/*';

/** The setting as flag, environment variable and config file key, for messages. */
export const ALLOWED_DEVICES_SETTING = 'allowedDevices (--allowed-devices, VMPLUG_ALLOWED_DEVICES)';

export const DEFAULT_HOST_CHECK_TIMEOUT_MS = 5_000;

/** Checks a block-mode path (see above); resolves to the path QEMU must be given. */
export type HostDeviceCheck = (
  path: string,
  opts: { signal: AbortSignal; field?: string },
) => Promise<string>;

export interface HostDevicePolicy {
  /** Globs on the resolved path (device-glob.ts); `/dev/mapper/<name>` also matches its dm-N. */
  allowedDevices: readonly DeviceGlob[];
  /** Bound of the whole check (sysfs, /proc and the O_EXCL open); default 5 s. */
  timeoutMs?: number;
  /** Where /proc and /sys are read (tests); default the real ones. */
  paths?: HostFactsPaths;
}

export function hostDevicePolicy(
  allowedDevices: string | readonly DeviceGlob[] = DEFAULT_ALLOWED_DEVICES,
  more: Omit<HostDevicePolicy, 'allowedDevices'> = {},
): HostDevicePolicy {
  return {
    allowedDevices: typeof allowedDevices === 'string' ? parseDeviceGlobList(allowedDevices) : allowedDevices,
    ...more,
  };
}

/** The one check every engine calls before journalling a block-mode attach. */
export function hostDeviceCheck(policy: HostDevicePolicy = hostDevicePolicy()): HostDeviceCheck {
  return async (path, opts) => {
    const field = opts.field ?? 'source.path';
    const signal = AbortSignal.any([
      opts.signal,
      AbortSignal.timeout(policy.timeoutMs ?? DEFAULT_HOST_CHECK_TIMEOUT_MS),
    ]);
    try {
      return await admit(path, field, policy, signal);
    } catch (err) {
      if (err instanceof ValidationError || err instanceof DeviceInUseError) throw err;
      if (err instanceof DeviceNotAllowedError || err instanceof BackendError) throw err;
      opts.signal.throwIfAborted();
      // Fail closed: a device vmplug could not examine is not handed out. Retryable: /proc or
      // /sys answering slowly, or a device whose open hangs, may pass on a later try.
      const code = (err as { code?: unknown }).code;
      throw new BackendError(
        'host device check',
        `${path} could not be examined (${typeof code === 'string' ? code : (err as Error).message})`,
        { retryable: true, cause: err },
      );
    }
  };
}

async function admit(path: string, field: string, policy: HostDevicePolicy, signal: AbortSignal) {
  const paths = policy.paths ?? DEFAULT_HOST_FACTS_PATHS;
  // Started at once, each a chain of round trips through libuv's pool: the host's tables (which
  // name no device, so reading them early touches nothing) and the link's target.
  const tables = readHostTables(paths, signal);
  const resolving = realpath(path);
  for (const p of [tables, resolving]) p.catch(() => undefined);
  let st: Awaited<ReturnType<typeof stat>>;
  try {
    st = await stat(path, { bigint: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ValidationError(
      field,
      code === 'ENOENT' ? `${path} does not exist on this node` : `${path} cannot be examined (${code})`,
    );
  }
  if (!st.isBlockDevice()) throw new ValidationError(field, `${path} is not a block device`);
  const resolved = await resolving;
  const { device, sysDir, dmName } = await kernelDevice(majMinOf(st.rdev), paths, signal);
  // Names the kernel gives the device, never the caller's link: the resolved path, and for a
  // device-mapper device its /dev/mapper name (udev makes /dev/mapper/<name> a link to dm-N).
  const names = dmName === undefined ? [resolved] : [resolved, `/dev/mapper/${dmName}`];
  if (firstMatch(policy.allowedDevices, names) === undefined) {
    const shown = resolved === path ? path : `${path} (${resolved})`;
    const list = policy.allowedDevices.map((g) => g.pattern).join(', ') || 'nothing';
    throw new DeviceNotAllowedError(
      field,
      `${shown} is not in this node's allow-list of devices, ${ALLOWED_DEVICES_SETTING}: ${list}`,
    );
  }
  const verdict = hostUseVerdict(await gatherHostUseFacts(resolved, device, sysDir, paths, signal, tables));
  if (verdict.kind === 'in-use') {
    throw new DeviceInUseError(
      field,
      `${path} is in use on this host and cannot be given to a guest: ${describeHostUses(verdict.uses)}`,
    );
  }
  if (verdict.kind === 'unknown') {
    throw new BackendError('host device check', `${path}: ${verdict.reason}; not handed to a guest`, {
      retryable: true,
    });
  }
  return resolved;
}

/**
 * The spec an engine goes on with: block mode checked and its path replaced by the resolved one;
 * rbd unchanged.
 */
export async function admitSpec<S extends AttachSpec>(
  spec: S,
  check: HostDeviceCheck,
  signal: AbortSignal,
): Promise<S> {
  if (spec.mode !== 'block') return spec;
  const path = await check(spec.source.path, { signal });
  return path === spec.source.path ? spec : { ...spec, source: { ...spec.source, path } };
}
