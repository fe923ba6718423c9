/**
 * The bare QMP sequence of one disk hot-plug and hot-unplug through a sandbox's private monitor,
 * with no journal, no retries and no engine around it: what the foundation's integration test,
 * the demo and the benchmarks drive (and, later, the baseline vmplug's engine is measured
 * against). Every argument comes from the storage/ builders and goes through the qmp/ typed
 * wrappers, so QEMU gets exactly what the product sends.
 *
 * Order (DESIGN.md 3-4): attach = [object-add secret] -> blockdev-add -> device_add, then the
 * guest reports the disk; detach = device_del with DEVICE_DELETED armed first (matched on
 * data.device: a virtio device first reports its backend) -> blockdev-del -> [object-del].
 */
import { performance } from 'node:perf_hooks';
import {
  blockdevAdd,
  blockdevDel,
  deviceAdd,
  deviceDelAndWait,
  objectAdd,
  objectDel,
  type QmpExecutor,
  qomList,
  queryNamedBlockNodes,
} from '../../qmp/index.js';
import type { BlockdevAddOptions } from '../../qmp/types.js';
import type { VolumeNames } from '../../storage/naming.js';
import {
  blockdevHostDevice,
  blockdevRbd,
  deviceArgs,
  type Lane,
  secretObject,
} from '../../storage/qemu-args.js';
import type { RbdSource, Secret } from '../../storage/volume-spec.js';
import type { GuestAgent, GuestDisk } from './guest.js';

export class HotplugError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'HotplugError';
    this.code = code;
  }
}

/** What QEMU opens: a plain file, a host block device (`block` mode), or an RBD image (`rbd` mode). */
export type DiskBackend =
  | { kind: 'file'; path: string }
  | { kind: 'hostDevice'; path: string }
  | {
      kind: 'rbd';
      source: Omit<RbdSource, 'key'>;
      key: Secret;
      /** A file holding rbdConf(): bounds librados' connect so QEMU's main loop cannot hang for minutes. */
      confPath: string;
    };

export interface HotplugDisk {
  names: VolumeNames;
  backend: DiskBackend;
  lane: Lane;
  readOnly?: boolean;
}

export interface HotplugOptions {
  /** Bounds each QMP command and each wait on the guest; default 30 s (TCG guests under load). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface AttachTimings {
  /** object-add of the secret (rbd only). */
  secretMs?: number;
  blockdevAddMs: number;
  /** device_add sent -> its reply. */
  deviceAddMs: number;
  /** device_add sent -> the guest reported the disk. */
  guestSawMs: number;
  /** First command sent -> the guest reported the disk: the whole attach as a caller sees it. */
  totalMs: number;
}

export interface DetachTimings {
  /** device_del sent -> DEVICE_DELETED for the device itself. */
  deviceDeletedMs: number;
  /** device_del sent -> the guest reported the disk gone. */
  guestLostMs: number;
  /** blockdev-del (and object-del for rbd). */
  releaseMs: number;
}

const defaultTimeoutMs = 30_000;

function callOpts(o: HotplugOptions): { timeoutMs: number; signal?: AbortSignal } {
  const timeoutMs = o.timeoutMs ?? defaultTimeoutMs;
  return o.signal ? { timeoutMs, signal: o.signal } : { timeoutMs };
}

export function blockdevOf(d: HotplugDisk): BlockdevAddOptions {
  const readOnly = d.readOnly ?? false;
  switch (d.backend.kind) {
    case 'file':
      // A test image, not a product path: the host page cache is fine here.
      return { driver: 'file', 'node-name': d.names.node, filename: d.backend.path, 'read-only': readOnly };
    case 'hostDevice':
      return blockdevHostDevice(d.names, { type: 'hostDevice', path: d.backend.path }, readOnly);
    case 'rbd':
      return blockdevRbd(d.names, d.backend.source, { readOnly, confPath: d.backend.confPath });
  }
}

/**
 * Hot-adds the disk and resolves once the guest reports it (matched by serial). On any failure
 * it removes whatever it had added before rethrowing, so a failed attach leaves nothing behind.
 */
export async function hotAdd(
  qmp: QmpExecutor,
  guest: GuestAgent,
  d: HotplugDisk,
  opts: HotplugOptions = {},
): Promise<{ disk: GuestDisk; timings: AttachTimings }> {
  const co = callOpts(opts);
  const started = performance.now();
  try {
    let secretMs: number | undefined;
    if (d.backend.kind === 'rbd') {
      const t = performance.now();
      await objectAdd(qmp, secretObject(d.names, d.backend.key), co);
      secretMs = performance.now() - t;
    }
    const t = performance.now();
    await blockdevAdd(qmp, blockdevOf(d), co);
    const blockdevAddMs = performance.now() - t;
    const sent = performance.now();
    await deviceAdd(qmp, deviceArgs(d.names, d.lane), co);
    const deviceAddMs = performance.now() - sent;
    const disk = await guest.waitForDisk((g) => g.serial === d.names.serial, { timeoutMs: co.timeoutMs });
    // seenAt is when the line arrived; the disk may also have been reported before we waited.
    const seen = Math.max(disk.seenAt, sent);
    const timings: AttachTimings = {
      blockdevAddMs,
      deviceAddMs,
      guestSawMs: seen - sent,
      totalMs: seen - started,
    };
    if (secretMs !== undefined) timings.secretMs = secretMs;
    return { disk, timings };
  } catch (e) {
    await removeLeftovers(qmp, d.names, opts).catch(() => {});
    throw e;
  }
}

