import { mkdtemp, rm } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { AuditOptions } from '../../../daemon/http/audit.js';
import { buildServer, type VmplugServer } from '../../../daemon/http/server.js';
import { FakeAttachService, memoryLogger } from './helpers.js';

// The audit line of every mutating request, with the caller's SO_PEERCRED credentials read by the
// peer-credentials addon (built with the libvirt addon) on a real unix socket.

function call(socketPath: string, method: string, path: string, body?: unknown): Promise<number> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const req = request(
      { socketPath, method, path, headers: payload ? { 'content-type': 'application/json' } : {} },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

describe('audit of mutating requests', () => {
  let dir: string | undefined;
  let app: VmplugServer | undefined;

  afterEach(async () => {
    await app?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function serve(audit?: AuditOptions) {
    dir = await mkdtemp(join(tmpdir(), 'vmp-audit-'));
    const log = memoryLogger();
    app = await buildServer({
      logger: log.logger,
      attachService: new FakeAttachService(),
      readiness: () => ({ ready: true, checks: {} }) as never,
      ...(audit !== undefined ? { audit } : {}),
    });
    const socketPath = join(dir, 's.sock');
    await app.listen({ path: socketPath });
    return { socketPath, log };
  }

  it("logs PUT and DELETE with the caller's uid, gid and pid; GET is not audited", async () => {
    const { socketPath, log } = await serve();
    const body = { mode: 'block', source: { type: 'hostDevice', path: '/dev/rbd0' } };
    await call(socketPath, 'PUT', '/v1/sandboxes/sb1/volumes/v1', body);
    await call(socketPath, 'GET', '/v1/sandboxes/sb1/volumes/v1');
    await call(socketPath, 'DELETE', '/v1/sandboxes/sb1/volumes/v1');
    await call(socketPath, 'PUT', '/v1/sandboxes/sb1/volumes/v2', { mode: 'nonsense' });
    const audit = log.lines().filter((l) => l.audit === true);
    const peer = { uid: process.getuid?.(), gid: process.getgid?.(), pid: process.pid };
    expect(audit.map((a) => [a.method, a.url])).toEqual([
      ['PUT', '/v1/sandboxes/sb1/volumes/v1'],
      ['DELETE', '/v1/sandboxes/sb1/volumes/v1'],
      // Refused requests are audited too.
      ['PUT', '/v1/sandboxes/sb1/volumes/v2'],
    ]);
    for (const a of audit) {
      expect(a.peer).toEqual(peer);
      expect(a.reqId).toEqual(expect.any(String));
    }
  });

  it('says why when there are no credentials (addon missing)', async () => {
    const { socketPath, log } = await serve({ missing: 'the peer-credentials addon is not built' });
    await call(socketPath, 'POST', '/v1/sandboxes/sb1/nics/n1', {});
    const [a] = log.lines().filter((l) => l.audit === true);
    expect(a).toMatchObject({
      method: 'POST',
      peer: null,
      peerError: 'the peer-credentials addon is not built',
    });
    expect(log.lines().some((l) => l.msg === 'audit lines will carry no peer credentials')).toBe(true);
  });
});
