import { join } from 'node:path';

/** Every file a test cluster owns, all under one directory (nothing in /etc, /var/lib, /run). */
export interface CephLayout {
  dir: string;
  confPath: string;
  monmapPath: string;
  monKeyring: string;
  adminKeyring: string;
  clientKeyring: string;
  osdKeyring: string;
  mgrKeyring: string;
  monData: string;
  osdData: string;
  /** bluestore's block file: outside osdData, or bluestore links `block` to itself. */
  osdBlock: string;
  mgrData: string;
  runDir: string;
  logDir: string;
  crashDir: string;
  /** Marks the directory as a test cluster's, so sweeping never touches anything else. */
  markerPath: string;
  /** Pid of the process whose death should take the cluster down with it (absent: nobody's). */
  ownerPath: string;
  /** The descriptor, for `ceph.ts stop <dir>` and for sweeping. */
  descriptorPath: string;
}

export const monId = 'a';
export const osdId = 0;
export const mgrId = 'x';
export const markerName = 'vmplug-test-ceph';

export function layoutOf(dir: string): CephLayout {
  return {
    dir,
    confPath: join(dir, 'ceph.conf'),
    monmapPath: join(dir, 'monmap'),
    monKeyring: join(dir, 'mon.keyring'),
    adminKeyring: join(dir, 'client.admin.keyring'),
    clientKeyring: join(dir, 'client.vmplug.keyring'),
    osdKeyring: join(dir, `osd.${osdId}.keyring`),
    mgrKeyring: join(dir, `mgr.${mgrId}.keyring`),
    monData: join(dir, 'mon', monId),
    osdData: join(dir, 'osd', String(osdId)),
    osdBlock: join(dir, `osd.${osdId}.block`),
    mgrData: join(dir, 'mgr', mgrId),
    runDir: join(dir, 'run'),
    logDir: join(dir, 'log'),
    crashDir: join(dir, 'crash'),
    markerPath: join(dir, markerName),
    ownerPath: join(dir, 'owner.pid'),
    descriptorPath: join(dir, 'descriptor.json'),
  };
}
