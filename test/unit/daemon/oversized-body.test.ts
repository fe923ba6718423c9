import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { buildServer, type VmplugServer } from '../../../daemon/http/server.js';
import { apiCallWholeBody } from '../../env/daemon.js';
import { FakeAttachService, memoryLogger } from './helpers.js';

// A client that writes its whole oversized body at once reads a 413 problem+json, not a reset:
// the server reads the rest and discards it before answering (daemon/http/discard-body.ts).

describe('oversized request bodies', () => {
  let app: VmplugServer | undefined;
  let dir: string | undefined;
  afterEach(async () => {
    await app?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
    app = undefined;
    dir = undefined;
  });

  async function listening(discardLimits?: { maxBytes: number; timeoutMs: number }): Promise<string> {
    dir = await mkdtemp(join(tmpdir(), 'vmp-413-'));
    const socketPath = join(dir, 's.sock');
    app = await buildServer({
      logger: memoryLogger().logger,
      attachService: new FakeAttachService(),
      readiness: () => ({ ready: true, checks: {} }),
      ...(discardLimits ? { discardLimits } : {}),
    });
    await app.listen({ path: socketPath });
    return socketPath;
  }

  it.each([4 * 1024 * 1024, 70 * 1024])(
    'answers a whole %i-byte body with 413 problem+json',
    async (size) => {
      const socketPath = await listening();
      const body = `{"mode":"block","pad":"${'x'.repeat(size)}"}`;
      for (let i = 0; i < 3; i++) {
        const r = await apiCallWholeBody(socketPath, 'PUT', '/v1/sandboxes/sb1/volumes/v1', body);
        expect(r.status).toBe(413);
        expect(r.contentType).toContain('application/problem+json');
        expect(r.body).toMatchObject({ code: 'BODY_TOO_LARGE', status: 413 });
      }
    },
  );

  it('cuts a body past the discard bound rather than reading forever', async () => {
    const socketPath = await listening({ maxBytes: 256 * 1024, timeoutMs: 5_000 });
    const body = 'x'.repeat(4 * 1024 * 1024);
    // Either a 413 read before the cut or a reset: never a hang.
    await apiCallWholeBody(socketPath, 'PUT', '/v1/sandboxes/sb1/volumes/v1', body, 20_000).catch(
      (err: Error) => err,
    );
  });
});
