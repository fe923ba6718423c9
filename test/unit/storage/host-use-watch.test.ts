import { describe, expect, it } from 'vitest';
import { DeviceInUseError, DeviceNotAllowedError, ValidationError } from '../../../core/errors.js';
import { parseSandboxId, parseVolumeId } from '../../../core/ids.js';
import { attachmentFromRecord } from '../../../storage/attach-service.js';
import { HostUseWatch } from '../../../storage/host-use-watch.js';
import { type JournalRecord, newRecord } from '../../../storage/journal.js';
import { MemoryLog } from './engine-helpers.js';

function attached(vol: string, path: string, mode: 'block' | 'rbd' = 'block'): JournalRecord {
  const spec =
    mode === 'block'
      ? ({ mode: 'block', source: { type: 'hostDevice', path }, readOnly: false, bus: 'scsi' } as const)
      : ({
          mode: 'rbd',
          source: { type: 'rbd', pool: 'p', image: 'i', monitors: [], user: 'u' },
          readOnly: false,
          bus: 'scsi',
        } as unknown as JournalRecord['spec']);
  const r = newRecord({
    sandboxId: parseSandboxId('sb1'),
    volumeId: parseVolumeId(vol),
    kind: 'kata',
    spec,
    fingerprint: 'f',
    bus: 'scsi',
  });
  return { ...r, state: 'Attached' };
}

describe('HostUseWatch', () => {
  it('reports a device the host took as a HostInUse condition, keeps its first time, clears it when freed', async () => {
    const busy = new Map<string, Error>();
    const checked: string[] = [];
    const watch = new HostUseWatch(async (path) => {
      checked.push(path);
      const e = busy.get(path);
      if (e) throw e;
      return path;
    });
    const log = new MemoryLog();
    const signal = new AbortController().signal;
    const a = attached('va', '/dev/loop1');
    const b = attached('vb', '/dev/loop2');
    const c = attached('vc', '', 'rbd');
    const pending = { ...attached('vd', '/dev/loop4'), state: 'Pending' as const };

    await watch.sweep([a, b, c, pending], log, signal);
    expect(checked).toEqual(['/dev/loop1', '/dev/loop2']);
    expect(watch.decorate(attachmentFromRecord(a))).not.toHaveProperty('conditions');

    busy.set('/dev/loop1', new DeviceInUseError('source.path', '/dev/loop1 is mounted on /mnt'));
    busy.set('/dev/loop2', new DeviceNotAllowedError('source.path', 'not in allowedDevices'));
    await watch.sweep([a, b], log, signal);
    const first = watch.decorate(attachmentFromRecord(a)).conditions;
    expect(first).toEqual([
      {
        type: 'HostInUse',
        code: 'DEVICE_IN_USE',
        message: 'source.path: /dev/loop1 is mounted on /mnt',
        since: expect.any(String),
      },
    ]);
    expect(watch.decorate(attachmentFromRecord(b)).conditions?.[0]?.code).toBe('DEVICE_NOT_ALLOWED');
    expect(log.lines.filter((l) => l.includes(`"hostInUse":true`))).toHaveLength(2);

    // Same finding again: same condition, no new warning.
    await watch.sweep([a, b], log, signal);
    expect(watch.decorate(attachmentFromRecord(a)).conditions).toEqual(first);
    expect(log.lines.filter((l) => l.includes(`"hostInUse":true`))).toHaveLength(2);

    // A check that cannot tell (device vanished) leaves the condition as it was.
    busy.set('/dev/loop1', new ValidationError('source.path', 'gone'));
    await watch.sweep([a, b], log, signal);
    expect(watch.decorate(attachmentFromRecord(a)).conditions).toEqual(first);

    busy.delete('/dev/loop1');
    await watch.sweep([a], log, signal);
    expect(watch.decorate(attachmentFromRecord(a))).not.toHaveProperty('conditions');
    // b is no longer attached: forgotten.
    expect(watch.decorate(attachmentFromRecord(b))).not.toHaveProperty('conditions');
  });
});
