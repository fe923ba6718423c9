import { randomBytes } from 'node:crypto';
import { fstatSync } from 'node:fs';
import { chmod, chown, link, lstat, mkdir, readFile, unlink } from 'node:fs/promises';
import { connect } from 'node:net';
import { basename, dirname, join } from 'node:path';
import type { Logger } from '../logger.js';
import type { VmplugServer } from './server.js';

// Puts the REST API on its unix socket. The socket is bound under a temporary name, given its
// mode and group, and only then linked to its real path, so no client ever sees it with the
// wrong permissions and two daemons starting at once cannot both take the path (link(2) fails
// when the name exists). A socket file left by a dead daemon is removed only after nobody
// answered on it.

export type SocketSetupCode =
  | 'ALREADY_RUNNING'
  | 'SOCKET_PATH_OCCUPIED'
  | 'SOCKET_GROUP_UNKNOWN'
  | 'INHERITED_SOCKET_INVALID';

export class SocketSetupError extends Error {
  constructor(
    readonly code: SocketSetupCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'SocketSetupError';
  }
}

export interface UnixSocketOptions {
  path: string;
  mode: number;
  /** Group name or gid to give the socket to; null keeps the process's group. */
  group: string | number | null;
  log: Logger;
  /** How long to wait for an answer on an existing socket before calling it stale. */
  probeTimeoutMs?: number;
  /** Where group names are looked up. */
  groupFile?: string;
}

export interface UnixListener {
  path: string;
  /** Closes the server (in-flight requests finish) and removes the socket if it is still ours. */
  close(): Promise<void>;
}

export async function listenOnUnixSocket(app: VmplugServer, opts: UnixSocketOptions): Promise<UnixListener> {
  const gid = opts.group === null ? null : await resolveGroup(opts.group, opts.groupFile ?? '/etc/group');
  const dir = dirname(opts.path);
  await mkdir(dir, { recursive: true, mode: 0o755 });
  await removeStaleSocket(opts.path, opts.probeTimeoutMs ?? 1_000, opts.log);

  const temp = join(dir, `.${basename(opts.path)}.${randomBytes(3).toString('hex')}`);
  await app.listen({
    path: temp,
    listenTextResolver: (address) => `bound ${address}, to be linked to ${opts.path}`,
  });
  let identity: { dev: number; ino: number };
  try {
    await chmod(temp, opts.mode);
    if (gid !== null) await chown(temp, -1, gid);
    try {
      await link(temp, opts.path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new SocketSetupError(
          'ALREADY_RUNNING',
          `${opts.path}: another vmplugd took the socket path meanwhile`,
        );
      }
      throw err;
    }
    const st = await lstat(opts.path);
    identity = { dev: st.dev, ino: st.ino };
  } catch (err) {
    await app.close();
    throw err;
  } finally {
    await unlink(temp).catch(() => {});
  }

  opts.log.info(
    { socket: opts.path, mode: `0${opts.mode.toString(8)}`, gid: gid ?? undefined },
    'listening on unix socket',
  );
  return {
    path: opts.path,
    close: async () => {
      await app.close();
      // Only our own inode: a newer daemon may already have replaced the path.
      const st = await lstat(opts.path).catch(() => undefined);
      if (st !== undefined && st.dev === identity.dev && st.ino === identity.ino) {
        await unlink(opts.path).catch(() => {});
      }
    },
  };
}

/**
 * Serves on a listening socket systemd passed (socket activation). systemd created it with the
 * unit's SocketMode/SocketGroup and owns its path: vmplugd neither changes its permissions nor
 * removes it at shutdown, so the next start (or a connection queued meanwhile) finds it intact.
 * `path` is what --socket says, shown in logs only.
 */
export async function listenOnInheritedSocket(
  app: VmplugServer,
  opts: { fd: number; path: string; log: Logger },
): Promise<UnixListener> {
  let isSocket = false;
  try {
    isSocket = fstatSync(opts.fd).isSocket();
  } catch {
    // EBADF: nothing there
  }
  if (!isSocket) {
    throw new SocketSetupError(
      'INHERITED_SOCKET_INVALID',
      `LISTEN_FDS says fd ${opts.fd} is a socket systemd passed, but it is not an open socket`,
    );
  }
  // fastify's own listen() cannot log an fd-backed server (it has no address): route registration
  // is finished by ready(), then the http server takes the fd directly. fastify's close() closes it.
  await app.ready();
  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    app.server.once('error', onError);
    app.server.listen({ fd: opts.fd }, () => {
      app.server.off('error', onError);
      resolve();
    });
  });
  opts.log.info({ socket: opts.path, fd: opts.fd }, 'listening on the socket passed by systemd');
  return { path: opts.path, close: () => app.close() };
}

/**
 * Removes `path` if it is a socket nobody answers on. A live socket means another vmplugd runs; a
 * file of any other kind is left alone (it is not ours to delete).
 */
export async function removeStaleSocket(path: string, probeTimeoutMs: number, log: Logger): Promise<void> {
  const st = await lstat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (st === undefined) return;
  if (!st.isSocket()) {
    throw new SocketSetupError(
      'SOCKET_PATH_OCCUPIED',
      `${path} exists and is not a socket; refusing to remove it (move it away or choose another --socket)`,
    );
  }
  const answered = await probe(path, probeTimeoutMs);
  if (answered) {
    throw new SocketSetupError(
      'ALREADY_RUNNING',
      `${path}: another vmplugd is already running on this socket`,
    );
  }
  await unlink(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
  log.info({ socket: path }, 'removed a stale socket file left by a previous vmplugd');
}

/**
 * True when something accepts connections on the socket. ECONNREFUSED (nobody bound) and ENOENT
 * mean stale; a connection that neither opens nor fails in time (a wedged daemon with a full
 * backlog) counts as live, so a hung daemon is never replaced behind its back.
 */
function probe(path: string, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const socket = connect({ path });
    const timer = setTimeout(() => finish(true), timeoutMs);
    const finish = (live: boolean, err?: Error): void => {
      clearTimeout(timer);
      socket.destroy();
      if (err !== undefined) reject(err);
      else resolve(live);
    };
    socket.once('connect', () => finish(true));
    socket.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNREFUSED' || err.code === 'ENOENT') finish(false);
      else finish(false, err);
    });
  });
}

/** A gid from a number or a group name in /etc/group (Node has no getgrnam). */
export async function resolveGroup(group: string | number, groupFile: string): Promise<number> {
  if (typeof group === 'number') return group;
  const text = await readFile(groupFile, { encoding: 'utf8', signal: AbortSignal.timeout(5_000) });
  for (const line of text.split('\n')) {
    const [name, , gid] = line.split(':');
    if (name === group && gid !== undefined && /^[0-9]+$/.test(gid)) return Number(gid);
  }
  throw new SocketSetupError('SOCKET_GROUP_UNKNOWN', `socket group "${group}" is not in ${groupFile}`);
}
