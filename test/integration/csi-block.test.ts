// A direct `block` volume as ceph-csi stages it: the device node bind-mounted on a file named after
// the volume id under the staging path. A real loop device stands for /dev/rbdN; vmplug-csi must
// name the kernel's device (/dev/loopN) in the publish body, not the bind-mounted file.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encode } from '../../csi/messages.js';
import { stagedDeviceOf } from '../../csi/staged-device.js';
import { createLoopDevice, type LoopDevice } from '../env/loop.js';
import { startBed, targetPath } from '../unit/csi/harness.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

describe('vmplug-csi: a block volume staged the ceph-csi way', () => {
  let loop: LoopDevice;
  let staging: string;
  let mounted = false;
  beforeAll(async () => {
    loop = await createLoopDevice(16 * MiB);
    staging = await mkdtemp(join(tmpdir(), 'vmplug-csi-staging-'));
    await writeFile(join(staging, 'vol-blk'), '');
    await run('mount', ['--bind', loop.path, join(staging, 'vol-blk')], { timeout: 15_000 });
    mounted = true;
  });
  afterAll(async () => {
    if (mounted) await run('umount', [join(staging, 'vol-blk')], { timeout: 15_000 });
    if (staging) await rm(staging, { recursive: true, force: true });
    await loop?.detach();
  });

  it('names the kernel device behind the bind mount', async () => {
    expect(await stagedDeviceOf()(staging, 'vol-blk')).toBe(loop.path);
  });

  it('publishes it through vmplugd as a host device', async () => {
    const bed = await startBed({ stagedDeviceOf: stagedDeviceOf() });
    try {
      await bed.call(
        'NodePublishVolume',
        encode('csi.v1.NodePublishVolumeRequest', {
          volumeId: 'vol-blk',
          targetPath: targetPath('pv-blk'),
          stagingTargetPath: staging,
          volumeCapability: { mount: { fsType: 'ext4' }, accessMode: { mode: 1 } },
          volumeContext: { 'vmplug.io/direct-mode': 'block' },
        }),
      );
      expect(bed.vmplugd.calls[0]?.body).toMatchObject({
        mode: 'block',
        source: { type: 'hostDevice', path: loop.path },
        targetPath: targetPath('pv-blk'),
      });
    } finally {
      await bed.close();
    }
  });
});
