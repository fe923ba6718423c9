import type { PodVolume, PodVolumeState } from '../../api/index.js';
import { attachmentSource } from '../attach-service.js';
import type { RecordOnDisk } from './dav.js';
import type { PodRecord } from './journal.js';

// What GET answers for a pod volume. `state` is what a CSI plugin or an operator acts on:
//   Published   record written (ours, intact) and backend ready
//   Consumed    as Published, and Kata has plugged it: `sandboxId` names the sandbox
//   Publishing / Unpublishing   an operation is running, or was cut short and awaits reconcile
//   Failed      `problem` says why: the publish failed and was rolled back, or the record of a
//               Published volume is missing or was replaced by someone else
// `step` is the journal state underneath.

export function podVolumeView(
  r: PodRecord,
  seen: { onDisk?: RecordOnDisk | undefined; sandboxId?: string | undefined },
): PodVolume {
  const v = r.spec.volume;
  let state: PodVolumeState;
  let problem: PodVolume['problem'];
  switch (r.state) {
    case 'Publishing':
    case 'BackendReady':
      state = 'Publishing';
      break;
    case 'Published':
      state = seen.sandboxId !== undefined ? 'Consumed' : 'Published';
      if (seen.onDisk?.kind === 'absent') {
        state = 'Failed';
        problem = {
          code: 'RECORD_MISSING',
          detail: `the Kata record ${r.recordPath} is gone; the reconcile writes it again`,
        };
      } else if (
        seen.onDisk !== undefined &&
        (seen.onDisk.kind !== 'file' || seen.onDisk.hash !== r.recordHash)
      ) {
        state = 'Failed';
        problem = {
          code: 'RECORD_FOREIGN',
          detail: `the Kata record ${r.recordPath} was replaced by one vmplug did not write`,
        };
      }
      break;
    case 'Failed':
      state = 'Failed';
      problem = {
        code: r.lastError?.code ?? 'BACKEND_FAILED',
        detail: r.lastError?.message ?? 'the publish failed',
        ...(r.lastError?.at !== undefined ? { at: r.lastError.at } : {}),
      };
      break;
    default:
      state = 'Unpublishing';
  }
  const out: PodVolume = {
    podUid: r.podUid,
    volumeId: r.volumeId,
    mode: v.mode,
    state,
    step: r.state,
    targetPath: r.spec.targetPath,
    recordPath: r.recordPath,
    fsType: r.spec.fsType,
    readOnly: v.readOnly,
    mountOptions: [...r.spec.mountOptions],
    source: attachmentSource(v),
    timeline: r.timeline.map((t) => ({ ...t })),
  };
  if (state === 'Consumed' && seen.sandboxId !== undefined) out.sandboxId = seen.sandboxId;
  if (r.device !== undefined) out.device = r.device;
  if (r.pod !== undefined) out.pod = { ...r.pod };
  if (problem !== undefined) out.problem = problem;
  return out;
}
