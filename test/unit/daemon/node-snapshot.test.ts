import { describe, expect, it, vi } from 'vitest';
import type { SandboxId, VolumeId } from '../../../core/ids.js';
import type { Readiness } from '../../../core/readiness.js';
import type { SandboxRecord } from '../../../core/sandbox.js';
import { NodeSnapshot } from '../../../daemon/report/node-snapshot.js';
import type { VolumeOperation } from '../../../daemon/report/observed-service.js';
import type { Attachment } from '../../../storage/attach-service.js';
import { memoryLogger } from './helpers.js';

function attachment(volumeId: string, state: Attachment['state'] = 'Attached'): Attachment {
  return {
    sandboxId: 'sb1',
    volumeId,
    mode: 'block',
    bus: 'virtio-blk',
    readOnly: false,
    state,
    nodeName: `vmpn-${volumeId}`,
    deviceId: `vmpd-${volumeId}`,
    serial: `vmp-${volumeId}`,
    guestHint: `/dev/disk/by-id/virtio-vmp-${volumeId}`,
    source: { type: 'hostDevice', path: '/dev/loop3' },
    timeline: [
      { step: 'Pending', at: '2026-01-01T00:00:00.000Z', ms: 1 },
      { step: 'Attached', at: '2026-01-01T00:00:00.040Z', ms: 39 },
    ],
  };
}

function setup(readinessPollMs = 60_000) {
  const records: SandboxRecord[] = [
    {
      id: 'sb1',
      kind: 'kata',
      state: 'running',
      discoveredAt: '2026-01-01T00:00:00.000Z',
      pod: { uid: 'u1', name: 'web-0', namespace: 'shop' },
    },
    { id: 'dom1', kind: 'libvirt', state: 'paused', discoveredAt: '2026-01-01T00:00:00.000Z', pod: {} },
  ];
  const volumes = new Map<string, Attachment[]>();
  let listCalls = 0;
  let gate: Promise<void> | undefined;
  let readiness: Readiness = {
    ready: false,
    checks: { reconcile: { ok: false, detail: 'start-up reconcile not finished' } },
  };
  const snap = new NodeSnapshot({
    catalog: { list: () => records, get: (id) => records.find((r) => r.id === id) },
    listVolumes: async (id) => {
      listCalls++;
      await gate;
      return volumes.get(id) ?? [];
    },
    facts: () => ({ hostname: 'h', memory: { totalBytes: 100, freeBytes: 5, availableBytes: 6 } }),
    readiness: () => readiness,
    log: memoryLogger().logger,
    vmplugVersion: '0.1.0',
    readinessPollMs,
  });
  let notified = 0;
  snap.subscribe(() => notified++);
  return {
    snap,
    volumes,
    records,
    calls: () => listCalls,
    notified: () => notified,
    hold: () => {
      let release!: () => void;
      gate = new Promise((r) => {
        release = r;
      });
      return () => {
        gate = undefined;
        release();
      };
    },
    setReadiness: (r: Readiness) => {
      readiness = r;
    },
  };
}

