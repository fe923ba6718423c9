import { mkdirSync, mkdtempSync } from 'node:fs';
import { createServer, request } from 'node:http';
import { join } from 'node:path';
import { buildDaemon, productionNodeOptions, startDaemonProcess } from '../test/env/daemon.js';

const dir = mkdtempSync('/tmp/httpb-');
const med = (a: number[]) => a.sort((x, y) => x - y)[Math.floor(a.length / 2)]!.toFixed(3);
function call(socketPath: string, method: string, path: string, body?: unknown): Promise<number> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = request(
      {
        socketPath,
        method,
        path,
        headers: data
          ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) }
          : {},
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}
async function time(socketPath: string, method: string, path: string, body?: unknown) {
  const t: number[] = [];
  let status = 0;
  for (let i = 0; i < 600; i++) {
    const t0 = performance.now();
    status = await call(socketPath, method, path, body);
    t.push(performance.now() - t0);
  }
  return `${med(t.slice(100))} ms (status ${status})`;
}
const bare = join(dir, 'bare.sock');
const srv = createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{}');
  });
});
await new Promise<void>((r) => srv.listen(bare, r));
const script = await buildDaemon(join(dir, 'build'));
mkdirSync(join(dir, 'mon'));
mkdirSync(join(dir, 'vm'));
const d = await startDaemonProcess({
  dir: join(dir, 'd'),
  monitorDir: join(dir, 'mon'),
  kataVmRoot: join(dir, 'vm'),
  logLevel: 'info',
  script,
  nodeArgs: await productionNodeOptions(),
});
await new Promise((r) => setTimeout(r, 3000));
const body = { mode: 'block', source: { type: 'hostDevice', path: '/dev/loop0' } };
for (let k = 0; k < 2; k++) {
  console.log('bare node http         ', await time(bare, 'PUT', '/x', body));
  console.log('vmplugd GET /healthz   ', await time(d.socketPath, 'GET', '/healthz'));
  console.log('vmplugd GET volume 404 ', await time(d.socketPath, 'GET', '/v1/sandboxes/nosuch/volumes/v1'));
  console.log(
    'vmplugd PUT volume 404 ',
    await time(d.socketPath, 'PUT', '/v1/sandboxes/nosuch/volumes/v1', body),
  );
}
await d.stop();
srv.close();
