import { type CephLayout, mgrId, monId, osdId } from './layout.js';

export interface ConfInput {
  layout: CephLayout;
  fsid: string;
  monPort: number;
  /** Bytes of the sparse bluestore file. */
  osdBlockBytes: number;
}

/**
 * ceph.conf for a one-node cluster. Every path a daemon or client could default to under /etc,
 * /var/lib, /var/run or /var/log is set explicitly; clients get no admin socket and no log file
 * at all, so concurrent CLI calls and QEMU never write anywhere.
 */
export function renderConf({ layout: l, fsid, monPort, osdBlockBytes }: ConfInput): string {
  const lines = [
    '[global]',
    `fsid = ${fsid}`,
    // Only msgr2 on one free port; a client given "127.0.0.1:<port>" tries v2 and v1 there.
    `mon host = [v2:127.0.0.1:${monPort}]`,
    'public addr = 127.0.0.1',
    'cluster addr = 127.0.0.1',
    'ms bind msgr1 = false',
    'auth cluster required = cephx',
    'auth service required = cephx',
    'auth client required = cephx',
    'auth allow insecure global id reclaim = false',
    `run dir = ${l.runDir}`,
    `crash dir = ${l.crashDir}`,
    // Clients: no admin socket, logs nowhere (the CLI would otherwise try /var/log/ceph).
    'admin socket =',
    'log file =',
    'log to stderr = false',
    'err to stderr = true',
    'osd pool default size = 1',
    'osd pool default min size = 1',
    'osd pool default pg autoscale mode = off',
    'mon allow pool size one = true',
    'mon allow pool delete = true',
    'mon warn on pool no redundancy = false',
    'osd crush chooseleaf type = 0',
    'mon data avail warn = 1',
    'mon data avail crit = 0',
    // Daemons report to the mgr every second (default 5 s): "all PGs active+clean" is seen sooner.
    'mgr stats period = 1',
    'mgr tick period = 1',
    // One mon has nobody to batch proposals with: commit map changes at once, not once a second.
    'paxos propose interval = 0.05',
    'paxos min wait = 0.01',
    '',
    // Daemons: their own keyrings (never the admin one), sockets, logs and pid files in the dir.
    '[mon]',
    `mon data = ${l.dir}/mon/$id`,
    `mon cluster log file = ${l.logDir}/cluster.log`,
    // A taken port should fail the start in about a second (and be retried), not after 15 s.
    'ms bind retry count = 2',
    'ms bind retry delay = 1',
    `admin socket = ${l.runDir}/$name.asok`,
    `log file = ${l.logDir}/$name.log`,
    `pid file = ${l.runDir}/$name.pid`,
    '',
    `[mon.${monId}]`,
    `keyring = ${l.monKeyring}`,
    '',
    '[osd]',
    `osd data = ${l.dir}/osd/$id`,
    'osd objectstore = bluestore',
    'bluestore block create = true',
    `bluestore block size = ${osdBlockBytes}`,
    'bluestore fsck on mount = false',
    'osd crush update on start = true',
    // Small caches: this OSD serves a handful of test images.
    'osd memory target = 939524096',
    `admin socket = ${l.runDir}/$name.asok`,
    `log file = ${l.logDir}/$name.log`,
    `pid file = ${l.runDir}/$name.pid`,
    '',
    `[osd.${osdId}]`,
    `keyring = ${l.osdKeyring}`,
    `bluestore block path = ${l.osdBlock}`,
    '',
    '[mgr]',
    `mgr data = ${l.dir}/mgr/$id`,
    `admin socket = ${l.runDir}/$name.asok`,
    `log file = ${l.logDir}/$name.log`,
    `pid file = ${l.runDir}/$name.pid`,
    '',
    `[mgr.${mgrId}]`,
    `keyring = ${l.mgrKeyring}`,
    '',
    // A client whose mon is gone fails in seconds, not librados' default 300 s.
    '[client]',
    'client mount timeout = 20',
    '',
    '[client.admin]',
    `keyring = ${l.adminKeyring}`,
    '',
    '[client.vmplug]',
    `keyring = ${l.clientKeyring}`,
    '',
  ];
  return lines.join('\n');
}
