import { readFile } from 'node:fs/promises';
import { CephEnvError } from './errors.js';
import { type CephLayout, mgrId, osdId } from './layout.js';
import { runProgram } from './run.js';

interface Entity {
  name: string;
  file: (l: CephLayout) => string;
  caps: Array<[string, string]>;
}

// ceph-mon --mkfs imports every entity of its keyring with these caps into the auth database, so
// the daemons and clients are registered before anything runs (no `ceph auth add` round trips).
const entities: Entity[] = [
  { name: 'mon.', file: (l) => l.monKeyring, caps: [['mon', 'allow *']] },
  {
    name: 'client.admin',
    file: (l) => l.adminKeyring,
    caps: [
      ['mon', 'allow *'],
      ['osd', 'allow *'],
      ['mgr', 'allow *'],
      ['mds', 'allow *'],
    ],
  },
  {
    name: `osd.${osdId}`,
    file: (l) => l.osdKeyring,
    caps: [
      ['mon', 'allow profile osd'],
      ['mgr', 'allow profile osd'],
      ['osd', 'allow *'],
    ],
  },
  {
    name: `mgr.${mgrId}`,
    file: (l) => l.mgrKeyring,
    caps: [
      ['mon', 'allow profile mgr'],
      ['osd', 'allow *'],
      ['mds', 'allow *'],
    ],
  },
  {
    name: 'client.vmplug',
    file: (l) => l.clientKeyring,
    caps: [
      ['mon', 'profile rbd'],
      ['osd', 'profile rbd pool=rbd'],
    ],
  },
];

/** Generates every key into its own keyring file (mode 0600) and gathers them for the mon. */
export async function createKeyrings(l: CephLayout, signal?: AbortSignal): Promise<void> {
  const opts = { timeoutMs: 15_000, signal };
  await Promise.all(
    entities.map((e) =>
      runProgram(
        'ceph-authtool',
        [
          '--create-keyring',
          e.file(l),
          '--gen-key',
          '--name',
          e.name,
          ...e.caps.flatMap(([svc, cap]) => ['--cap', svc, cap]),
        ],
        opts,
      ),
    ),
  );
  for (const e of entities) {
    if (e.name === 'mon.') continue;
    await runProgram('ceph-authtool', [l.monKeyring, '--import-keyring', e.file(l)], opts);
  }
}

/** The base64 key of the single entity in a keyring file. */
export async function readKey(keyringPath: string): Promise<string> {
  const text = await readFile(keyringPath, 'utf8');
  const m = /^\s*key\s*=\s*(\S+)\s*$/m.exec(text);
  if (!m?.[1]) throw new CephEnvError('CEPH_BAD_KEYRING', `no key in ${keyringPath}`);
  return m[1];
}
