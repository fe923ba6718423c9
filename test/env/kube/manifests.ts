/**
 * Installs the project's manifests from deploy/ into a test apiserver the way an operator would
 * (server-side apply through @kubernetes/client-node's generic object API), and prepares what a
 * cluster's controllers would have made: a token for the vmplugd service account and a Pod.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  KubeConfig,
  type KubernetesObject,
  KubernetesObjectApi,
  loadAllYaml,
  PatchStrategy,
} from '@kubernetes/client-node';
import { createKubeHttp, type KubeHttp } from '../../../daemon/report/kube/kube-http.js';
import type { KubeApiserver } from '../kube.js';
import { repoRoot } from '../paths.js';

export const deployDir = join(repoRoot, 'deploy');

/** Server-side applies every document of the files in deploy/ (or dry-runs them). */
export async function applyDeployFiles(
  kube: KubeApiserver,
  files: readonly string[],
  opts: { dryRun?: boolean } = {},
): Promise<KubernetesObject[]> {
  const kc = new KubeConfig();
  kc.loadFromFile(kube.kubeconfigPath);
  const objects = KubernetesObjectApi.makeApiClient(kc);
  const applied: KubernetesObject[] = [];
  for (const file of files) {
    for (const doc of loadAllYaml(readFileSync(join(deployDir, file), 'utf8'))) {
      applied.push(
        await objects.patch(
          doc as KubernetesObject,
          undefined,
          opts.dryRun ? 'All' : undefined,
          'vmplug-tests',
          true,
          PatchStrategy.ServerSideApply,
        ),
      );
    }
  }
  return applied;
}

export async function until<T>(
  what: string,
  f: () => Promise<T | undefined>,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last error: ${String(last)})`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface VmplugTestCluster {
  /** Client with the admin token. */
  admin: KubeHttp;
  /** A kubeconfig whose user is the vmplugd service account (deploy/rbac.yaml's rights). */
  serviceAccountKubeconfig: string;
  /** The Pod `default/vm-pod` (an object only: no kubelet runs). */
  pod: { name: string; namespace: string; uid: string };
}

/**
 * Installs the CRD and RBAC from deploy/, waits until the VmplugNode kind is served, gets a
 * token for the vmplugd service account and creates a Pod to hang Events on.
 */
export async function prepareVmplugCluster(kube: KubeApiserver): Promise<VmplugTestCluster> {
  const admin = await createKubeHttp({ kind: 'kubeconfig', path: kube.kubeconfigPath });
  await applyDeployFiles(kube, ['crd-vmplugnode.yaml', 'rbac.yaml']);
  await until('the CRD to be established', async () => {
    const crd = (
      await admin.request({
        method: 'GET',
        path: '/apis/apiextensions.k8s.io/v1/customresourcedefinitions/vmplugnodes.vmplug.io',
      })
    ).body as { status?: { conditions?: { type: string; status: string }[] } };
    return crd.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True')
      ? true
      : undefined;
  });
  // The kind is served a moment after Established.
  await until('the VmplugNode kind to be served', async () => {
    await admin.request({ method: 'GET', path: '/apis/vmplug.io/v1alpha1/vmplugnodes' });
    return true;
  });

  // No token controller runs: the token comes from the TokenRequest API (the apiserver's own).
  const tr = (
    await admin.request({
      method: 'POST',
      path: '/api/v1/namespaces/vmplug-system/serviceaccounts/vmplugd/token',
      body: {
        apiVersion: 'authentication.k8s.io/v1',
        kind: 'TokenRequest',
        spec: { expirationSeconds: 3600 },
      },
    })
  ).body as { status: { token: string } };
  const serviceAccountKubeconfig = join(kube.dir, 'vmplugd.kubeconfig');
  const cfg = JSON.parse(readFileSync(kube.kubeconfigPath, 'utf8')) as { users: unknown[] };
  cfg.users = [{ name: 'vmplug-test-admin', user: { token: tr.status.token } }];
  writeFileSync(serviceAccountKubeconfig, JSON.stringify(cfg), { mode: 0o600 });

  // Pod admission insists on the namespace's default ServiceAccount, which no controller makes
  // here, and (without automount off) on a token secret no controller makes either.
  await admin.request({
    method: 'POST',
    path: '/api/v1/namespaces/default/serviceaccounts',
    body: { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'default' } },
  });
  const pod = (
    await admin.request({
      method: 'POST',
      path: '/api/v1/namespaces/default/pods',
      body: {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: 'vm-pod', namespace: 'default' },
        spec: {
          automountServiceAccountToken: false,
          containers: [{ name: 'c', image: 'example.invalid/vm:1' }],
        },
      },
    })
  ).body as { metadata: { name: string; namespace: string; uid: string } };
  return { admin, serviceAccountKubeconfig, pod: pod.metadata };
}