/**
 * Hot-removes the disk the guest knows as `guestName`: resolves once QEMU deleted the device,
 * the guest lost the disk, and the block node (and secret) are gone.
 */
export async function hotRemove(
  qmp: QmpExecutor,
  guest: GuestAgent,
  d: HotplugDisk,
  guestName: string,
  opts: HotplugOptions = {},
): Promise<DetachTimings> {
  const co = callOpts(opts);
  // Armed before device_del: the guest may drop the disk before DEVICE_DELETED arrives.
  let lostAt: number | undefined;
  const off = guest.onEvent((e) => {
    if (e.type === 'disk-del' && e.name === guestName) lostAt ??= e.at;
  });
  try {
    const sent = performance.now();
    await deviceDelAndWait(qmp, d.names.device, co);
    const deviceDeletedMs = performance.now() - sent;
    const gone = await guest.waitForDiskGone(guestName, { timeoutMs: co.timeoutMs });
    const guestLostMs = (lostAt ?? gone.at) - sent;
    const t = performance.now();
    await blockdevDel(qmp, d.names.node, co);
    if (d.backend.kind === 'rbd') await objectDel(qmp, d.names.secret, co);
    return { deviceDeletedMs, guestLostMs, releaseMs: performance.now() - t };
  } finally {
    off();
  }
}

export interface LeftoverReport {
  device: boolean;
  node: boolean;
  secret: boolean;
}

/**
 * Best-effort teardown for cleanup paths (afterEach, finally, Ctrl-C): removes the device, block
 * node and secret of `names` if QEMU still has them, in the order QEMU requires. Reports what it
 * found; throws only if something it found could not be removed.
 */
export async function removeLeftovers(
  qmp: QmpExecutor,
  names: Pick<VolumeNames, 'device' | 'node' | 'secret'>,
  opts: HotplugOptions = {},
): Promise<LeftoverReport> {
  const co = callOpts(opts);
  const found: LeftoverReport = { device: false, node: false, secret: false };
  const errors: unknown[] = [];
  const peripherals = await qomList(qmp, '/machine/peripheral', co);
  if (peripherals.some((p) => p.name === names.device)) {
    found.device = true;
    await deviceDelAndWait(qmp, names.device, co).catch((e: unknown) => errors.push(e));
  }
  if ((await queryNamedBlockNodes(qmp, co)).some((n) => n['node-name'] === names.node)) {
    found.node = true;
    await blockdevDel(qmp, names.node, co).catch((e: unknown) => errors.push(e));
  }
  if ((await qomList(qmp, '/objects', co)).some((o) => o.name === names.secret)) {
    found.secret = true;
    await objectDel(qmp, names.secret, co).catch((e: unknown) => errors.push(e));
  }
  if (errors.length > 0) {
    throw new HotplugError('HOTPLUG_LEFTOVER', `could not remove ${names.device}/${names.node}`, {
      cause: errors[0],
    });
  }
  return found;
}

const patternAlphabet = /^[A-Za-z0-9._:-]{1,512}$/;

/**
 * Writes an ASCII `pattern` at byte `offset` (a multiple of 512) of the guest's /dev/<name> and
 * syncs it to the device (the guest's fsync reaches QEMU as a flush, so the bytes are on the
 * backend when this returns).
 */
export async function writeInGuest(
  guest: GuestAgent,
  name: string,
  offset: number,
  pattern: string,
  opts: { timeoutMs?: number } = {},
): Promise<void> {
  if (!/^[a-z]+$/.test(name)) throw new HotplugError('HOTPLUG_BAD_NAME', `bad guest disk name ${name}`);
  if (!patternAlphabet.test(pattern))
    throw new HotplugError('HOTPLUG_BAD_PATTERN', 'pattern must be 1-512 chars of [A-Za-z0-9._:-]');
  if (!Number.isSafeInteger(offset) || offset < 0 || offset % 512 !== 0)
    throw new HotplugError('HOTPLUG_BAD_OFFSET', `offset ${offset} is not a multiple of 512`);
  const r = await guest.run(
    `printf '%s' '${pattern}' | dd of=/dev/${name} bs=512 seek=${offset / 512} conv=notrunc,fsync 2>&1`,
    { timeoutMs: opts.timeoutMs ?? defaultTimeoutMs },
  );
  if (r.exitCode !== 0) {
    throw new HotplugError('HOTPLUG_GUEST_WRITE', `guest write to /dev/${name} failed: ${r.stdout.trim()}`);
  }
}

/** Reads `length` bytes at `offset` of the guest's /dev/<name>, bypassing the guest page cache. */
export async function readInGuest(
  guest: GuestAgent,
  name: string,
  offset: number,
  length: number,
  opts: { timeoutMs?: number } = {},
): Promise<Buffer> {
  if (!/^[a-z]+$/.test(name)) throw new HotplugError('HOTPLUG_BAD_NAME', `bad guest disk name ${name}`);
  if (!Number.isSafeInteger(offset) || offset < 0 || offset % 512 !== 0)
    throw new HotplugError('HOTPLUG_BAD_OFFSET', `offset ${offset} is not a multiple of 512`);
  const blocks = Math.ceil(length / 512);
  const r = await guest.run(
    `dd if=/dev/${name} bs=512 skip=${offset / 512} count=${blocks} iflag=direct 2>/dev/null`,
    { timeoutMs: opts.timeoutMs ?? defaultTimeoutMs },
  );
  if (r.exitCode !== 0) throw new HotplugError('HOTPLUG_GUEST_READ', `guest read of /dev/${name} failed`);
  return r.stdoutBytes.subarray(0, length);
}
