import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';

// Who is on the other end of a unix-socket connection: uid, gid and pid as the kernel recorded
// them at connect() (SO_PEERCRED). Node has no API for it, so a tiny addon does the getsockopt
// (libvirt/native/src/peercred.cc, built with the libvirt addon). The alternative, matching the
// socket's inode in /proc/net/unix to a peer and then scanning every /proc/<pid>/fd, costs a walk
// of all processes per connection and races with short-lived clients; SO_PEERCRED is one syscall.

export interface PeerCredentials {
  uid: number;
  gid: number;
  pid: number;
}

export type PeerCredentialsReader = (socket: Socket) => PeerCredentials | { error: string };

interface Addon {
  peerCred(fd: number): PeerCredentials;
}

function candidates(): string[] {
  const rel = 'libvirt/native/build/Release/vmplug_peercred.node';
  const fromEnv = process.env.VMPLUG_PEERCRED_ADDON;
  return [
    ...(fromEnv ? [fromEnv] : []),
    // Sources (daemon/http/) and dist/daemon/http/.
    fileURLToPath(new URL(`../../${rel}`, import.meta.url)),
    fileURLToPath(new URL(`../../../${rel}`, import.meta.url)),
  ];
}

/** The reader, or the reason there is none (addon not built: audit lines then say so). */
export function loadPeerCredentials(): { read: PeerCredentialsReader } | { missing: string } {
  const require = createRequire(import.meta.url);
  for (const path of candidates()) {
    let addon: Addon;
    try {
      addon = require(path) as Addon;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND') continue;
      return { missing: `cannot load ${path}: ${(err as Error).message}` };
    }
    return { read: (socket) => readWith(addon, socket) };
  }
  return { missing: 'the peer-credentials addon is not built (npm run build:libvirt)' };
}

function readWith(addon: Addon, socket: Socket): PeerCredentials | { error: string } {
  // The accepted connection's fd: a libuv pipe handle exposes it (Linux).
  const fd = (socket as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return { error: 'the connection has no file descriptor' };
  try {
    return addon.peerCred(fd);
  } catch (err) {
    return { error: String((err as { code?: unknown }).code ?? (err as Error).message) };
  }
}
