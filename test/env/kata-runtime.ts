/**
 * Kata's runtime side of a direct-assigned volume, for tests: exactly what Kata's Go runtime does
 * with a record at CreateContainer (src/runtime/pkg/direct-volume and the block-device path of
 * virtcontainers, FACTS "How a volume reaches a container in a Kata pod"), no more:
 *   1. find the record of the bind mount's source: <root>/<base64url-with-padding(source)>/mountInfo.json;
 *   2. plug its `device`: a host block device as `blockdev-add` (raw over host_device) +
 *      `device_add scsi-hd` on the sandbox's own virtio-scsi controller (Kata's default
 *      block driver); a block node of major 241 under the vhost-user store's `block/devices/` as
 *      `chardev-add` (socket client to `<store>/block/sockets/<name>`) + `device_add
 *      vhost-user-blk-pci` (the guest's RAM must be shared);
 *   3. drop an empty file named after the sandbox id beside mountInfo.json.
 * The agent's mount in the guest is the test's to do (it is the guest's side).
 *
 * Kata speaks over its own monitor, which the test's shim stand-in holds for the sandbox's life;
 * this helper takes the test-only inspect monitor instead. The encoding is written out here
 * independently of storage/pod/dav.ts, so a wrong encoder there fails the test.
 */
import { createHash } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { deviceDelAndWait, type QmpExecutor } from '../../qmp/index.js';

export interface KataMountInfo {
  'volume-type': string;
  device: string;
  fstype: string;
  metadata?: Record<string, string>;
  options?: string[];
}

export interface KataPlugOptions {
  qmp: QmpExecutor;
  directVolumeRoot: string;
  /** The bind mount's source as containerd passes it: the CSI target path. */
  mountSource: string;
  sandboxId: string;
  /** Kata's `vhost_user_store_path`; required for major-241 devices. */
  vhostUserStore?: string;
  /** The virtio-scsi controller Kata plugs block devices on (Kata's own `scsi0`). */
  scsiController?: string;
  /** Where a vhost-user-blk-pci goes (a root port or Kata's bridge). */
  pciBus?: string;
  signal?: AbortSignal;
}

export interface KataPlug {
  kind: 'scsi' | 'vhost-user-blk';
  record: KataMountInfo;
  recordDir: string;
  deviceId: string;
  nodeName?: string;
  chardevId?: string;
  readOnly: boolean;
}

/** Go's base64.URLEncoding of the mount source (padded). */
export function kataVolumeDirName(source: string): string {
  return Buffer.from(source).toString('base64').replace(/\+/g, '-').replace(/\//g, '_');
}

const VHOST_USER_BLK_MAJOR = 241;

export async function plugDirectVolume(opts: KataPlugOptions): Promise<KataPlug> {
  const recordDir = join(opts.directVolumeRoot, kataVolumeDirName(opts.mountSource));
  const record = JSON.parse(await readFile(join(recordDir, 'mountInfo.json'), 'utf8')) as KataMountInfo;
  if (record['volume-type'] !== 'directvol')
    throw new Error(`not a directvol record: ${record['volume-type']}`);
  const st = await stat(record.device);
  if (!st.isBlockDevice()) throw new Error(`${record.device} is not a block device`);
  const readOnly = (record.options ?? []).includes('ro');
  const tag = createHash('sha256').update(opts.mountSource).digest('hex').slice(0, 12);
  const callOpts = opts.signal ? { signal: opts.signal } : {};
  const major = Math.floor(st.rdev / 256) & 0xfff;
  let plug: KataPlug;
  if (
    major === VHOST_USER_BLK_MAJOR &&
    opts.vhostUserStore !== undefined &&
    dirname(record.device) === join(opts.vhostUserStore, 'block', 'devices')
  ) {
    const chardevId = `char-kata-${tag}`;
    const deviceId = `vhost-kata-${tag}`;
    await opts.qmp.execute(
      'chardev-add',
      {
        id: chardevId,
        backend: {
          type: 'socket',
          data: {
            addr: {
              type: 'unix',
              data: { path: join(opts.vhostUserStore, 'block', 'sockets', basename(record.device)) },
            },
            server: false,
          },
        },
      },
      callOpts,
    );
    await opts.qmp.execute(
      'device_add',
      {
        driver: 'vhost-user-blk-pci',
        id: deviceId,
        chardev: chardevId,
        ...(opts.pciBus !== undefined ? { bus: opts.pciBus, addr: '0' } : {}),
      },
      callOpts,
    );
    plug = { kind: 'vhost-user-blk', record, recordDir, deviceId, chardevId, readOnly };
  } else {
    const nodeName = `drive-kata-${tag}`;
    const deviceId = `scsi-kata-${tag}`;
    await opts.qmp.execute(
      'blockdev-add',
      {
        driver: 'raw',
        'node-name': nodeName,
        'read-only': readOnly,
        file: { driver: 'host_device', filename: record.device },
      },
      callOpts,
    );
    await opts.qmp.execute(
      'device_add',
      {
        driver: 'scsi-hd',
        id: deviceId,
        drive: nodeName,
        bus: `${opts.scsiController ?? 'scsi0'}.0`,
        channel: 0,
        'scsi-id': 0,
        lun: 1 + (Number.parseInt(tag.slice(0, 4), 16) % 200),
      },
      callOpts,
    );
    plug = { kind: 'scsi', record, recordDir, deviceId, nodeName, readOnly };
  }
  // Kata's RecordSandboxId: an empty file named after the sandbox beside the record.
  await writeFile(join(recordDir, opts.sandboxId), '');
  return plug;
}

/** What Kata does when the container goes: unplug the device and its backend. */
export async function unplugDirectVolume(
  qmp: QmpExecutor,
  plug: KataPlug,
  timeoutMs = 10_000,
): Promise<void> {
  await deviceDelAndWait(qmp, plug.deviceId, { timeoutMs });
  if (plug.nodeName !== undefined) await qmp.execute('blockdev-del', { 'node-name': plug.nodeName });
  if (plug.chardevId !== undefined) await qmp.execute('chardev-remove', { id: plug.chardevId });
}
