import { createHash } from 'node:crypto';
import type { PodUid, VolumeId } from '../../core/ids.js';
import type { ExportKey } from '../storage-daemon/types.js';

/**
 * The storage-daemon export of a pod volume: a name stable for (pod, volume), so a restarted
 * vmplugd finds the same daemon; `vmpx-` + 24 hex digits ([a-z0-9-], 29 characters, within the
 * contract's 40). The prefix keeps it apart from the QEMU names of storage/naming.ts.
 */
export function exportKeyOf(podUid: PodUid, volumeId: VolumeId): ExportKey {
  const h = createHash('sha256').update(`pod\0${podUid}\0${volumeId}`).digest('hex');
  return { name: `vmpx-${h.slice(0, 24)}` };
}
