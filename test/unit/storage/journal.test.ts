import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { InvalidTransitionError, JournalCorruptError } from '../../../core/errors.js';
import { parseSandboxId, parseVolumeId } from '../../../core/ids.js';
import {
  canTransition,
  Journal,
  type JournalRecord,
  loadFingerprintKey,
  newRecord,
  TIMELINE_MAX,
  transition,
  type VolumeState,
} from '../../../storage/journal.js';
import { parseAttachRequest, specFingerprint, toStoredSpec } from '../../../storage/volume-spec.js';

const KEY = 'AQDuSQNrSIzGGhAAA42jGo01/mILR5NFi7XNYA==';
const sb = parseSandboxId('a'.repeat(64));
const FP_KEY = Buffer.alloc(32, 1);

interface LogLine {
  level: 'warn' | 'error';
  obj: Record<string, unknown>;
  msg: string;
}

function memoryLogger(): {
  lines: LogLine[];
  warn: (o: Record<string, unknown>, m: string) => void;
  error: (o: Record<string, unknown>, m: string) => void;
} {
  const lines: LogLine[] = [];
  return {
    lines,
    warn: (obj, msg) => lines.push({ level: 'warn', obj, msg }),
    error: (obj, msg) => lines.push({ level: 'error', obj, msg }),
  };
}

function rbdRecord(volumeId = 'pvc-1'): JournalRecord {
  const spec = parseAttachRequest({
    mode: 'rbd',
    source: {
      type: 'rbd',
      pool: 'rbd',
      image: 'vol1',
      monitors: ['127.0.0.1:6789', '[::1]:3300'],
      user: 'vmplug',
      key: KEY,
    },
  });
  return newRecord(
    {
      sandboxId: sb,
      volumeId: parseVolumeId(volumeId),
      kind: 'kata',
      spec: toStoredSpec(spec),
      fingerprint: specFingerprint(spec, FP_KEY),
      bus: 'scsi',
    },
    new Date('2026-01-01T00:00:00Z'),
  );
}

function blockRecord(volumeId = 'pvc-2'): JournalRecord {
  const spec = parseAttachRequest({
    mode: 'block',
    source: { type: 'hostDevice', path: '/dev/loop3' },
    bus: 'virtio-blk',
  });
  return newRecord({
    sandboxId: sb,
    volumeId: parseVolumeId(volumeId),
    kind: 'libvirt',
    spec: toStoredSpec(spec),
    fingerprint: specFingerprint(spec, FP_KEY),
    bus: 'virtio-blk',
  });
}

