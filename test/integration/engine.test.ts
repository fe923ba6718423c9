import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, truncate } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { CephUnreachableError, ConflictError, DetachPendingError } from '../../core/errors.js';
import { parseSandboxId, parseVolumeId, type SandboxId } from '../../core/ids.js';
import { QmpSession, queryNamedBlockNodes, queryStatus } from '../../qmp/index.js';
import type { OperationContext, OperationLogger } from '../../storage/attach-service.js';
import { AttachEngine } from '../../storage/engine.js';
import { Journal, loadFingerprintKey, newRecord, transition } from '../../storage/journal.js';
import { volumeNames } from '../../storage/naming.js';
import { blockdevHostDevice, deviceArgs } from '../../storage/qemu-args.js';
import { listObjects } from '../../storage/qemu-view.js';
import type { SandboxDirectory, SandboxPresence } from '../../storage/sandbox-directory.js';
import {
  type AttachSpec,
  parseAttachRequest,
  specFingerprint,
  toStoredSpec,
} from '../../storage/volume-spec.js';
import { attachCeph, type CephCluster } from '../env/ceph.js';
import { createLoopDevice, type LoopDevice, testBedHostDeviceCheck } from '../env/loop.js';
import { rbdSource } from '../env/rbd-request.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../env/sandbox.js';

// The attach engine against a real Kata-shaped sandbox (QEMU 7.2 through bin/vmplug-qemu, TCG
// guest), the run's real Ceph cluster and loop devices: what the guest sees, where its writes
// land, idempotency, Ceph down, a guest that holds a device, and reconcile of hand-made leftovers.

const MiB = 1024 * 1024;
const run = promisify(execFile);

class Log implements OperationLogger {
  constructor(readonly lines: string[] = []) {}
  #push(level: string, obj: Record<string, unknown>, msg?: string): void {
    this.lines.push(JSON.stringify({ level, t: Math.round(performance.now()), ...obj, msg }));
  }
  trace(o: Record<string, unknown>, m?: string): void {
    this.#push('trace', o, m);
  }
  debug(o: Record<string, unknown>, m?: string): void {
    this.#push('debug', o, m);
  }
  info(o: Record<string, unknown>, m?: string): void {
    this.#push('info', o, m);
  }
  warn(o: Record<string, unknown>, m?: string): void {
    this.#push('warn', o, m);
  }
  error(o: Record<string, unknown>, m?: string): void {
    this.#push('error', o, m);
  }
  child(b: Record<string, unknown>): OperationLogger {
    const wrap =
      (level: 'trace' | 'debug' | 'info' | 'warn' | 'error') => (o: Record<string, unknown>, m?: string) =>
        this[level]({ ...b, ...o }, m);
    return {
      trace: wrap('trace'),
      debug: wrap('debug'),
      info: wrap('info'),
      warn: wrap('warn'),
      error: wrap('error'),
      child: (more) => this.child({ ...b, ...more }),
    };
  }
}

async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) out.push(join(e.parentPath, e.name));
  }
  return out;
}

