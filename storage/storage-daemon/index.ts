// The storage-daemon backend's public face: what the pod-volume engine and the hot-attach
// router use. Everything else in this directory is its inside.

export { LAUNCHERS, type Launcher } from './argv.js';
export {
  createStorageDaemonBackend,
  DEFAULT_QSD_BINARY,
  DEFAULT_VHOST_USER_STORE,
  type StorageDaemonBackendOptions,
} from './backend.js';
export { HostCgroups } from './host-cgroup.js';
export { exportKey, exportNameOf, VHOST_USER_BLK_MAJOR } from './naming.js';
export type * from './types.js';