describe('state model', () => {
  it('walks the rbd attach and detach paths', () => {
    let r = rbdRecord();
    for (const s of ['SecretAdded', 'BlockdevAdded'] as const) r = transition(r, s, { ms: 5 });
    r = transition(r, 'DeviceAdded', { lane: { bus: 'scsi', scsiId: 0 }, ms: 60 });
    r = transition(r, 'Attached');
    for (const s of [
      'Detaching',
      'DetachPending',
      'DetachPending',
      'DeviceDeleted',
      'BlockdevDeleted',
      'Detached',
    ] as const) {
      r = transition(r, s);
    }
    expect(r.timeline.map((t) => t.step)).toEqual([
      'Pending',
      'SecretAdded',
      'BlockdevAdded',
      'DeviceAdded',
      'Attached',
      'Detaching',
      'DetachPending',
      'DetachPending',
      'DeviceDeleted',
      'BlockdevDeleted',
      'Detached',
    ]);
    expect(r.timeline[3]).toMatchObject({ ms: 60 });
    expect(r.lane).toEqual({ bus: 'scsi', scsiId: 0 });
  });

  it('lets block mode skip the secret, and only block mode', () => {
    expect(canTransition(blockRecord(), 'BlockdevAdded')).toBe(true);
    expect(canTransition(blockRecord(), 'SecretAdded')).toBe(false);
    expect(canTransition(rbdRecord(), 'BlockdevAdded')).toBe(false);
  });

  it('rolls back from any attach state and skips steps never taken', () => {
    expect(transition(transition(rbdRecord(), 'Detaching'), 'Detached').state).toBe('Detached');
    const half = transition(transition(rbdRecord(), 'SecretAdded'), 'BlockdevAdded');
    const rolled = transition(half, 'Detaching', {
      error: { code: 'BACKEND_FAILED', message: 'device_add failed' },
    });
    expect(rolled.lastError).toMatchObject({ code: 'BACKEND_FAILED', message: 'device_add failed' });
    expect(transition(rolled, 'BlockdevDeleted').state).toBe('BlockdevDeleted');
  });

  it.each<[VolumeState[], VolumeState]>([
    [[], 'Attached'],
    [[], 'DeviceAdded'],
    [['SecretAdded'], 'SecretAdded'],
    [['SecretAdded', 'BlockdevAdded', 'Detaching', 'Detached'], 'Detaching'],
    [['Detaching', 'DetachPending'], 'BlockdevDeleted'],
    [['Detaching', 'DeviceDeleted'], 'Detached'],
  ])('refuses %j then %s', (path, to) => {
    let r = rbdRecord();
    for (const s of path) r = transition(r, s);
    expect(() => transition(r, to)).toThrow(InvalidTransitionError);
  });

  it('needs a lane for DeviceAdded and leaves the input untouched', () => {
    const r = transition(rbdRecord(), 'SecretAdded');
    const b = transition(r, 'BlockdevAdded');
    expect(() => transition(b, 'DeviceAdded')).toThrow(InvalidTransitionError);
    expect(r.state).toBe('SecretAdded');
    expect(r.timeline).toHaveLength(2);
  });

  it('bounds the timeline', () => {
    let r = transition(rbdRecord(), 'Detaching');
    r = transition(r, 'DetachPending');
    for (let i = 0; i < 100; i++) r = transition(r, 'DetachPending');
    expect(r.timeline).toHaveLength(TIMELINE_MAX);
  });
});

