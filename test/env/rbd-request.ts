import type { AttachRequest, RbdSourceRequest } from '../../api/index.js';
import type { CephDescriptor } from './ceph.js';

// The rbd attach request against the test cluster, spelled once: what a CSI plugin sends for
// `image` with client.vmplug's key. Tests change only what they are about.

/** The rbd source for `image` on this cluster; `over` replaces fields (a wrong key, other monitors). */
export function rbdSource(
  ceph: CephDescriptor,
  image: string,
  over: Partial<Omit<RbdSourceRequest, 'type'>> = {},
): RbdSourceRequest {
  return {
    type: 'rbd',
    pool: ceph.pool,
    image,
    monitors: ceph.monitors,
    user: ceph.clientUser,
    key: ceph.clientKey,
    ...over,
  };
}

/** A whole attach request body in rbd mode; `extra` adds or replaces top-level fields. */
export function rbdRequest(
  ceph: CephDescriptor,
  image: string,
  extra: Partial<Omit<AttachRequest, 'source'>> = {},
): AttachRequest {
  return { mode: 'rbd', source: rbdSource(ceph, image), ...extra };
}
