import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { PodVolume } from '../../../api/index.js';
import { NotFoundError } from '../../../core/errors.js';
import type { PodUid, VolumeId } from '../../../core/ids.js';
import type { PodService } from '../../../daemon/http/routes/pods.js';
import { toStatus } from '../../../daemon/report/kube/status.js';
import { observePodService, type PodVolumeOperation } from '../../../daemon/report/observed-pods.js';
import { PodEvents, podVolumeNews } from '../../../daemon/report/pod-events.js';
import { consumedNews, PodVolumeWatch, podVolumeStatus } from '../../../daemon/report/pod-volumes.js';
import type { PublishSpec } from '../../../storage/pod/spec.js';

const UID = '0f8fad5b-d9cb-469f-a165-70867728950e' as PodUid;
const VOL = 'vol-1' as VolumeId;
const KEY = 'AQBVnXxmAAAAABAA0bHq1fq3o2l0bn9Nz1X4mw==';

function volume(over: Partial<PodVolume> = {}): PodVolume {
  return {
    podUid: UID,
    volumeId: VOL,
    mode: 'rbd',
    state: 'Published',
    step: 'Published',
    targetPath: `/var/lib/kubelet/pods/${UID}/volumes/kubernetes.io~csi/pv1/mount`,
    recordPath: '/run/kata-containers/shared/direct-volumes/L3Zhcg==/mountInfo.json',
    device: '/run/vhost-user/block/devices/vmplug-1',
    fsType: 'ext4',
    readOnly: false,
    mountOptions: [],
    source: { type: 'rbd', pool: 'rbd', image: 'img', monitors: ['127.0.0.1:6789'], user: 'vmplug' },
    pod: { uid: UID, name: 'web-0', namespace: 'shop' },
    timeline: [
      { step: 'Publishing', at: '2026-01-01T00:00:00.000Z', ms: 0 },
      { step: 'Published', at: '2026-01-01T00:00:01.000Z', ms: 3 },
    ],
    ...over,
  };
}

const base = { podUid: UID, volumeId: VOL, ms: 12.4 };
const pod = { uid: UID, name: 'web-0', namespace: 'shop' };

describe('pod volume Events: which outcome is news', () => {
  it('a publish that created the volume is VolumePublished, saying how it is handed to Kata', () => {
    const news = podVolumeNews({ ...base, op: 'publish', ok: true, created: true, volume: volume(), pod });
    expect(news).toEqual({
      reason: 'VolumePublished',
      type: 'Normal',
      message:
        'volume vol-1 published for Kata (rbd, ext4, device /run/vhost-user/block/devices/vmplug-1) in 12 ms',
    });
  });

  it('idempotent repeats are not news: the same publish again, an unpublish of an unknown volume', () => {
    expect(
      podVolumeNews({ ...base, op: 'publish', ok: true, created: false, volume: volume() }),
    ).toBeUndefined();
    expect(podVolumeNews({ ...base, op: 'unpublish', ok: true, known: false })).toBeUndefined();
  });

  it('an unpublish is VolumeUnpublished; failures are Warnings with the code', () => {
    expect(podVolumeNews({ ...base, op: 'unpublish', ok: true, known: true })).toMatchObject({
      reason: 'VolumeUnpublished',
      type: 'Normal',
    });
    expect(
      podVolumeNews({ ...base, op: 'publish', ok: false, code: 'CEPH_STALLED', message: 'no OSD' }),
    ).toEqual({
      reason: 'VolumePublishFailed',
      type: 'Warning',
      message: 'publish of volume vol-1 failed after 12 ms: CEPH_STALLED: no OSD',
    });
    expect(podVolumeNews({ ...base, op: 'unpublish', ok: false, code: 'X', message: 'y' })?.reason).toBe(
      'VolumeUnpublishFailed',
    );
  });
});

