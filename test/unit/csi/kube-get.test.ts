// The real KubeGet adapter against a small HTTP server named by a kubeconfig (loopback only;
// client-node accepts an http:// server only with insecure-skip-tls-verify, there being no TLS).
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type KubeGet, kubeGet } from '../../../csi/lookup.js';

let dir: string;
let server: Server;
let get: KubeGet;
const seen: { url: string; auth: string | undefined }[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmplug-csi-kube-'));
  server = createServer((req, res) => {
    seen.push({ url: req.url ?? '', auth: req.headers.authorization });
    if (req.url === '/api/v1/persistentvolumes/pv-1') res.end(JSON.stringify({ metadata: { name: 'pv-1' } }));
    else if (req.url === '/hang')
      return; // never answers
    else if (req.url === '/boom') res.writeHead(500).end('{"message":"boom"}');
    else res.writeHead(404).end('{}');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const kubeconfig = join(dir, 'kubeconfig');
  await writeFile(
    kubeconfig,
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [
        { name: 'c', cluster: { server: `http://127.0.0.1:${port}`, 'insecure-skip-tls-verify': true } },
      ],
      users: [{ name: 'u', user: { token: 'tok' } }],
      contexts: [{ name: 'x', context: { cluster: 'c', user: 'u' } }],
      'current-context': 'x',
    }),
  );
  get = await kubeGet({ kubeconfig });
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  await rm(dir, { recursive: true, force: true });
});

describe('kubeGet', () => {
  it('answers the object with the credentials applied, undefined on 404', async () => {
    const signal = AbortSignal.timeout(5_000);
    expect(await get('/api/v1/persistentvolumes/pv-1', signal)).toEqual({ metadata: { name: 'pv-1' } });
    expect(await get('/api/v1/persistentvolumes/none', signal)).toBeUndefined();
    expect(seen[0]).toEqual({ url: '/api/v1/persistentvolumes/pv-1', auth: 'Bearer tok' });
  });
  it('rejects other statuses and honours the signal', async () => {
    await expect(get('/boom', AbortSignal.timeout(5_000))).rejects.toThrow(/HTTP 500/);
    await expect(get('/hang', AbortSignal.timeout(100))).rejects.toThrow();
  });
});
