import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ValidationError } from '../../../../core/errors.js';
import { parsePodUid, parseVolumeId } from '../../../../core/ids.js';
import { type KeyCustody, MemoryKeyCustody } from '../../../../storage/key-custody.js';
import { mountInfoJson, recordDirOf, recordPathOf } from '../../../../storage/pod/dav.js';
import { PodVolumeEngine } from '../../../../storage/pod/engine.js';
import {
  canPodTransition,
  newPodRecord,
  PodJournal,
  type PodRecord,
  podTransition,
} from '../../../../storage/pod/journal.js';
import { parsePublishRequest } from '../../../../storage/pod/spec.js';
import type {
  ExportInfo,
  ExportKey,
  ExportRequest,
  StorageDaemonBackend,
  WantedExport,
} from '../../../../storage/storage-daemon/types.js';
import { Secret } from '../../../../storage/volume-spec.js';
import { cephxKey } from '../../daemon/helpers.js';

const UID = parsePodUid('5f0c3b1e-9d2a-4c7b-8e6f-1a2b3c4d5e6f');
const VOL = parseVolumeId('vol-1');
const TARGET = `/var/lib/kubelet/pods/${UID}/volumes/kubernetes.io~csi/pvc-1/mount`;
const quiet = { info: () => {}, warn: () => {}, error: () => {} };

class FakeStorageDaemon implements StorageDaemonBackend {
  readonly exports = new Map<string, ExportInfo>();
  readonly calls: string[] = [];
  failNext: Error | undefined;
  async ensureExport(req: ExportRequest): Promise<ExportInfo> {
    this.calls.push(`ensure ${req.key.name} ${req.formatIfBlank}`);
    if (this.failNext) {
      const e = this.failNext;
      this.failNext = undefined;
      throw e;
    }
    const info: ExportInfo = {
      key: req.key,
      socketPath: `/store/block/sockets/${req.key.name}`,
      devicePath: `/store/block/devices/${req.key.name}`,
      minor: 1,
      pid: 42,
      startTime: 1,
      formatted: false,
      sizeBytes: 1 << 30,
    };
    this.exports.set(req.key.name, info);
    return info;
  }
  async stopExport(key: ExportKey): Promise<void> {
    this.calls.push(`stop ${key.name}`);
    this.exports.delete(key.name);
  }
  async resizeExport(key: ExportKey, sizeBytes: number): Promise<ExportInfo> {
    this.calls.push(`resize ${key.name} ${sizeBytes}`);
    const info = this.exports.get(key.name);
    if (info === undefined) throw new Error('not serving');
    const grown = { ...info, sizeBytes };
    this.exports.set(key.name, grown);
    return grown;
  }
  async list(): Promise<ExportInfo[]> {
    return [...this.exports.values()];
  }
  async supervise(wanted: readonly WantedExport[]) {
    const restarted: ExportKey[] = [];
    for (const w of wanted) {
      if (this.exports.has(w.key.name)) continue;
      const req = 'request' in w ? await w.request() : w;
      if (req === undefined) continue;
      await this.ensureExport(req);
      restarted.push(w.key);
    }
    return { restarted, stopped: [], failed: [] };
  }
  async close(): Promise<void> {}
}

