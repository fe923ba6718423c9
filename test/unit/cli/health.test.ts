import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { parseCommandLine } from '../../../cli/args.js';
import { EXIT } from '../../../cli/exit-codes.js';
import { main } from '../../../cli/main.js';

// `vmplug health [--ready]` is what the DaemonSet's exec probes run: its exit code is the answer.

describe('vmplug health', () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function daemon(ready: boolean): Promise<string> {
    const dir = mkdtempSync(join(tmpdir(), 'vmplug-health-'));
    const socket = join(dir, 's.sock');
    const server: Server = createServer((req, res) => {
      if (req.url === '/healthz') {
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}');
      } else if (req.url === '/readyz' && ready) {
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"ready":true,"checks":{}}');
      } else {
        res
          .writeHead(503, { 'content-type': 'application/problem+json' })
          .end('{"type":"about:blank","title":"Not ready","status":503,"code":"NOT_READY"}');
      }
    });
    await new Promise<void>((r) => server.listen(socket, r));
    cleanups.push(
      () => new Promise<void>((r) => server.close(() => r())),
      () => rmSync(dir, { recursive: true, force: true }),
    );
    return socket;
  }

  const run = async (argv: string[]) => {
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    const code = await main({ argv, env: {}, stdin: new PassThrough(), stdout, stderr });
    return { code, out: String(stdout.read() ?? ''), err: String(stderr.read() ?? '') };
  };

  it('parses with and without --ready', () => {
    expect(parseCommandLine(['health']).command).toEqual({ name: 'health', ready: false });
    expect(parseCommandLine(['health', '--ready']).command).toEqual({ name: 'health', ready: true });
  });

  it('exits 0 when alive and ready', async () => {
    const socket = await daemon(true);
    expect((await run(['--socket', socket, 'health'])).code).toBe(EXIT.OK);
    expect((await run(['--socket', socket, 'health', '--ready'])).code).toBe(EXIT.OK);
  });

  it('exits 5 (retry) when alive but not ready, and when nothing listens', async () => {
    const socket = await daemon(false);
    expect((await run(['--socket', socket, 'health'])).code).toBe(EXIT.OK);
    expect((await run(['--socket', socket, 'health', '--ready'])).code).toBe(EXIT.RETRY);
    expect((await run(['--socket', join(tmpdir(), 'vmplug-no-such.sock'), 'health'])).code).toBe(EXIT.RETRY);
  });
});