describe('Journal on disk', () => {
  let stateDir: string;
  let log: ReturnType<typeof memoryLogger>;
  let journal: Journal;

  beforeEach(async () => {
    stateDir = await mkdtemp(join(tmpdir(), 'vmplug-journal-'));
    log = memoryLogger();
    journal = new Journal({ stateDir, logger: log });
  });
  afterEach(async () => {
    await rm(stateDir, { recursive: true, force: true });
  });

  it('runs the write hook around a save, and for a state passed unwritten without touching the disk', async () => {
    const seen: string[] = [];
    const hooked = new Journal({
      stateDir,
      logger: log,
      onWrite: (record, phase) => seen.push(`${phase}:${record.state}`),
    });
    const r = rbdRecord();
    await hooked.save(r);
    const onDisk = await readFile(hooked.pathOf(sb, r.volumeId), 'utf8');
    hooked.passed(transition(r, 'SecretAdded'));
    expect(seen).toEqual(['before:Pending', 'after:Pending', 'before:SecretAdded', 'after:SecretAdded']);
    expect(await readFile(hooked.pathOf(sb, r.volumeId), 'utf8')).toBe(onDisk);
  });

  it('makes its sandbox directory again when it went behind its back', async () => {
    const r = rbdRecord();
    await journal.save(r);
    await rm(join(stateDir, 'journal', sb), { recursive: true });
    await journal.save(transition(r, 'SecretAdded'));
    expect((await journal.load(sb, r.volumeId))?.state).toBe('SecretAdded');
    expect((await stat(join(stateDir, 'journal', sb))).mode & 0o777).toBe(0o700);
    // And after pruning an emptied sandbox.
    await journal.remove(sb, r.volumeId);
    expect(await journal.pruneSandbox(sb)).toBe(true);
    await journal.save(r);
    expect((await journal.load(sb, r.volumeId))?.state).toBe('Pending');
  });

  it('saves, loads, lists and removes records, mode 0600, never the key', async () => {
    const r = rbdRecord();
    await journal.save(r);
    const path = journal.pathOf(sb, r.volumeId);
    expect(path).toBe(join(stateDir, 'journal', sb, 'pvc-1.json'));
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    expect((await stat(join(stateDir, 'journal', sb))).mode & 0o777).toBe(0o700);
    const text = await readFile(path, 'utf8');
    expect(text).not.toContain(KEY);
    expect(text).not.toContain('redacted');
    expect(await journal.load(sb, r.volumeId)).toEqual(r);

    const next = transition(r, 'SecretAdded', { ms: 3 });
    await journal.save(next);
    expect(await journal.load(sb, r.volumeId)).toEqual(next);
    await journal.save(blockRecord());
    expect((await journal.list()).map((x) => x.volumeId)).toEqual(['pvc-1', 'pvc-2']);
    expect(await journal.list(parseSandboxId('other'))).toEqual([]);
    expect(await readdir(join(stateDir, 'journal', sb))).toEqual(
      expect.arrayContaining(['pvc-1.json', 'pvc-2.json']),
    );

    expect(await journal.remove(sb, r.volumeId)).toBe(true);
    expect(await journal.remove(sb, r.volumeId)).toBe(false);
    expect(await journal.load(sb, r.volumeId)).toBeUndefined();
    expect(await journal.pruneSandbox(sb)).toBe(false);
    await journal.remove(sb, parseVolumeId('pvc-2'));
    expect(await journal.pruneSandbox(sb)).toBe(true);
    expect(await journal.sandboxIds()).toEqual([]);
    expect(log.lines).toEqual([]);
  });

  it('lists nothing when the state dir is new', async () => {
    expect(await journal.list()).toEqual([]);
    expect(await journal.load(sb, parseVolumeId('x'))).toBeUndefined();
  });

  it('survives a write torn by a crash: the old record stands, the temp file is ignored, then swept', async () => {
    const r = rbdRecord();
    await journal.save(r);
    const dir = join(stateDir, 'journal', sb);
    // What a kill -9 between write and rename leaves: a partial temp file next to the record.
    const torn = join(dir, '.pvc-1.json.0123456789ab.tmp');
    await writeFile(torn, '{"version":1,"sandboxId":"aaa', { mode: 0o600 });
    // And one for a volume whose first write never completed.
    await writeFile(join(dir, '.pvc-9.json.ba9876543210.tmp'), '{', { mode: 0o600 });
    expect(await journal.list()).toEqual([r]);
    expect(await journal.load(sb, parseVolumeId('pvc-9'))).toBeUndefined();
    expect(log.lines).toEqual([]);
    // A recent temp may belong to a write in flight: kept when asked to spare young ones.
    expect(await journal.sweepTemp({ olderThanMs: 60_000 })).toBe(0);
    expect(await journal.sweepTemp()).toBe(2);
    expect(await readdir(dir)).toEqual(['pvc-1.json']);
    expect(log.lines.map((l) => l.obj.decision)).toEqual(['removed', 'removed']);
  });

  it.each([
    ['garbage', 'not json at all'],
    ['empty', ''],
    ['truncated', '{"version":1,'],
    ['wrong type', '[]'],
    ['wrong version', JSON.stringify({ ...rbdRecord(), version: 2 })],
    ['other ids', JSON.stringify({ ...rbdRecord('pvc-other') })],
    ['bad state', JSON.stringify({ ...rbdRecord(), state: 'Exploded' })],
    [
      'forged names',
      JSON.stringify({ ...rbdRecord(), names: { ...rbdRecord().names, device: 'scsi0-0-0' } }),
    ],
    [
      'a key in the spec',
      JSON.stringify({
        ...rbdRecord(),
        spec: { ...rbdRecord().spec, source: { ...rbdRecord().spec.source, key: KEY } },
      }),
    ],
    [
      'a lane on Kata lanes',
      JSON.stringify({
        ...rbdRecord(),
        bus: 'virtio-blk',
        lane: { bus: 'virtio-blk', port: 'pci-bridge-0' },
      }),
    ],
    [
      'a bad path',
      JSON.stringify({
        ...blockRecord('pvc-1'),
        spec: {
          mode: 'block',
          source: { type: 'hostDevice', path: '/etc/shadow' },
          readOnly: false,
          bus: 'auto',
        },
      }),
    ],
  ])(
    'quarantines a corrupt record (%s) with a logged decision instead of crashing',
    async (_name, content) => {
      const good = blockRecord();
      await journal.save(good);
      const dir = join(stateDir, 'journal', sb);
      await writeFile(join(dir, 'pvc-1.json'), content, { mode: 0o600 });
      expect(await journal.list()).toEqual([good]);
      expect(log.lines).toHaveLength(1);
      expect(log.lines[0]).toMatchObject({
        level: 'error',
        obj: { sandboxId: sb, volumeId: 'pvc-1', decision: 'quarantined; treated as absent' },
      });
      expect(JSON.stringify(log.lines)).not.toContain(KEY);
      const names = await readdir(dir);
      expect(names).not.toContain('pvc-1.json');
      expect(names.some((n) => /^\.pvc-1\.json\.corrupt-[0-9]+$/.test(n))).toBe(true);
      expect(await journal.quarantined()).toEqual([
        { sandboxId: sb, volumeId: 'pvc-1', path: expect.stringContaining('.pvc-1.json.corrupt-') },
      ]);
      // A fresh record for the same volume can be written afterwards.
      await journal.save(rbdRecord());
      expect((await journal.list()).map((r) => r.volumeId)).toEqual(['pvc-1', 'pvc-2']);
    },
  );

  it('quarantines a directory in place of a record', async () => {
    await mkdir(join(stateDir, 'journal', sb, 'pvc-1.json'), { recursive: true });
    expect(await journal.list()).toEqual([]);
    expect(log.lines[0]?.obj).toMatchObject({ reason: 'not a regular file' });
  });

  it('ignores foreign files and directories with a warning', async () => {
    await journal.save(blockRecord());
    const dir = join(stateDir, 'journal', sb);
    await writeFile(join(dir, 'README'), 'x');
    await writeFile(join(dir, 'bad..id.json'), '{}');
    await writeFile(join(stateDir, 'journal', 'not a sandbox'), 'x');
    expect((await journal.list()).map((r) => r.volumeId)).toEqual(['pvc-2']);
    expect(log.lines.every((l) => l.level === 'warn' && l.obj.decision === 'ignored')).toBe(true);
    expect(log.lines).toHaveLength(3);
  });

  it('refuses to save a record it could not load back', async () => {
    const r = { ...blockRecord(), state: 'Bogus' as VolumeState };
    await expect(journal.save(r)).rejects.toBeInstanceOf(JournalCorruptError);
    expect(await journal.list()).toEqual([]);
  });

  it('keeps concurrent writers of different volumes (and sandboxes) apart', async () => {
    const sandboxes = [sb, parseSandboxId('b'.repeat(64))];
    const records: JournalRecord[] = [];
    for (const s of sandboxes) {
      for (let i = 0; i < 20; i++) {
        const base = i % 2 ? rbdRecord(`vol-${i}`) : blockRecord(`vol-${i}`);
        records.push({ ...base, sandboxId: s, names: newRecord({ ...base, sandboxId: s }).names });
      }
    }
    // Each volume written several times concurrently with all the others.
    await Promise.all(
      records.flatMap((r) => [journal.save(r), journal.save(transition(r, 'Detaching')), journal.save(r)]),
    );
    const listed = await journal.list();
    expect(listed).toHaveLength(40);
    for (const r of listed) expect(['Pending', 'Detaching']).toContain(r.state);
    for (const s of sandboxes)
      expect((await readdir(join(stateDir, 'journal', s))).filter((n) => n.startsWith('.'))).toEqual([]);
  });

  it('writes behind: every read and write of the record waits for it, and writes stay in order', async () => {
    const r = blockRecord();
    await journal.save(r);
    const attached = {
      ...transition(r, 'BlockdevAdded'),
      lane: { bus: 'virtio-blk' as const, port: 'vmplug-rp1' },
    };
    const done = transition(transition(attached, 'DeviceAdded'), 'Attached');
    journal.saveBehind(done);
    // Not durable yet: the file still holds Pending; the journal's own readers see Attached.
    expect(JSON.parse(await readFile(journal.pathOf(sb, r.volumeId), 'utf8')).state).toBe('Pending');
    expect((await journal.load(sb, r.volumeId))?.state).toBe('Attached');
    expect(JSON.parse(await readFile(journal.pathOf(sb, r.volumeId), 'utf8')).state).toBe('Attached');

    journal.saveBehind(transition(done, 'Detaching'));
    journal.removeBehind(sb, r.volumeId);
    expect((await journal.list(sb)).map((x) => x.state)).toEqual([]);
    journal.saveBehind(r);
    expect((await journal.list()).map((x) => x.state)).toEqual(['Pending']);
    journal.removeBehind(sb, r.volumeId);
    expect(await journal.pruneSandbox(sb)).toBe(true);
    await journal.settled();
    expect(await journal.sandboxIds()).toEqual([]);
    expect(log.lines).toEqual([]);
  });

  it('logs a write behind that failed and leaves the record as it was on disk', async () => {
    const r = rbdRecord();
    await journal.save(r);
    // A record that cannot be written (not one load() would read back) stands for a full disk.
    const bad = { ...transition(r, 'SecretAdded'), fingerprint: 'nope' };
    journal.saveBehind(bad);
    await journal.settled();
    expect((await journal.load(sb, r.volumeId))?.state).toBe('Pending');
    expect(log.lines).toEqual([
      expect.objectContaining({
        level: 'error',
        msg: 'journal: a write after the answer failed',
        obj: expect.objectContaining({
          volumeId: r.volumeId,
          decision: expect.stringContaining('reconcile'),
        }),
      }),
    ]);
  });

  it('knows which records it holds: a fresh volume reads no file; one placed behind its back shows in list()', async () => {
    const r = rbdRecord();
    await journal.save(r);
    const fresh = parseVolumeId('pvc-new');
    expect(await journal.load(sb, fresh)).toBeUndefined();
    // A record this process did not write, after its index of the directory was made: not seen
    // by load (no read for a volume it never wrote), seen once list() reads the directory.
    const placed = { ...rbdRecord('pvc-new') };
    await writeFile(journal.pathOf(sb, fresh), `${JSON.stringify(placed, null, 2)}\n`, { mode: 0o600 });
    expect(await journal.load(sb, fresh)).toBeUndefined();
    expect((await journal.list(sb)).map((x) => x.volumeId)).toEqual(['pvc-1', 'pvc-new']);
    expect((await journal.load(sb, fresh))?.volumeId).toBe('pvc-new');
    // Its own writes and removals keep the index.
    expect(await journal.remove(sb, r.volumeId)).toBe(true);
    expect(await journal.load(sb, r.volumeId)).toBeUndefined();
    await journal.save(r);
    expect((await journal.load(sb, r.volumeId))?.state).toBe('Pending');
    // A later process (another Journal) reads the directory afresh.
    const restarted = new Journal({ stateDir, logger: log });
    expect((await restarted.list()).map((x) => x.volumeId)).toEqual(['pvc-1', 'pvc-new']);
  });

  it('honours an aborted signal and leaves no temp file', async () => {
    const ac = new AbortController();
    ac.abort();
    await expect(journal.save(blockRecord(), { signal: ac.signal })).rejects.toMatchObject({
      name: 'AbortError',
    });
    await expect(journal.list(undefined, { signal: ac.signal })).resolves.toEqual([]);
    await journal.save(blockRecord());
    await expect(journal.list(undefined, { signal: ac.signal })).rejects.toMatchObject({
      name: 'AbortError',
    });
    expect(await readdir(join(stateDir, 'journal', sb))).toEqual(['pvc-2.json']);
  });
});

describe('loadFingerprintKey', () => {
  let stateDir: string;
  beforeEach(async () => {
    stateDir = await mkdtemp(join(tmpdir(), 'vmplug-fpkey-'));
  });
  afterEach(async () => {
    await rm(stateDir, { recursive: true, force: true });
  });

  it('creates one 32-byte key (0600) that concurrent callers and later runs share', async () => {
    const keys = await Promise.all(Array.from({ length: 8 }, () => loadFingerprintKey(stateDir)));
    for (const k of keys) expect(k.equals(keys[0] as Buffer)).toBe(true);
    expect(keys[0]).toHaveLength(32);
    expect((await stat(join(stateDir, 'fingerprint.key'))).mode & 0o777).toBe(0o600);
    expect((await loadFingerprintKey(stateDir)).equals(keys[0] as Buffer)).toBe(true);
    expect((await readdir(stateDir)).sort()).toEqual(['fingerprint.key']);
  });

  it('refuses a key file of the wrong size', async () => {
    await writeFile(join(stateDir, 'fingerprint.key'), 'short');
    await expect(loadFingerprintKey(stateDir)).rejects.toBeInstanceOf(JournalCorruptError);
  });
});