describe('attach engine on a real sandbox, real Ceph and loop devices', () => {
  let root: TestRoot;
  let sandbox: KataSandbox;
  let qmp: QmpSession;
  let ceph: CephCluster;
  let stateDir: string;
  let journal: Journal;
  let engine: AttachEngine;
  let sandboxId: SandboxId;
  let directory: SandboxDirectory;
  const log = new Log();
  const ctx = (): OperationContext => ({ signal: AbortSignal.timeout(60_000), log });
  const images: string[] = [];
  const loops: LoopDevice[] = [];

  const vmplugNodes = async (): Promise<string[]> =>
    (await queryNamedBlockNodes(qmp))
      .flatMap((n) => n['node-name'] ?? [])
      .filter((n) => /^vmp[df]?-/.test(n));
  const vmplugSecrets = async (): Promise<string[]> =>
    (await listObjects(qmp)).map((o) => o.id).filter((id) => id.startsWith('vmps-'));

  const newImage = async (sizeBytes: number): Promise<string> => {
    const name = `eng-${randomBytes(4).toString('hex')}`;
    await ceph.createImage(name, sizeBytes);
    images.push(name);
    return name;
  };
  const rbdSpec = (
    image: string,
    extra: Record<string, unknown> = {},
    monitors = ceph.monitors,
  ): AttachSpec =>
    parseAttachRequest({
      mode: 'rbd',
      source: rbdSource(ceph, image, { monitors }),
      ...extra,
    });
  const blockSpec = (path: string, extra: Record<string, unknown> = {}): AttachSpec =>
    parseAttachRequest({ mode: 'block', source: { type: 'hostDevice', path }, ...extra });

  beforeAll(async () => {
    ceph = attachCeph(inject('ceph'));
    root = await createTestRoot();
    stateDir = await mkdtemp(join(tmpdir(), 'vmplug-engine-it-'));
    sandbox = await startKataSandbox(root);
    sandboxId = parseSandboxId(sandbox.id);
    qmp = QmpSession.start(sandbox.vmplugQmpPath);
    await qmp.ready({ timeoutMs: 20_000 });
    const present: SandboxPresence = { state: 'present', sandbox: { id: sandboxId, kind: 'kata', qmp } };
    directory = {
      lookup: (id) => (id === sandboxId ? present : { state: 'gone' }),
      known: () => [sandboxId],
    };
    journal = new Journal({
      stateDir,
      logger: log as unknown as ConstructorParameters<typeof Journal>[0]['logger'],
    });
    engine = new AttachEngine({
      journal,
      sandboxes: directory,
      fingerprintKey: await loadFingerprintKey(stateDir),
      stateDir,
      logger: log,
      checkHostDevice: testBedHostDeviceCheck,
    });
  });

  afterAll(async () => {
    await engine?.close();
    await qmp?.close();
    await root?.cleanup();
    await Promise.allSettled(loops.map((l) => l.detach()));
    const existing = new Set(ceph ? await ceph.listImages() : []);
    for (const name of images) if (existing.has(name)) await ceph.removeImage(name);
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
  });

  const combos = [
    { mode: 'rbd', bus: 'scsi', size: 24 * MiB },
    { mode: 'rbd', bus: 'virtio-blk', size: 40 * MiB },
    { mode: 'block', bus: 'scsi', size: 32 * MiB },
    { mode: 'block', bus: 'virtio-blk', size: 48 * MiB },
  ] as const;
  for (const c of combos) {
    it(`${c.mode}/${c.bus}: the guest sees the disk, its writes land in the ${c.mode === 'rbd' ? 'image' : 'loop device'}`, async () => {
      const volumeId = parseVolumeId(`pvc-${c.mode}-${c.bus}`);
      let spec: AttachSpec;
      let image = '';
      let loop: LoopDevice | undefined;
      if (c.mode === 'rbd') {
        image = await newImage(c.size);
        spec = rbdSpec(image, { bus: c.bus });
      } else {
        loop = await createLoopDevice(c.size);
        loops.push(loop);
        spec = blockSpec(loop.path, { bus: c.bus });
      }
      const sent = performance.now();
      const mark = log.lines.length;
      const { created, attachment } = await engine.attach(sandboxId, volumeId, spec, ctx());
      const attachMs = performance.now() - sent;
      expect(created).toBe(true);
      expect(attachment).toMatchObject({ state: 'Attached', bus: c.bus, mode: c.mode });
      const disk = await sandbox.guest.waitForDisk((d) => d.serial === attachment.serial, {
        timeoutMs: 30_000,
      });
      const seenMs = disk.seenAt - sent;
      if (process.env.VMPLUG_TRACE) console.log(Math.round(sent), log.lines.slice(mark).join('\n'));
      expect(disk.sizeBytes).toBe(c.size);
      expect(disk.readOnly).toBe(false);
      expect(disk.name).toMatch(c.bus === 'scsi' ? /^sd[a-z]+$/ : /^vd[a-z]+$/);

      // Same spec: the existing attachment; another spec: 409.
      const again = await engine.attach(sandboxId, volumeId, spec, ctx());
      expect(again.created).toBe(false);
      await expect(
        engine.attach(
          sandboxId,
          volumeId,
          c.mode === 'rbd' ? rbdSpec(image, { bus: c.bus, readOnly: true }) : blockSpec('/dev/loop-other'),
          ctx(),
        ),
      ).rejects.toBeInstanceOf(ConflictError);

      const stats = await engine.get(sandboxId, volumeId, ctx());
      expect(stats.stats?.size_bytes).toBe(c.size);

      const pattern = `vmplug-${c.mode}-${c.bus}-${randomBytes(4).toString('hex')}`;
      const w = await sandbox.guest.run(
        `printf '${pattern}' | dd of=/dev/${disk.name} bs=512 seek=4096 conv=fsync 2>/dev/null; echo $?`,
      );
      expect(w.stdout.trim()).toBe('0');
      const after = await engine.get(sandboxId, volumeId, ctx());
      expect(after.stats?.wr_bytes ?? 0).toBeGreaterThan(0);

      const detachSent = performance.now();
      await engine.detach(sandboxId, volumeId, ctx());
      const detachMs = performance.now() - detachSent;
      await sandbox.guest.waitForDiskGone(disk.name, { timeoutMs: 30_000 });
      console.log(
        `${c.mode}/${c.bus}: engine attach ${Math.round(attachMs)} ms (guest saw it +${Math.round(seenMs)} ms), ` +
          `detach ${Math.round(detachMs)} ms; steps ${attachment.timeline.map((t) => `${t.step} ${t.ms}`).join(', ')}`,
      );
      expect(await vmplugNodes()).toEqual([]);
      expect(await vmplugSecrets()).toEqual([]);
      expect(await journal.load(sandboxId, volumeId)).toBeUndefined();
      await engine.detach(sandboxId, volumeId, ctx());

      const landed =
        c.mode === 'rbd'
          ? await ceph.readImage(image, 4096 * 512, pattern.length)
          : await (loop as LoopDevice).readBacking(4096 * 512, pattern.length);
      expect(landed.toString()).toBe(pattern);
    });
  }

  it('read-only attachments on both frontends: the guest sees them read-only and cannot write', async () => {
    for (const bus of ['scsi', 'virtio-blk'] as const) {
      const loop = await createLoopDevice(8 * MiB);
      loops.push(loop);
      const volumeId = parseVolumeId(`pvc-ro-${bus}`);
      const { attachment } = await engine.attach(
        sandboxId,
        volumeId,
        blockSpec(loop.path, { bus, readOnly: true }),
        ctx(),
      );
      expect(attachment.readOnly).toBe(true);
      const disk = await sandbox.guest.waitForDisk((d) => d.serial === attachment.serial, {
        timeoutMs: 30_000,
      });
      expect(disk.readOnly).toBe(true);
      const w = await sandbox.guest.run(`printf x | dd of=/dev/${disk.name} conv=fsync 2>/dev/null; echo $?`);
      expect(w.stdout.trim()).not.toBe('0');
      await engine.detach(sandboxId, volumeId, ctx());
      await sandbox.guest.waitForDiskGone(disk.name, { timeoutMs: 30_000 });
    }
  });

  it('concurrent attaches to one sandbox get distinct lanes; concurrent detaches remove them all', async () => {
    const devs = await Promise.all([1, 2, 3, 4].map(() => createLoopDevice(4 * MiB)));
    loops.push(...devs);
    const ids = devs.map((_, i) => parseVolumeId(`pvc-par-${i}`));
    const buses = ['scsi', 'virtio-blk', 'scsi', 'virtio-blk'] as const;
    const results = await Promise.all(
      devs.map((d, i) =>
        engine.attach(sandboxId, ids[i] as (typeof ids)[0], blockSpec(d.path, { bus: buses[i] }), ctx()),
      ),
    );
    const lanes = await Promise.all(
      ids.map(async (id) => JSON.stringify((await journal.load(sandboxId, id))?.lane)),
    );
    expect(new Set(lanes).size).toBe(4);
    // Lanes were read back from QEMU (qom parent_bus, scsi-id), not found by trial and error.
    expect(log.lines.some((l) => l.includes('lane taken'))).toBe(false);
    const disks = await Promise.all(
      results.map((r) =>
        sandbox.guest.waitForDisk((d) => d.serial === r.attachment.serial, { timeoutMs: 30_000 }),
      ),
    );
    expect(new Set(disks.map((d) => d.name)).size).toBe(4);
    await Promise.all(ids.map((id) => engine.detach(sandboxId, id, ctx())));
    for (const d of disks) await sandbox.guest.waitForDiskGone(d.name, { timeoutMs: 30_000 });
    expect(await vmplugNodes()).toEqual([]);
  });

  it('rbd: online expand with block_resize reaches the guest', async () => {
    const image = await newImage(16 * MiB);
    const volumeId = parseVolumeId('pvc-grow');
    const { attachment } = await engine.attach(sandboxId, volumeId, rbdSpec(image), ctx());
    const disk = await sandbox.guest.waitForDisk((d) => d.serial === attachment.serial, {
      timeoutMs: 30_000,
    });
    const grown = await engine.resize(sandboxId, volumeId, 32 * MiB, ctx());
    expect(grown.stats?.size_bytes).toBe(32 * MiB);
    await sandbox.guest.waitForDisk((d) => d.name === disk.name && d.sizeBytes === 32 * MiB, {
      timeoutMs: 30_000,
    });
    expect(await ceph.imageSize(image)).toBe(32 * MiB);
    await expect(engine.resize(sandboxId, volumeId, 16 * MiB, ctx())).rejects.toMatchObject({
      field: 'sizeBytes',
    });
    await engine.detach(sandboxId, volumeId, ctx());
    await sandbox.guest.waitForDiskGone(disk.name, { timeoutMs: 30_000 });
  });

  it('block: after the host device grew, block_resize shows the new size to the guest', async () => {
    const loop = await createLoopDevice(16 * MiB);
    loops.push(loop);
    const volumeId = parseVolumeId('pvc-grow-block');
    const { attachment } = await engine.attach(sandboxId, volumeId, blockSpec(loop.path), ctx());
    const disk = await sandbox.guest.waitForDisk((d) => d.serial === attachment.serial, {
      timeoutMs: 30_000,
    });
    // What a CSI plugin's NodeExpand does on the host: the device grows first.
    await truncate(loop.backingFile, 24 * MiB);
    await run('losetup', ['--set-capacity', loop.path], { timeout: 15_000 });
    const grown = await engine.resize(sandboxId, volumeId, 24 * MiB, ctx());
    expect(grown.stats?.size_bytes).toBe(24 * MiB);
    await sandbox.guest.waitForDisk((d) => d.name === disk.name && d.sizeBytes === 24 * MiB, {
      timeoutMs: 30_000,
    });
    // Beyond the device: QEMU refuses, typed.
    await expect(engine.resize(sandboxId, volumeId, 64 * MiB, ctx())).rejects.toMatchObject({
      code: 'BACKEND_FAILED',
    });
    await engine.detach(sandboxId, volumeId, ctx());
    await sandbox.guest.waitForDiskGone(disk.name, { timeoutMs: 30_000 });
  });

  it('the cephx key is in no journal file, conf file or log line', async () => {
    const image = await newImage(8 * MiB);
    const volumeId = parseVolumeId('pvc-key');
    await engine.attach(sandboxId, volumeId, rbdSpec(image), ctx());
    // The Attached record is written behind the answer: its temp file would come and go under the walk.
    await journal.settled();
    const files = await filesUnder(stateDir);
    expect(files.some((f) => f.endsWith('.conf'))).toBe(true);
    for (const f of files) {
      if (f.endsWith('fingerprint.key')) continue;
      expect(await readFile(f, 'utf8')).not.toContain(ceph.clientKey);
    }
    await engine.detach(sandboxId, volumeId, ctx());
    expect(log.lines.length).toBeGreaterThan(0);
    expect(log.lines.join('\n')).not.toContain(ceph.clientKey);
  });

  it('Ceph unreachable: attach fails fast, leaves no node or secret, and the guest keeps running', async () => {
    const port = await closedPort();
    const t0 = performance.now();
    const err = await engine
      .attach(sandboxId, parseVolumeId('pvc-down'), rbdSpec('nothing', {}, [`127.0.0.1:${port}`]), ctx())
      .catch((e: unknown) => e);
    const ms = performance.now() - t0;
    console.log(`attach with Ceph down failed after ${Math.round(ms)} ms`);
    expect(err).toBeInstanceOf(CephUnreachableError);
    expect(await vmplugNodes()).toEqual([]);
    expect(await vmplugSecrets()).toEqual([]);
    expect(await journal.load(sandboxId, parseVolumeId('pvc-down'))).toBeUndefined();
    expect((await queryStatus(qmp)).status).toBe('running');
    expect((await sandbox.guest.run('echo alive')).stdout).toBe('alive\n');
  });

  it('rbd refused by Ceph (wrong key, missing image): typed error, nothing left behind', async () => {
    const image = await newImage(8 * MiB);
    // A well-formed cephx key that is not client.vmplug's.
    const blob = Buffer.alloc(28);
    blob.writeUInt16LE(1, 0);
    blob.writeUInt16LE(16, 10);
    randomBytes(16).copy(blob, 12);
    const wrongKey = blob.toString('base64');
    const cases: [string, AttachSpec][] = [
      ['wrong key', parseAttachRequest({ mode: 'rbd', source: rbdSource(ceph, image, { key: wrongKey }) })],
      ['missing image', rbdSpec(`missing-${randomBytes(4).toString('hex')}`)],
    ];
    for (const [what, spec] of cases) {
      const t0 = performance.now();
      const err = await engine
        .attach(sandboxId, parseVolumeId('pvc-refused'), spec, ctx())
        .catch((e: unknown) => e);
      console.log(
        `rbd attach with ${what}: ${(err as Error).message} after ${Math.round(performance.now() - t0)} ms`,
      );
      expect(err).toMatchObject({ code: expect.stringMatching(/^(BACKEND_FAILED|CEPH_UNREACHABLE)$/) });
      expect((err as Error).message).not.toContain(wrongKey);
      expect(await vmplugNodes()).toEqual([]);
      expect(await vmplugSecrets()).toEqual([]);
      expect(await journal.load(sandboxId, parseVolumeId('pvc-refused'))).toBeUndefined();
    }
    expect(log.lines.join('\n')).not.toContain(wrongKey);
    expect((await queryStatus(qmp)).status).toBe('running');
  });

  it('a guest that does not release a virtio-blk device: DetachPending, then a retry finishes', async () => {
    const loop = await createLoopDevice(8 * MiB);
    loops.push(loop);
    const volumeId = parseVolumeId('pvc-held');
    const { attachment } = await engine.attach(
      sandboxId,
      volumeId,
      blockSpec(loop.path, { bus: 'virtio-blk' }),
      ctx(),
    );
    const disk = await sandbox.guest.waitForDisk((d) => d.serial === attachment.serial, {
      timeoutMs: 30_000,
    });
    const impatient = new AttachEngine({
      journal,
      sandboxes: directory,
      fingerprintKey: await loadFingerprintKey(stateDir),
      stateDir,
      logger: log,
      detachTimeoutMs: 1_000,
      checkHostDevice: testBedHostDeviceCheck,
    });
    // A stopped guest cannot answer the ACPI unplug request.
    await qmp.execute('stop');
    try {
      await expect(impatient.detach(sandboxId, volumeId, ctx())).rejects.toBeInstanceOf(DetachPendingError);
      expect((await journal.load(sandboxId, volumeId))?.state).toBe('DetachPending');
      // The backend stays while the device exists.
      expect(await vmplugNodes()).toEqual([attachment.nodeName]);
      await expect(impatient.detach(sandboxId, volumeId, ctx())).rejects.toBeInstanceOf(DetachPendingError);
    } finally {
      await qmp.execute('cont');
    }
    await engine.detach(sandboxId, volumeId, ctx());
    await sandbox.guest.waitForDiskGone(disk.name, { timeoutMs: 30_000 });
    expect(await vmplugNodes()).toEqual([]);
    expect(await journal.load(sandboxId, volumeId)).toBeUndefined();
  });

  it('reconcile removes hand-made strays, rolls back one half-done attach and finishes another', async () => {
    const fp = await loadFingerprintKey(stateDir);
    // Strays: a vmplug-named node and secret that no record explains.
    const stray = volumeNames(sandboxId, parseVolumeId('pvc-stray'));
    await qmp.execute('blockdev-add', { driver: 'null-co', 'node-name': stray.node, size: MiB });
    await qmp.execute('object-add', {
      'qom-type': 'secret',
      id: stray.secret,
      data: 'aGVsbG8=',
      format: 'base64',
    });
    // A stray disk the guest sees: a vmplug-named scsi-hd over a vmplug-named node.
    const strayDisk = volumeNames(sandboxId, parseVolumeId('pvc-stray-disk'));
    await qmp.execute('blockdev-add', { driver: 'null-co', 'node-name': strayDisk.node, size: 2 * MiB });
    await qmp.execute('device_add', deviceArgs(strayDisk, { bus: 'scsi', scsiId: 200 }));
    const strayGuestDisk = await sandbox.guest.waitForDisk((d) => d.serial === strayDisk.serial, {
      timeoutMs: 30_000,
    });

    // A crash after blockdev-add, before device_add: rolled back.
    const loopA = await createLoopDevice(8 * MiB);
    loops.push(loopA);
    const volA = parseVolumeId('pvc-half-a');
    const specA = blockSpec(loopA.path, { bus: 'scsi' });
    let recA = newRecord({
      sandboxId,
      volumeId: volA,
      kind: 'kata',
      spec: toStoredSpec(specA),
      fingerprint: specFingerprint(specA, fp),
      bus: 'scsi',
      lane: { bus: 'scsi', scsiId: 7 },
    });
    recA = transition(recA, 'BlockdevAdded');
    await journal.save(recA);
    if (specA.mode !== 'block') throw new Error('unreachable');
    await qmp.execute('blockdev-add', blockdevHostDevice(recA.names, specA.source, false));

    // A crash after device_add, before its journal write: finished.
    const loopB = await createLoopDevice(12 * MiB);
    loops.push(loopB);
    const volB = parseVolumeId('pvc-half-b');
    const specB = blockSpec(loopB.path, { bus: 'virtio-blk' });
    let recB = newRecord({
      sandboxId,
      volumeId: volB,
      kind: 'kata',
      spec: toStoredSpec(specB),
      fingerprint: specFingerprint(specB, fp),
      bus: 'virtio-blk',
      lane: { bus: 'virtio-blk', port: 'vmplug-rp2' },
    });
    recB = transition(recB, 'BlockdevAdded');
    await journal.save(recB);
    if (specB.mode !== 'block') throw new Error('unreachable');
    await qmp.execute('blockdev-add', blockdevHostDevice(recB.names, specB.source, false));
    await qmp.execute('device_add', deviceArgs(recB.names, { bus: 'virtio-blk', port: 'vmplug-rp2' }));
    const diskB = await sandbox.guest.waitForDisk((d) => d.serial === recB.names.serial, {
      timeoutMs: 30_000,
    });

    const summary = await engine.reconcile();
    const actions = summary.repairs.map((r) => `${r.action}:${r.volumeId ?? r.name}`).sort();
    expect(actions).toEqual(
      [
        `finished-attach:${volB}`,
        `removed-stray-node:${stray.node}`,
        `removed-stray-device:${strayDisk.device}`,
        `removed-stray-node:${strayDisk.node}`,
        `removed-stray-secret:${stray.secret}`,
        `rolled-back-attach:${volA}`,
      ].sort(),
    );
    expect(summary.failures).toEqual([]);
    await sandbox.guest.waitForDiskGone(strayGuestDisk.name, { timeoutMs: 30_000 });
    expect(await vmplugNodes()).toEqual([recB.names.node]);
    expect(await vmplugSecrets()).toEqual([]);
    expect(await journal.load(sandboxId, volA)).toBeUndefined();
    const finished = await journal.load(sandboxId, volB);
    expect(finished?.state).toBe('Attached');
    expect(finished?.lane).toEqual({ bus: 'virtio-blk', port: 'vmplug-rp2' });
    expect((await engine.reconcile()).repairs).toEqual([]);

    // The finished attachment is an ordinary one: the same request answers 200, detach works.
    expect((await engine.attach(sandboxId, volB, specB, ctx())).created).toBe(false);
    await engine.detach(sandboxId, volB, ctx());
    await sandbox.guest.waitForDiskGone(diskB.name, { timeoutMs: 30_000 });
    expect(await vmplugNodes()).toEqual([]);
  });
});
