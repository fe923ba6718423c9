import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { VmplugApiError, VmplugClient, VmplugTransportError } from '../../../cli/client.js';

// The client against a bare HTTP server on a unix socket that answers what each test needs.

describe('VmplugClient', () => {
  let dir: string;
  let socketPath: string;
  let server: Server;
  let handler: (method: string, url: string, body: string, res: ServerResponse) => void;
  const seen: { method: string; url: string; body: string; headers: Record<string, unknown> }[] = [];

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmp-client-'));
    socketPath = join(dir, 's.sock');
    seen.length = 0;
    server = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => {
        body += c.toString();
      });
      req.on('end', () => {
        seen.push({ method: req.method ?? '', url: req.url ?? '', body, headers: req.headers });
        handler(req.method ?? '', req.url ?? '', body, res);
      });
    });
    await new Promise<void>((r) => server.listen(socketPath, r));
  });

  afterEach(async () => {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
    await rm(dir, { recursive: true, force: true });
  });

  const json = (res: ServerResponse, status: number, value: unknown, type = 'application/json') => {
    res.writeHead(status, { 'content-type': type });
    res.end(JSON.stringify(value));
  };

  it('sends attach as PUT with the body and request id; 201 is created, 200 is not', async () => {
    handler = (_m, _u, _b, res) => json(res, seen.length === 1 ? 201 : 200, { volumeId: 'v' });
    const c = new VmplugClient({ socketPath });
    const body = { mode: 'block' as const, source: { type: 'hostDevice' as const, path: '/dev/loop0' } };
    expect(await c.attach('sb 1', 'v/1', body, { requestId: 'req-1' })).toEqual({
      created: true,
      attachment: { volumeId: 'v' },
    });
    expect((await c.attach('sb 1', 'v/1', body)).created).toBe(false);
    expect(seen[0]).toMatchObject({ method: 'PUT', url: '/v1/sandboxes/sb%201/volumes/v%2F1' });
    expect(JSON.parse(seen[0]!.body)).toEqual(body);
    expect(seen[0]!.headers['x-request-id']).toBe('req-1');
  });

  it('maps problem+json to VmplugApiError with status, code, field and retryable', async () => {
    handler = (_m, url, _b, res) =>
      url.includes('pending')
        ? json(
            res,
            503,
            { status: 503, code: 'DETACH_PENDING', detail: 'not yet' },
            'application/problem+json',
          )
        : json(
            res,
            422,
            {
              status: 422,
              code: 'INVALID_FIELD',
              detail: 'source.path: bad',
              field: 'source.path',
              requestId: 'r',
            },
            'application/problem+json',
          );
    const c = new VmplugClient({ socketPath });
    const err = await c.get('sb', 'v').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmplugApiError);
    expect(err).toMatchObject({
      status: 422,
      code: 'INVALID_FIELD',
      field: 'source.path',
      requestId: 'r',
      retryable: false,
      message: 'source.path: bad',
    });
    await expect(c.detach('sb', 'pending')).rejects.toMatchObject({
      code: 'DETACH_PENDING',
      retryable: true,
    });
  });

  it('a non-problem error answer still becomes a VmplugApiError', async () => {
    handler = (_m, _u, _b, res) => {
      res.writeHead(502, { 'content-type': 'text/html' });
      res.end('<html>bad gateway</html>');
    };
    await expect(new VmplugClient({ socketPath }).node()).rejects.toMatchObject({
      status: 502,
      code: 'HTTP_502',
    });
  });

  it('times out, aborts, and reports an unreadable answer', async () => {
    handler = () => {
      // never answers
    };
    const c = new VmplugClient({ socketPath, timeoutMs: 150 });
    const t = await c.listSandboxes().catch((e: unknown) => e);
    expect(t).toBeInstanceOf(VmplugTransportError);
    expect(t).toMatchObject({ code: 'TIMEOUT', retryable: true });
    const ac = new AbortController();
    const p = c.getSandbox('sb', { signal: ac.signal, timeoutMs: 10_000 });
    setTimeout(() => ac.abort(), 20);
    await expect(p).rejects.toMatchObject({ code: 'ABORTED', retryable: false });
    handler = (_m, _u, _b, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{not json');
    };
    await expect(c.getSandbox('sb')).rejects.toMatchObject({ code: 'BAD_RESPONSE' });
  });

  it('no daemon on the socket is retryable DAEMON_UNREACHABLE', async () => {
    const c = new VmplugClient({ socketPath: join(dir, 'absent.sock') });
    await expect(c.listSandboxes()).rejects.toMatchObject({ code: 'DAEMON_UNREACHABLE', retryable: true });
  });

  it('encodes the podUid filter and unwraps the list', async () => {
    handler = (_m, _u, _b, res) => json(res, 200, { items: [{ id: 'a' }] });
    const c = new VmplugClient({ socketPath });
    expect(await c.listSandboxes({ podUid: 'u 1&x' })).toEqual([{ id: 'a' }]);
    expect(seen[0]?.url).toBe('/v1/sandboxes?podUid=u%201%26x');
  });
});
