import { closeSync, openSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { VmplugServer } from '../../../daemon/http/server.js';
import { listenOnInheritedSocket } from '../../../daemon/http/unix-socket.js';
import { createLogger } from '../../../daemon/logger.js';
import { systemdFromEnv } from '../../../daemon/main.js';
import { ListenFdsError, parseListenFds } from '../../../systemd/listen-fds.js';

describe('parseListenFds', () => {
  it('finds nothing without LISTEN_FDS or LISTEN_PID, or when they are for another process', () => {
    expect(parseListenFds({}, 42)).toEqual({ kind: 'none' });
    expect(parseListenFds({ LISTEN_FDS: '1' }, 42)).toEqual({ kind: 'none' });
    expect(parseListenFds({ LISTEN_PID: '42' }, 42)).toEqual({ kind: 'none' });
    expect(parseListenFds({ LISTEN_FDS: '1', LISTEN_PID: '41' }, 42)).toEqual({ kind: 'none' });
    expect(parseListenFds({ LISTEN_FDS: '0', LISTEN_PID: '42' }, 42)).toEqual({ kind: 'none' });
  });

  it('numbers the fds from 3 and names them from LISTEN_FDNAMES', () => {
    expect(parseListenFds({ LISTEN_FDS: '1', LISTEN_PID: '42' }, 42)).toEqual({
      kind: 'inherited',
      fds: [3],
      names: ['unknown'],
    });
    expect(
      parseListenFds({ LISTEN_FDS: '2', LISTEN_PID: '42', LISTEN_FDNAMES: 'vmplugd.socket:other' }, 42),
    ).toEqual({ kind: 'inherited', fds: [3, 4], names: ['vmplugd.socket', 'other'] });
  });

  it('refuses malformed values rather than silently binding its own socket', () => {
    expect(() => parseListenFds({ LISTEN_FDS: 'one', LISTEN_PID: '42' }, 42)).toThrow(ListenFdsError);
    expect(() => parseListenFds({ LISTEN_FDS: '1', LISTEN_PID: '-42' }, 42)).toThrow(ListenFdsError);
  });
});

describe('systemdFromEnv', () => {
  const logger = createLogger({ level: 'silent' });

  it('is empty outside systemd', () => {
    expect(systemdFromEnv({}, logger, 42)).toEqual({});
  });

  it('takes the one socket systemd passed, and a notifier when NOTIFY_SOCKET is set', () => {
    const r = systemdFromEnv({ LISTEN_FDS: '1', LISTEN_PID: '42', NOTIFY_SOCKET: '/run/n' }, logger, 42);
    if (r instanceof Error) throw r;
    expect(r.inheritedSocketFd).toBe(3);
    expect(r.notifier).toBeDefined();
    r.notifier?.close();
  });

  it('refuses more than one passed socket and malformed values', () => {
    expect(systemdFromEnv({ LISTEN_FDS: '2', LISTEN_PID: '42' }, logger, 42)).toBeInstanceOf(ListenFdsError);
    expect(systemdFromEnv({ NOTIFY_SOCKET: '/n', WATCHDOG_USEC: 'x' }, logger, 42)).toBeInstanceOf(Error);
  });
});

describe('listenOnInheritedSocket', () => {
  const log = createLogger({ level: 'silent' });
  // Refused before the server is touched.
  const app = {} as VmplugServer;

  it('refuses an fd that is not an open socket (a unit passing the wrong thing must fail loudly)', async () => {
    const fd = openSync('/dev/null', 'r');
    try {
      await expect(listenOnInheritedSocket(app, { fd, path: '/run/x.sock', log })).rejects.toMatchObject({
        code: 'INHERITED_SOCKET_INVALID',
      });
    } finally {
      closeSync(fd);
    }
    await expect(listenOnInheritedSocket(app, { fd: 4000, path: '/run/x.sock', log })).rejects.toMatchObject({
      code: 'INHERITED_SOCKET_INVALID',
    });
  });
});
