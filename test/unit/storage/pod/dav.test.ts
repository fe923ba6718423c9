import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  consumerOf,
  decodeVolumePath,
  encodeVolumePath,
  MOUNT_INFO_FILE,
  mountInfoJson,
  parseMountInfo,
  recordDirOf,
  recordPathOf,
  removeRecord,
  writeRecord,
} from '../../../../storage/pod/dav.js';

// The encoding must be Go's base64.URLEncoding (padded), byte for byte: Kata finds the record by it.

const KUBELET_131 =
  '/var/lib/kubelet/pods/5f0c3b1e-9d2a-4c7b-8e6f-1a2b3c4d5e6f/volumes/kubernetes.io~csi/pvc-0b7e9a3c-2f4d-4e1a-9c8b-7d6e5f4a3b2c/mount';

describe('Kata direct-volume record', () => {
  let dir: string | undefined;
  afterEach(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it('encodes the golden vector from Kata docs', () => {
    expect(encodeVolumePath('/kubelet/kata-test-vol-001/volume001')).toBe(
      'L2t1YmVsZXQva2F0YS10ZXN0LXZvbC0wMDEvdm9sdW1lMDAx',
    );
  });

  it('encodes a 131-character kubelet path with the URL alphabet and "=" padding', () => {
    expect(KUBELET_131).toHaveLength(131);
    const enc = encodeVolumePath(KUBELET_131);
    // Reference from Python's base64.urlsafe_b64encode, which is Go's URLEncoding.
    expect(enc).toBe(
      'L3Zhci9saWIva3ViZWxldC9wb2RzLzVmMGMzYjFlLTlkMmEtNGM3Yi04ZTZmLTFhMmIzYzRkNWU2Zi92b2x1bWVzL2t1YmVybmV0ZXMuaW9-Y3NpL3B2Yy0wYjdlOWEzYy0yZjRkLTRlMWEtOWM4Yi03ZDZlNWY0YTNiMmMvbW91bnQ=',
    );
    expect(enc).not.toBe(Buffer.from(KUBELET_131).toString('base64url'));
    expect(decodeVolumePath(enc)).toBe(KUBELET_131);
    expect(decodeVolumePath(Buffer.from(KUBELET_131).toString('base64url'))).toBeUndefined();
  });

  it('writes the exact JSON Kata reads, with its field names, and it round-trips', () => {
    const text = mountInfoJson({ device: '/dev/loop3', fstype: 'ext4', options: ['rw', 'noatime'] });
    expect(text).toBe(
      '{"volume-type":"directvol","device":"/dev/loop3","fstype":"ext4","metadata":{},"options":["rw","noatime"]}',
    );
    const back = parseMountInfo(text);
    expect(back).toEqual({
      'volume-type': 'directvol',
      device: '/dev/loop3',
      fstype: 'ext4',
      metadata: {},
      options: ['rw', 'noatime'],
    });
    // Kata's MountInfo json tags: volume-type, device, fstype, metadata, options.
    expect(Object.keys(JSON.parse(text))).toEqual(['volume-type', 'device', 'fstype', 'metadata', 'options']);
  });

  it('writes 0600 in a 0700 directory at <root>/<enc>/mountInfo.json; consumer and removal as Kata', async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmp-dav-'));
    const path = recordPathOf(dir, KUBELET_131);
    expect(path).toBe(join(dir, encodeVolumePath(KUBELET_131), MOUNT_INFO_FILE));
    await writeRecord(path, mountInfoJson({ device: '/dev/loop3', fstype: 'ext4', options: ['rw'] }));
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    expect((await stat(recordDirOf(dir, KUBELET_131))).mode & 0o777).toBe(0o700);
    expect(parseMountInfo(await readFile(path, 'utf8'))?.device).toBe('/dev/loop3');
    expect(await consumerOf(recordDirOf(dir, KUBELET_131))).toBeUndefined();
    const sandbox = 'a'.repeat(64);
    await writeFile(join(recordDirOf(dir, KUBELET_131), sandbox), '');
    expect(await consumerOf(recordDirOf(dir, KUBELET_131))).toBe(sandbox);
    await removeRecord(recordDirOf(dir, KUBELET_131));
    expect(await readdir(dir)).toEqual([]);
  });

  it('keeps the directory when it holds something that is neither ours nor a Kata mark', async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmp-dav-'));
    const d = recordDirOf(dir, KUBELET_131);
    await writeRecord(join(d, MOUNT_INFO_FILE), '{}');
    await writeFile(join(d, 'notes'), 'somebody else');
    await removeRecord(d);
    expect(await readdir(d)).toEqual(['notes']);
  });
});
