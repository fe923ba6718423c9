import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ValidationError } from '../../../core/errors.js';
import { parseSandboxId, parseVolumeId } from '../../../core/ids.js';
import { attachmentFromRecord } from '../../../storage/attach-service.js';
import { Journal, newRecord } from '../../../storage/journal.js';
import { parseAttachRequest, specFingerprint, toStoredSpec } from '../../../storage/volume-spec.js';

// The optional `pod` of an attach request: validated field by field, kept out of the spec and its
// fingerprint, stored beside the spec in the journal, shown in the Attachment.

const UID = '5f0c3b1e-9d2a-4c7b-8e6f-1a2b3c4d5e6f';
const FP_KEY = Buffer.alloc(32, 3);
const body = (pod?: unknown) => ({
  mode: 'block',
  source: { type: 'hostDevice', path: '/dev/loop3' },
  ...(pod !== undefined ? { pod } : {}),
});

function rejection(pod: unknown): ValidationError {
  try {
    parseAttachRequest(body(pod));
  } catch (err) {
    expect(err).toBeInstanceOf(ValidationError);
    return err as ValidationError;
  }
  throw new Error('accepted');
}

describe('attach request pod', () => {
  it('parses uid alone and uid with name and namespace; absent, null and "" mean none', () => {
    expect(parseAttachRequest(body({ uid: UID })).pod).toEqual({ uid: UID });
    expect(
      parseAttachRequest(body({ uid: UID.toUpperCase(), name: 'web-0.a', namespace: 'shop' })).pod,
    ).toEqual({ uid: UID, name: 'web-0.a', namespace: 'shop' });
    expect(parseAttachRequest(body({ uid: UID, name: '', namespace: null })).pod).toEqual({ uid: UID });
    expect(parseAttachRequest(body()).pod).toBeUndefined();
    expect(parseAttachRequest(body(null)).pod).toBeUndefined();
    expect('pod' in parseAttachRequest(body())).toBe(false);
  });

  it.each([
    ['not an object', 'x', 'pod'],
    ['no uid', { name: 'web-0' }, 'pod.uid'],
    ['uid not a UUID', { uid: 'web-0' }, 'pod.uid'],
    ['uid not a string', { uid: 7 }, 'pod.uid'],
    ['name with capitals', { uid: UID, name: 'Web' }, 'pod.name'],
    ['name too long', { uid: UID, name: 'a'.repeat(254) }, 'pod.name'],
    ['name with "_"', { uid: UID, name: 'a_b' }, 'pod.name'],
    ['namespace with "."', { uid: UID, namespace: 'a.b' }, 'pod.namespace'],
    ['namespace too long', { uid: UID, namespace: 'a'.repeat(64) }, 'pod.namespace'],
    ['namespace ending in "-"', { uid: UID, namespace: 'a-' }, 'pod.namespace'],
    ['an unknown field', { uid: UID, podName: 'x' }, 'pod.podName'],
  ])('rejects %s, naming the field', (_why, pod, field) => {
    const err = rejection(pod);
    expect(err.field).toBe(field);
    expect(err.message.startsWith(`${field}: `)).toBe(true);
  });

  it('accepts a 253-character name and a 63-character namespace', () => {
    const name = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}`;
    expect(name).toHaveLength(253);
    const pod = parseAttachRequest(body({ uid: UID, name, namespace: 'n'.repeat(63) })).pod;
    expect(pod?.name).toBe(name);
  });

  it('is not part of the spec: same fingerprint with or without it, not in the stored spec', () => {
    const without = parseAttachRequest(body());
    const withPod = parseAttachRequest(body({ uid: UID, name: 'web-0', namespace: 'shop' }));
    const otherPod = parseAttachRequest(body({ uid: '00000000-0000-4000-8000-000000000001' }));
    expect(specFingerprint(withPod, FP_KEY)).toBe(specFingerprint(without, FP_KEY));
    expect(specFingerprint(otherPod, FP_KEY)).toBe(specFingerprint(without, FP_KEY));
    expect(toStoredSpec(withPod)).toEqual(toStoredSpec(without));
    expect('pod' in toStoredSpec(withPod)).toBe(false);
  });
});

describe('journal record pod', () => {
  let stateDir: string;
  let journal: Journal;
  const sb = parseSandboxId('sb-pod');
  const vol = parseVolumeId('pvc-pod');

  beforeEach(async () => {
    stateDir = await mkdtemp(join(tmpdir(), 'vmplug-pod-'));
    journal = new Journal({ stateDir, logger: { warn: () => {}, error: () => {} } });
  });
  afterEach(async () => {
    await rm(stateDir, { recursive: true, force: true });
  });

  function record(pod?: unknown) {
    const spec = parseAttachRequest(body(pod));
    return newRecord({
      sandboxId: sb,
      volumeId: vol,
      kind: 'kata',
      spec: toStoredSpec(spec),
      fingerprint: specFingerprint(spec, FP_KEY),
      bus: 'virtio-blk',
      ...(spec.pod !== undefined ? { pod: spec.pod } : {}),
    });
  }

  it('is stored, loaded back and shown in the Attachment', async () => {
    const r = record({ uid: UID, name: 'web-0', namespace: 'shop' });
    await journal.save(r);
    const loaded = await journal.load(sb, vol);
    expect(loaded?.pod).toEqual({ uid: UID, name: 'web-0', namespace: 'shop' });
    expect(loaded && attachmentFromRecord(loaded).pod).toEqual({
      uid: UID,
      name: 'web-0',
      namespace: 'shop',
    });
  });

  it('a record written before pods existed (no `pod` field) still loads, with no pod', async () => {
    const r = record();
    const old = JSON.parse(JSON.stringify(r)) as Record<string, unknown>;
    expect('pod' in old).toBe(false);
    await mkdir(join(stateDir, 'journal', sb), { recursive: true });
    await writeFile(journal.pathOf(sb, vol), JSON.stringify(old), { mode: 0o600 });
    const loaded = await journal.load(sb, vol);
    expect(loaded).toEqual(r);
    expect(loaded && 'pod' in attachmentFromRecord(loaded)).toBe(false);
  });

  it('a record with a bad pod is corrupt (quarantined like any other bad field)', async () => {
    const r = { ...record(), pod: { uid: 'nope' } };
    await mkdir(join(stateDir, 'journal', sb), { recursive: true });
    await writeFile(journal.pathOf(sb, vol), JSON.stringify(r), { mode: 0o600 });
    expect(await journal.load(sb, vol)).toBeUndefined();
    expect(await journal.quarantined(sb)).toHaveLength(1);
  });
});