describe('pod volume status rows', () => {
  it('carry state, consumer, target path and device, and nothing of the source', () => {
    // A key smuggled into the view (it never is: the source is the attachment's) stays out.
    const v = volume({
      state: 'Consumed',
      sandboxId: 'sb-1',
      source: { ...volume().source, key: KEY } as unknown as PodVolume['source'],
    });
    const row = podVolumeStatus(v);
    expect(row).toEqual({
      podUid: UID,
      volumeId: VOL,
      mode: 'rbd',
      state: 'Consumed',
      sandboxId: 'sb-1',
      targetPath: v.targetPath,
      device: v.device,
      fsType: 'ext4',
      readOnly: false,
      pod: { name: 'web-0', namespace: 'shop' },
      since: '2026-01-01T00:00:01.000Z',
    });
    expect(JSON.stringify(row)).not.toContain(KEY);
    expect(
      podVolumeStatus(volume({ state: 'Failed', problem: { code: 'RECORD_FOREIGN', detail: 'x' } })).error,
    ).toBe('RECORD_FOREIGN: x');
  });

  it('are sorted by pod and volume and counted in the summary', () => {
    const a = podVolumeStatus(volume({ volumeId: 'b' }));
    const b = podVolumeStatus(volume({ volumeId: 'a' }));
    const s = toStatus({ node: {}, sandboxes: [], podVolumes: [a, b], conditions: [] });
    expect(s.podVolumes.map((v) => v.volumeId)).toEqual(['a', 'b']);
    expect(s.summary.podVolumes).toBe(2);
    expect(toStatus({ node: {}, sandboxes: [], conditions: [] }).podVolumes).toEqual([]);
  });
});

describe('consumedNews', () => {
  const seen = (state: PodVolume['state'], sandboxId?: string) =>
    new Map([[`${UID}/${VOL}`, { state, ...(sandboxId ? { sandboxId } : {}) }]]);
  it('is a volume that became Consumed, or Consumed by another sandbox; never on the first read', () => {
    const consumed = volume({ state: 'Consumed', sandboxId: 'sb-1' });
    expect(consumedNews(undefined, [consumed])).toEqual([]);
    expect(consumedNews(seen('Published'), [consumed])).toEqual([consumed]);
    expect(consumedNews(new Map(), [consumed])).toEqual([consumed]);
    expect(consumedNews(seen('Consumed', 'sb-1'), [consumed])).toEqual([]);
    expect(consumedNews(seen('Consumed', 'sb-0'), [consumed])).toEqual([consumed]);
    expect(consumedNews(seen('Published'), [volume()])).toEqual([]);
  });
});

