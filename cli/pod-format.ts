import type { PodVolume } from '../api/index.js';
import { table } from './format.js';

// Human output of the pod-volume commands.

export function publishedLine(v: PodVolume, created: boolean): string {
  return `${created ? 'published' : 'already published'} ${v.volumeId} for pod ${v.podUid}: ${v.mode} ${v.device ?? '-'} (${v.fsType}) -> ${v.recordPath}\n`;
}

export function podVolumeTable(volumes: PodVolume[]): string {
  if (volumes.length === 0) return 'no pod volumes\n';
  return table(
    ['POD VOLUME', 'MODE', 'STATE', 'SANDBOX', 'DEVICE', 'TARGET'],
    volumes.map((v) => [
      v.volumeId,
      v.mode,
      v.problem !== undefined ? `${v.state} (${v.problem.code})` : v.state,
      v.sandboxId ?? '-',
      v.device ?? '-',
      v.targetPath,
    ]),
  );
}
