import { parseSandboxId, parseVolumeId } from '../../core/ids.js';
import type { QmpClient } from '../../qmp/index.js';
import { volumeNames } from '../../storage/naming.js';

// What vmplug owns in a sandbox's QEMU, read through the test-only inspect monitor
// (startKataSandbox({ inspectMonitor: true })) while vmplugd holds the private one.

/** Every vmplug-named block node, device and object (vmp-, vmpf-, vmpd-, vmps- prefixes). */
export async function vmplugObjects(qmp: QmpClient): Promise<string[]> {
  const nodes = (await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes')).map(
    (n) => n['node-name'],
  );
  const devices = (await qmp.execute<{ name: string }[]>('qom-list', { path: '/machine/peripheral' })).map(
    (p) => p.name,
  );
  const objects = (await qmp.execute<{ name: string }[]>('qom-list', { path: '/objects' })).map(
    (p) => p.name,
  );
  return [...nodes, ...devices, ...objects].filter((n) => /^vmp[fds]?-/.test(n)).sort();
}

/** The objects vmplug made for one volume (its names are a hash of the sandbox and volume ids). */
export async function objectsOf(qmp: QmpClient, sandboxId: string, volumeId: string): Promise<string[]> {
  const n = volumeNames(parseSandboxId(sandboxId), parseVolumeId(volumeId));
  const mine = new Set([n.node, n.format, n.device, n.secret]);
  return (await vmplugObjects(qmp)).filter((o) => mine.has(o));
}