describe('NodeSnapshot', () => {
  it('shows the catalog with pod identity, the cached volumes and the stable node facts', async () => {
    const t = setup();
    t.volumes.set('sb1', [attachment('v1')]);
    await t.snap.refreshAll();
    const s = t.snap.snapshot();
    expect(s.node).toEqual({ hostname: 'h', memoryBytes: 100, vmplugVersion: '0.1.0' });
    expect(s.sandboxes).toEqual([
      {
        id: 'sb1',
        kind: 'kata',
        state: 'running',
        pod: { uid: 'u1', name: 'web-0', namespace: 'shop' },
        volumes: [
          {
            volumeId: 'v1',
            mode: 'block',
            bus: 'virtio-blk',
            state: 'Attached',
            device: 'vmpd-v1',
            readOnly: false,
            since: '2026-01-01T00:00:00.040Z',
            attachMs: 40,
          },
        ],
        nics: [],
      },
      { id: 'dom1', kind: 'libvirt', state: 'paused', volumes: [], nics: [] },
    ]);
    expect(t.snap.describe('sb1', 'v1')).toEqual({ mode: 'block', frontend: 'virtio-blk' });
    expect(t.snap.describe('sb1', 'nope')).toBeUndefined();
    t.snap.close();
  });

  it('tells subscribers when a volume list changed, not when it read the same', async () => {
    const t = setup();
    await t.snap.refreshVolumes('sb1');
    const before = t.notified();
    await t.snap.refreshVolumes('sb1');
    expect(t.notified()).toBe(before);
    t.volumes.set('sb1', [attachment('v1')]);
    await t.snap.refreshVolumes('sb1');
    expect(t.notified()).toBe(before + 1);
    t.volumes.set('sb1', []);
    await t.snap.refreshVolumes('sb1');
    expect(t.notified()).toBe(before + 2);
    expect(t.snap.snapshot().sandboxes[0]?.volumes).toEqual([]);
    t.snap.close();
  });

  it('refreshes of one sandbox during a read share it and read once more after it', async () => {
    const t = setup();
    const release = t.hold();
    const first = t.snap.refreshVolumes('sb1');
    t.volumes.set('sb1', [attachment('v2')]);
    const others = Array.from({ length: 5 }, () => t.snap.refreshVolumes('sb1'));
    release();
    await Promise.all([first, ...others]);
    expect(t.calls()).toBe(2);
    expect(t.snap.snapshot().sandboxes[0]?.volumes.map((v) => v.volumeId)).toEqual(['v2']);
    t.snap.close();
  });

  it('an attach or detach that succeeded patches the list from its outcome, without a read', async () => {
    const t = setup();
    t.volumes.set('sb1', [attachment('v2')]);
    await t.snap.refreshAll();
    const reads = t.calls();
    const n = t.notified();
    const pod = { uid: 'u1', name: 'web-0', namespace: 'shop' };
    t.snap.operationDone(attached({ ...attachment('v1'), pod }));
    expect(t.snap.snapshot().sandboxes[0]?.volumes.map((v) => v.volumeId)).toEqual(['v1', 'v2']);
    expect(t.snap.describe('sb1', 'v1')).toEqual({ mode: 'block', frontend: 'virtio-blk', pod });
    t.snap.operationDone(detached('v2'));
    expect(t.snap.snapshot().sandboxes[0]?.volumes.map((v) => v.volumeId)).toEqual(['v1']);
    expect(t.notified()).toBe(n + 2);
    expect(t.calls()).toBe(reads);
    // The journal agrees: the next full read finds the same list and tells nobody.
    t.volumes.set('sb1', [{ ...attachment('v1'), pod }]);
    await t.snap.refreshVolumes('sb1');
    expect(t.notified()).toBe(n + 2);
    t.snap.operationDone(detached('v1'));
    expect(t.snap.snapshot().sandboxes[0]?.volumes).toEqual([]);
    expect(t.snap.describe('sb1', 'v1')).toBeUndefined();
    t.snap.close();
  });

  it('a failure, or a list never read, is read from the engine instead of patched', async () => {
    const t = setup();
    t.volumes.set('sb1', [attachment('v1', 'Detaching')]);
    t.snap.operationDone(attached(attachment('v1')));
    await vi.waitFor(() => expect(t.calls()).toBe(1));
    await vi.waitFor(() => expect(t.snap.snapshot().sandboxes[0]?.volumes[0]?.state).toBe('Detaching'));
    t.snap.operationDone({ ...failed, op: 'detach' });
    await vi.waitFor(() => expect(t.calls()).toBe(2));
    t.snap.close();
  });

  it('a read that an outcome overtook is dropped and made again', async () => {
    const t = setup();
    await t.snap.refreshVolumes('sb1');
    const release = t.hold();
    const reading = t.snap.refreshVolumes('sb1');
    const n = t.notified();
    // The read began before the attach's final write: what it returns lacks v1.
    t.snap.operationDone(attached(attachment('v1')));
    t.volumes.set('sb1', [attachment('v1')]);
    expect(t.snap.snapshot().sandboxes[0]?.volumes.map((v) => v.volumeId)).toEqual(['v1']);
    release();
    await reading;
    expect(t.calls()).toBe(3);
    expect(t.snap.snapshot().sandboxes[0]?.volumes.map((v) => v.volumeId)).toEqual(['v1']);
    // Never shown without v1 in between: the patch was the only change told.
    expect(t.notified()).toBe(n + 1);
    t.snap.close();
  });

  it('Ready follows readiness; its transition time moves only when its status does', async () => {
    const t = setup(10);
    const c1 = t.snap.snapshot().conditions[0];
    expect(c1).toMatchObject({ type: 'Ready', status: 'False', reason: 'NotReady' });
    expect(c1?.message).toBe('reconcile: start-up reconcile not finished');
    const n = t.notified();
    await new Promise((r) => setTimeout(r, 50));
    expect(t.notified()).toBe(n);
    t.setReadiness({ ready: true, checks: { reconcile: { ok: true, detail: '1 run(s)' } } });
    await vi.waitFor(() => expect(t.snap.snapshot().conditions[0]?.status).toBe('True'), { timeout: 10_000 });
    const c2 = t.snap.snapshot().conditions[0];
    expect(c2).toMatchObject({ type: 'Ready', status: 'True', reason: 'Ready' });
    expect(t.notified()).toBe(n + 1);
    // A detail that changes while ready (the run count) is no transition and no change.
    t.setReadiness({ ready: true, checks: { reconcile: { ok: true, detail: '2 run(s)' } } });
    await new Promise((r) => setTimeout(r, 50));
    expect(t.snap.snapshot().conditions[0]).toEqual(c2);
    expect(t.notified()).toBe(n + 1);
    t.snap.close();
  });
});

const base = {
  sandboxId: 'sb1' as SandboxId,
  mode: 'block',
  frontend: 'virtio-blk',
  ms: 40,
} as const;

function attached(a: Attachment): VolumeOperation {
  return { ...base, volumeId: a.volumeId as VolumeId, op: 'attach', ok: true, created: true, attachment: a };
}

function detached(volumeId: string): VolumeOperation {
  return { ...base, volumeId: volumeId as VolumeId, op: 'detach', ok: true };
}

const failed: VolumeOperation = {
  ...base,
  volumeId: 'v1' as VolumeId,
  op: 'attach',
  ok: false,
  code: 'BACKEND',
  message: 'device_add failed',
};
