import { readFileSync } from 'node:fs';
import { request } from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type KubeApiserver, startKubeApiserver } from '../env/kube.js';

function get(kube: KubeApiserver, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      `${kube.url}${path}`,
      {
        ca: readFileSync(kube.caFile),
        headers: { authorization: `Bearer ${kube.token}` },
        signal: AbortSignal.timeout(10_000),
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          body += c;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end();
  });
}

describe('test bed: kube-apiserver + etcd on loopback', () => {
  let kube: KubeApiserver;
  beforeAll(async () => {
    kube = await startKubeApiserver();
    console.info(`kube-apiserver ready in ${Math.round(kube.lastStartMs)} ms`);
  });
  afterAll(async () => {
    await kube?.stop();
  });

  it('serves the API over verified TLS to the token user', async () => {
    const v = await get(kube, '/version');
    expect(v.status).toBe(200);
    expect(JSON.parse(v.body).gitVersion).toMatch(/^v1\.20\./);
    expect(readFileSync(kube.kubeconfigPath, 'utf8')).toContain(kube.url);
  });

  it('rejects a wrong token', async () => {
    const res = await get({ ...kube, token: 'nope' }, '/api/v1/namespaces');
    expect(res.status).toBe(401);
  });

  it('restarts the apiserver alone on the same port, keeping etcd data', async () => {
    const before = await get(kube, '/api/v1/namespaces/default');
    expect(before.status).toBe(200);
    const uid = JSON.parse(before.body).metadata.uid;
    await kube.stopApiserver();
    await expect(get(kube, '/readyz')).rejects.toThrow();
    await kube.startApiserver();
    console.info(`kube-apiserver restarted, ready in ${Math.round(kube.lastStartMs)} ms`);
    const after = await get(kube, '/api/v1/namespaces/default');
    expect(JSON.parse(after.body).metadata.uid).toBe(uid);
  });
});
