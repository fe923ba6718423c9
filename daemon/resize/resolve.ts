import type { SandboxDirectory } from '../../storage/sandbox-directory.js';
import type { SandboxResolver } from '../volumes/attach-router.js';
import { LibvirtResizer } from './libvirt-resizer.js';
import { QmpResizer } from './qmp-resizer.js';
import type { ResolveResizer } from './service.js';

// Which resizer serves a sandbox: a Kata sandbox by its private monitor (discovery's live
// session), a libvirt domain through the daemon's libvirt connection. Resizers hold no state
// of their own, so one is made per request.

export function resizerResolver(kata: SandboxDirectory, resolveSandbox?: SandboxResolver): ResolveResizer {
  return (id) => {
    const found = resolveSandbox?.(id) ?? { kind: 'kata' as const, id };
    if (found.kind === 'libvirt')
      return { state: 'present', resizer: new LibvirtResizer(found.connection, found.uuid) };
    const presence = kata.lookup(id);
    if (presence.state === 'present')
      return { state: 'present', resizer: new QmpResizer(presence.sandbox.qmp) };
    return presence;
  };
}
