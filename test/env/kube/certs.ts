import { execFile } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface ApiserverCredentials {
  /** CA that signed the serving certificate; clients trust only this. */
  caFile: string;
  certFile: string;
  keyFile: string;
  /** RSA key pair for service account tokens (the apiserver insists on both flags). */
  serviceAccountKeyFile: string;
  /** Static token file: one cluster-admin token (group system:masters). */
  tokenFile: string;
  token: string;
}

/**
 * Our own CA and a serving certificate for 127.0.0.1/localhost, rather than the apiserver's
 * self-signed one: clients then verify the server properly instead of skipping TLS checks.
 */
export async function makeCredentials(dir: string, signal: AbortSignal): Promise<ApiserverCredentials> {
  const p = (name: string): string => join(dir, name);
  const opts = { signal, timeout: 30_000 };
  await run(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      p('ca.key'),
      '-out',
      p('ca.crt'),
      '-days',
      '2',
      '-subj',
      '/CN=vmplug-test-ca',
    ],
    opts,
  );
  await writeFile(
    p('server.ext'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n',
  );
  await run(
    'openssl',
    [
      'req',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      p('server.key'),
      '-out',
      p('server.csr'),
      '-subj',
      '/CN=kube-apiserver',
    ],
    opts,
  );
  await run(
    'openssl',
    [
      'x509',
      '-req',
      '-in',
      p('server.csr'),
      '-CA',
      p('ca.crt'),
      '-CAkey',
      p('ca.key'),
      '-CAcreateserial',
      '-days',
      '2',
      '-extfile',
      p('server.ext'),
      '-out',
      p('server.crt'),
    ],
    opts,
  );

  const sa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  await writeFile(p('sa.key'), sa.privateKey.export({ type: 'pkcs1', format: 'pem' }), { mode: 0o600 });

  const token = randomBytes(24).toString('hex');
  await writeFile(p('tokens.csv'), `${token},vmplug-test-admin,vmplug-test-admin,"system:masters"\n`, {
    mode: 0o600,
  });
  return {
    caFile: p('ca.crt'),
    certFile: p('server.crt'),
    keyFile: p('server.key'),
    serviceAccountKeyFile: p('sa.key'),
    tokenFile: p('tokens.csv'),
    token,
  };
}

/** A kubeconfig with one cluster, one token user and one context, as a client would read it. */
export function kubeconfigYaml(server: string, caFile: string, token: string): string {
  // JSON is YAML; it spares us a YAML writer and quoting rules.
  return JSON.stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'vmplug-test', cluster: { server, 'certificate-authority': caFile } }],
    users: [{ name: 'vmplug-test-admin', user: { token } }],
    contexts: [{ name: 'vmplug-test', context: { cluster: 'vmplug-test', user: 'vmplug-test-admin' } }],
    'current-context': 'vmplug-test',
  });
}