describe('pod journal transitions', () => {
  it('allows exactly the publish, unpublish and rollback paths', () => {
    expect(canPodTransition('Publishing', 'BackendReady')).toBe(true);
    expect(canPodTransition('BackendReady', 'Published')).toBe(true);
    expect(canPodTransition('Published', 'Unpublishing')).toBe(true);
    expect(canPodTransition('Unpublishing', 'RecordRemoved')).toBe(true);
    expect(canPodTransition('RecordRemoved', 'BackendStopped')).toBe(true);
    expect(canPodTransition('BackendStopped', 'Failed')).toBe(true);
    expect(canPodTransition('Failed', 'Publishing')).toBe(true);
    expect(canPodTransition('Publishing', 'Published')).toBe(false);
    expect(canPodTransition('Published', 'RecordRemoved')).toBe(false);
    expect(canPodTransition('Unpublishing', 'Published')).toBe(false);
  });

  it('saves and loads a record through every state', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vmp-podj-'));
    try {
      const j = new PodJournal({ stateDir: dir, logger: quiet });
      const spec = parsePublishRequest(
        { mode: 'block', source: { type: 'hostDevice', path: '/dev/loop3' }, targetPath: TARGET },
        UID,
        '/var/lib/kubelet',
      );
      let r: PodRecord = newPodRecord({
        podUid: UID,
        volumeId: VOL,
        spec: {
          volume: { ...spec.volume, bus: 'auto' } as PodRecord['spec']['volume'],
          targetPath: TARGET,
          fsType: 'ext4',
          mountOptions: [],
        },
        fingerprint: `v1:${'0'.repeat(64)}`,
        recordPath: '/x/mountInfo.json',
      });
      for (const s of [
        'BackendReady',
        'Published',
        'Unpublishing',
        'RecordRemoved',
        'BackendStopped',
      ] as const) {
        r = podTransition(r, s, {
          set: s === 'BackendReady' ? { device: '/dev/loop3', recordHash: 'sha256:x' } : {},
        });
        await j.save(r);
        expect(await j.load(UID, VOL)).toEqual(r);
      }
      await j.remove(UID, VOL);
      expect(await j.list()).toEqual([]);
      expect(await readdir(join(dir, 'pods'))).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('pod volume engine over fakes', () => {
  let dir: string;
  let root: string;
  let journal: PodJournal;
  let sd: FakeStorageDaemon;
  let states: string[];
  let engine: PodVolumeEngine;
  const blockBody = { mode: 'block', source: { type: 'hostDevice', path: '/dev/loop3' }, targetPath: TARGET };
  const rbdBody = {
    mode: 'rbd',
    source: {
      type: 'rbd',
      pool: 'rbd',
      image: 'vol1',
      monitors: ['127.0.0.1:6789'],
      user: 'vmplug',
      key: cephxKey(),
    },
    targetPath: TARGET,
  };
  const spec = (body: Record<string, unknown>) => parsePublishRequest(body, UID, '/var/lib/kubelet');
  const make = (keys?: KeyCustody) =>
    new PodVolumeEngine({
      journal,
      fingerprintKey: Buffer.alloc(32, 3),
      directVolumeRoot: root,
      storageDaemon: sd,
      logger: quiet,
      ...(keys !== undefined ? { keys } : {}),
      checkBlockDevice: async (path, field) => {
        if (path !== '/dev/loop3') throw new ValidationError(field, `${path} does not exist on this node`);
      },
    });

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmp-pode-'));
    root = join(dir, 'direct-volumes');
    states = [];
    journal = new PodJournal({
      stateDir: dir,
      logger: quiet,
      onWrite: (r, at) => at === 'after' && states.push(r.state),
    });
    sd = new FakeStorageDaemon();
    engine = make();
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('publishes block mode: journal before record, exact record, 201 then 200, 409 for another spec', async () => {
    const first = await engine.publish(UID, VOL, spec(blockBody));
    expect(first.created).toBe(true);
    expect(first.volume).toMatchObject({ state: 'Published', device: '/dev/loop3', mode: 'block' });
    expect(states).toEqual(['Publishing', 'BackendReady', 'Published']);
    const text = await readFile(recordPathOf(root, TARGET), 'utf8');
    expect(text).toBe(mountInfoJson({ device: '/dev/loop3', fstype: 'ext4', options: ['rw'] }));
    expect((await engine.publish(UID, VOL, spec(blockBody))).created).toBe(false);
    await expect(engine.publish(UID, VOL, spec({ ...blockBody, fsType: 'xfs' }))).rejects.toMatchObject({
      status: 409,
      code: 'SPEC_CONFLICT',
    });
    // Consumed once Kata drops its sandbox-id file.
    await writeFile(join(recordDirOf(root, TARGET), 'f'.repeat(64)), '');
    expect(await engine.get(UID, VOL)).toMatchObject({ state: 'Consumed', sandboxId: 'f'.repeat(64) });
    await engine.unpublish(UID, VOL);
    expect(states.slice(3)).toEqual(['Unpublishing', 'RecordRemoved', 'BackendStopped']);
    expect(await readdir(root)).toEqual([]);
    await expect(engine.get(UID, VOL)).rejects.toMatchObject({ status: 404 });
    await engine.unpublish(UID, VOL); // idempotent
  });

  it('refuses a record it did not write with 409, before journalling, and never touches it', async () => {
    const path = recordPathOf(root, TARGET);
    await mkdir(join(path, '..'), { recursive: true });
    await writeFile(path, '{"volume-type":"directvol","device":"/dev/other","fstype":"ext4"}');
    await expect(engine.publish(UID, VOL, spec(blockBody))).rejects.toMatchObject({
      status: 409,
      code: 'RECORD_FOREIGN',
      field: 'targetPath',
    });
    expect(await journal.list()).toEqual([]);
    expect(await readFile(path, 'utf8')).toContain('/dev/other');
  });

  it('refuses a missing block device with 422 and leaves nothing', async () => {
    await expect(
      engine.publish(UID, VOL, spec({ ...blockBody, source: { type: 'hostDevice', path: '/dev/loop9' } })),
    ).rejects.toMatchObject({ status: 422, field: 'source.path' });
    expect(await journal.list()).toEqual([]);
  });

  it('publishes rbd mode through the storage daemon (formatIfBlank = fsType) and stops it on unpublish', async () => {
    const r = await engine.publish(UID, VOL, spec(rbdBody));
    expect(r.volume.device).toMatch(/^\/store\/block\/devices\/vmpx-[0-9a-f]{24}$/);
    expect(sd.calls[0]).toMatch(/^ensure vmpx-[0-9a-f]{24} ext4$/);
    const text = await readFile(recordPathOf(root, TARGET), 'utf8');
    expect(text).not.toContain(cephxKey());
    expect(JSON.stringify(await journal.list())).not.toContain(cephxKey());
    await engine.unpublish(UID, VOL);
    expect(sd.exports.size).toBe(0);
  });

  it('rolls a failed rbd publish back to Failed with the problem; a retry publishes', async () => {
    sd.failNext = Object.assign(new Error('ceph away'), {});
    await expect(engine.publish(UID, VOL, spec(rbdBody))).rejects.toThrow('ceph away');
    const failed = await engine.get(UID, VOL);
    expect(failed).toMatchObject({ state: 'Failed', problem: { code: 'BACKEND_FAILED' } });
    expect(await readdir(root).catch(() => [])).toEqual([]);
    expect((await engine.publish(UID, VOL, spec(rbdBody))).volume.state).toBe('Published');
  });

  it('reconcile: finishes block publishes and unpublishes cut short, rewrites a missing record, stops stray daemons', async () => {
    await engine.publish(UID, VOL, spec(blockBody));
    const published = (await journal.load(UID, VOL)) as PodRecord;
    // A crash right after BackendReady: record not written yet.
    await rm(recordDirOf(root, TARGET), { recursive: true });
    await journal.save({ ...published, state: 'BackendReady' });
    sd.exports.set('vmpx-stray', {
      ...(await sd.ensureExport({ key: { name: 'vmpx-stray' } } as ExportRequest)),
    });
    const fresh = make();
    const { repairs } = await fresh.reconcile();
    expect(repairs.join('\n')).toMatch(/finished an interrupted publish/);
    expect(repairs.join('\n')).toMatch(/vmpx-stray: stopped/);
    expect((await fresh.get(UID, VOL)).state).toBe('Published');
    expect(await readFile(recordPathOf(root, TARGET), 'utf8')).toContain('/dev/loop3');
    // Record deleted behind vmplug's back: made whole.
    await rm(recordPathOf(root, TARGET));
    expect((await fresh.get(UID, VOL)).state).toBe('Failed');
    await fresh.reconcile();
    expect((await fresh.get(UID, VOL)).state).toBe('Published');
    // A crash inside unpublish.
    await journal.save(podTransition((await journal.load(UID, VOL)) as PodRecord, 'Unpublishing'));
    await fresh.reconcile();
    expect(await journal.list()).toEqual([]);
    expect(await readdir(root)).toEqual([]);
  });

  it('reconcile rolls back an rbd publish it has no key for, and a foreign record replacing ours is left alone', async () => {
    await engine.publish(UID, VOL, spec(rbdBody));
    const rec = (await journal.load(UID, VOL)) as PodRecord;
    await journal.save({ ...rec, state: 'Publishing', timeline: rec.timeline });
    const restarted = make(); // a new vmplugd: no key in memory
    await restarted.reconcile();
    expect(await restarted.get(UID, VOL)).toMatchObject({ state: 'Failed' });
    expect(sd.exports.size).toBe(0);

    await restarted.unpublish(UID, VOL);
    await engine.publish(UID, VOL, spec(blockBody));
    await writeFile(
      recordPathOf(root, TARGET),
      '{"volume-type":"directvol","device":"/dev/x","fstype":"xfs"}',
    );
    expect((await engine.get(UID, VOL)).problem?.code).toBe('RECORD_FOREIGN');
    await engine.reconcile();
    await engine.unpublish(UID, VOL);
    expect(await readFile(recordPathOf(root, TARGET), 'utf8')).toContain('/dev/x');
  });

  it('keeps the cephx key after the intent is journalled; a restarted engine restarts a dead daemon with it; unpublish and the sweep leave none', async () => {
    const kept = new MemoryKeyCustody();
    const order: string[] = [];
    const keys: KeyCustody = {
      where: 'test',
      put: async (name, key) => {
        order.push(`put after ${states.at(-1)}`);
        await kept.put(name, key);
      },
      get: (name) => kept.get(name),
      remove: (name) => kept.remove(name),
      names: () => kept.names(),
    };
    const first = make(keys);
    await first.publish(UID, VOL, spec(rbdBody));
    // Journalled first (so the sweep never takes it for a stray), before the daemon starts.
    expect(order).toEqual(['put after Publishing']);
    const [name] = await kept.names();
    expect((await kept.get(name ?? ''))?.reveal()).toBe(cephxKey());
    // vmplugd restarts (a new engine, nothing in its memory) and the daemon dies meanwhile.
    sd.exports.clear();
    sd.calls.length = 0;
    const second = make(keys);
    const { repairs } = await second.reconcile();
    expect(repairs.join('\n')).toMatch(/restarted a storage daemon that had died/);
    expect(sd.calls).toEqual([`ensure ${name} ext4`]);
    // A running daemon needs no key: the custody is not read on the next pass.
    const get = keys.get;
    keys.get = async () => {
      throw new Error('read without need');
    };
    await second.reconcile();
    keys.get = get;
    await second.unpublish(UID, VOL);
    expect(await kept.names()).toEqual([]);
    // A key no intent explains (its intent ended while vmplugd was down, say) is swept.
    await kept.put('vmpx-000000000000000000000000', new Secret(cephxKey()));
    expect((await second.reconcile()).repairs.join('\n')).toMatch(/removed a kept cephx key/);
    expect(await kept.names()).toEqual([]);
  });

  it('resize: an rbd volume grows through its storage daemon; block mode and an unknown volume are refused', async () => {
    await expect(engine.resize(UID, VOL, 2 * 1024 ** 3)).rejects.toMatchObject({ status: 404 });
    await engine.publish(UID, VOL, spec(rbdBody));
    const grown = await engine.resize(UID, VOL, 2 * 1024 ** 3);
    expect(grown).toMatchObject({ state: 'Published', sizeBytes: 2 * 1024 ** 3 });
    expect(sd.calls.at(-1)).toMatch(/^resize vmpx-[0-9a-f]{24} 2147483648$/);
    await engine.unpublish(UID, VOL);
    await engine.publish(UID, VOL, spec(blockBody));
    await expect(engine.resize(UID, VOL, 2 * 1024 ** 3)).rejects.toMatchObject({
      status: 409,
      message: expect.stringMatching(/block-mode/),
    });
  });

  it('a failed rbd publish keeps no key', async () => {
    const kept = new MemoryKeyCustody();
    const e = make(kept);
    sd.failNext = new Error('ceph away');
    await expect(e.publish(UID, VOL, spec(rbdBody))).rejects.toThrow('ceph away');
    expect(await kept.names()).toEqual([]);
  });

  it('refuses a second volume on the same target path', async () => {
    await engine.publish(UID, VOL, spec(blockBody));
    await expect(engine.publish(UID, parseVolumeId('vol-2'), spec(blockBody))).rejects.toMatchObject({
      status: 409,
      field: 'targetPath',
    });
  });
});