describe('PodVolumeWatch', () => {
  it('reads a baseline, then tells a consumer once, re-reading when a watched record directory changes', async () => {
    let list = [volume({ volumeId: 'old', state: 'Consumed', sandboxId: 'sb-0' })];
    const consumed: PodVolume[] = [];
    const watched = new Map<string, () => void>();
    let changes = 0;
    const w = new PodVolumeWatch({
      list: async () => list,
      onConsumed: (v) => consumed.push(v),
      log: { debug: () => {} },
      watchDir: (dir, onChange) => {
        watched.set(dir, onChange);
        return { close: () => watched.delete(dir) };
      },
    });
    w.subscribe(() => changes++);
    await w.refresh();
    expect(consumed).toEqual([]);
    expect(changes).toBe(1);
    // Published: its record directory is watched.
    list = [...list, volume()];
    await w.refresh();
    expect([...watched.keys()]).toEqual(['/run/kata-containers/shared/direct-volumes/L3Zhcg==']);
    // Kata drops its sandbox-id file: the watch fires, the list is read again.
    list = [list[0] as PodVolume, volume({ state: 'Consumed', sandboxId: 'sb-1' })];
    watched.values().next().value?.();
    await w.refresh();
    expect(consumed.map((v) => [v.volumeId, v.sandboxId])).toEqual([['vol-1', 'sb-1']]);
    expect(w.current()).toBe(list);
    await w.refresh();
    expect(consumed).toHaveLength(1);
    // Unpublished: no more watch.
    list = [];
    await w.refresh();
    expect(watched.size).toBe(0);
    w.close();
  });

  it("notices Kata's sandbox-id file through a real directory watch, without being asked", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vmp-podwatch-'));
    const recordDir = join(dir, 'L3Zhcg==');
    await mkdir(recordDir);
    await writeFile(join(recordDir, 'mountInfo.json'), '{}');
    const recordPath = join(recordDir, 'mountInfo.json');
    const consumed: PodVolume[] = [];
    // What the engine's list answers: Consumed once the sandbox-id file is there (as consumerOf).
    const w = new PodVolumeWatch({
      list: async () => {
        const mark = (await readdir(recordDir)).find((n) => n !== 'mountInfo.json');
        return [volume({ recordPath, ...(mark ? { state: 'Consumed', sandboxId: mark } : {}) })];
      },
      onConsumed: (v) => consumed.push(v),
      log: { debug: () => {} },
    });
    try {
      await w.refresh();
      await writeFile(join(recordDir, 'sb-7'), '');
      const deadline = Date.now() + 10_000;
      while (consumed.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      expect(consumed.map((v) => v.sandboxId)).toEqual(['sb-7']);
    } finally {
      w.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('keeps the last list when a read fails', async () => {
    let fail = false;
    const w = new PodVolumeWatch({
      list: async () => {
        if (fail) throw new Error('journal away');
        return [volume()];
      },
      onConsumed: () => {},
      log: { debug: () => {} },
      watchDir: () => ({ close: () => {} }),
    });
    await w.refresh();
    fail = true;
    await w.refresh();
    expect(w.current()).toHaveLength(1);
    w.close();
  });
});

describe('observed pod service and Pod Events', () => {
  const spec = { pod } as unknown as PublishSpec;
  const ctx = { signal: new AbortController().signal };

  /** A pod service whose every call succeeds, with `inner`'s calls instead where given. */
  function fakePodService(inner: Partial<PodService> = {}): PodService {
    return {
      publish: async () => ({ created: true, volume: volume() }),
      unpublish: async () => {},
      get: async () => volume(),
      list: async () => [],
      resize: async () => ({ ...volume(), sizeBytes: 0 }),
      ...inner,
    };
  }

  function harness(inner: Partial<PodService>) {
    const events: { target: unknown; reason: string; message: string; type: string | undefined }[] = [];
    const ops: PodVolumeOperation[] = [];
    const podEvents = new PodEvents(
      { recordPodEvent: (target, reason, message, type) => events.push({ target, reason, message, type }) },
      { get: () => undefined },
    );
    const service = observePodService(fakePodService(inner), (op) => {
      ops.push(op);
      podEvents.podVolume(op);
    });
    return { events, ops, service, podEvents };
  }

  it('a publish and an unpublish become Events on the Pod the publish named', async () => {
    const h = harness({});
    await h.service.publish(UID, VOL, spec, ctx);
    await h.service.unpublish(UID, VOL, ctx);
    expect(h.events.map((e) => [e.reason, e.type ?? 'Normal', e.target])).toEqual([
      ['VolumePublished', 'Normal', { podName: 'web-0', namespace: 'shop', podUid: UID }],
      ['VolumeUnpublished', 'Normal', { podName: 'web-0', namespace: 'shop', podUid: UID }],
    ]);
  });

  it('a failed publish is a Warning and still fails; an unknown unpublish and a pod known by uid alone get none', async () => {
    const h = harness({
      publish: async () => {
        throw Object.assign(new Error('the image is gone'), { code: 'BACKEND_FAILED' });
      },
      get: async () => {
        throw new NotFoundError('volume', 'x');
      },
    });
    await expect(h.service.publish(UID, VOL, spec, ctx)).rejects.toThrow('the image is gone');
    await h.service.unpublish(UID, VOL, ctx);
    expect(h.events.map((e) => [e.reason, e.type])).toEqual([['VolumePublishFailed', 'Warning']]);
    expect(h.ops.at(-1)).toMatchObject({ op: 'unpublish', ok: true, known: false });

    const uidOnly = harness({
      publish: async () => ({ created: true, volume: volume({ pod: { uid: UID } }) }),
    });
    await uidOnly.service.publish(UID, VOL, { pod: { uid: UID } } as unknown as PublishSpec, ctx);
    expect(uidOnly.events).toEqual([]);
  });

  it('an observer that throws never fails the publish', async () => {
    const service = observePodService(fakePodService(), () => {
      throw new Error('observer bug');
    });
    await expect(service.publish(UID, VOL, spec, ctx)).resolves.toMatchObject({ created: true });
  });

  it('VolumeConsumed names the sandbox', () => {
    const h = harness({});
    h.podEvents.podVolumeConsumed(volume({ state: 'Consumed', sandboxId: 'sb-9' }));
    expect(h.events).toEqual([
      {
        target: { podName: 'web-0', namespace: 'shop', podUid: UID },
        reason: 'VolumeConsumed',
        message:
          'volume vol-1 plugged by Kata into sandbox sb-9 (rbd, device /run/vhost-user/block/devices/vmplug-1)',
        type: undefined,
      },
    ]);
  });
});
