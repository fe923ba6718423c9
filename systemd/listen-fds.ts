// Socket activation (sd_listen_fds(3)): systemd passes listening sockets from fd 3 on and says so
// in LISTEN_FDS, LISTEN_PID (the pid they are for: set in the child after fork, so an inherited
// environment of some other process is never mistaken for ours) and LISTEN_FDNAMES. This module
// imports nothing of vmplug's.

export const SD_LISTEN_FDS_START = 3;

export type ListenFds =
  | { kind: 'none' }
  /** fds from SD_LISTEN_FDS_START on, with their names (FileDescriptorName=, or "unknown"). */
  | { kind: 'inherited'; fds: number[]; names: string[] };

export class ListenFdsError extends Error {
  readonly code = 'SYSTEMD_ENV_INVALID';

  constructor(message: string) {
    super(message);
    this.name = 'ListenFdsError';
  }
}

/**
 * The sockets systemd passed to this process. LISTEN_FDS unset or LISTEN_PID unset or naming
 * another process means none (as sd_listen_fds does); a malformed value is an error, since a unit
 * that meant to pass a socket must not silently end up with a daemon binding its own.
 */
export function parseListenFds(env: Readonly<Record<string, string | undefined>>, pid: number): ListenFds {
  const count = env.LISTEN_FDS;
  const forPid = env.LISTEN_PID;
  if (count === undefined || count === '' || forPid === undefined || forPid === '') return { kind: 'none' };
  if (!/^[0-9]{1,9}$/.test(forPid)) throw new ListenFdsError(`LISTEN_PID must be a pid (got "${forPid}")`);
  if (Number(forPid) !== pid) return { kind: 'none' };
  if (!/^[0-9]{1,4}$/.test(count)) throw new ListenFdsError(`LISTEN_FDS must be a count (got "${count}")`);
  const n = Number(count);
  if (n === 0) return { kind: 'none' };
  const fds = Array.from({ length: n }, (_, i) => SD_LISTEN_FDS_START + i);
  const given =
    env.LISTEN_FDNAMES === undefined || env.LISTEN_FDNAMES === '' ? [] : env.LISTEN_FDNAMES.split(':');
  const names = fds.map((_, i) => given[i] ?? 'unknown');
  return { kind: 'inherited', fds, names };
}

/** The variables to drop once consumed, so processes vmplugd starts do not think the fds are theirs. */
export const LISTEN_ENV_KEYS = ['LISTEN_FDS', 'LISTEN_PID', 'LISTEN_FDNAMES'] as const;
