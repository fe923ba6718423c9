import { constants } from 'node:fs';
import { access, readdir, readFile, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { DoctorCheck } from './doctor-check.js';
import { parseTomlLite, type TomlDoc, type TomlValue, tomlGet } from './toml-lite.js';

// `vmplug doctor`'s checks of the Kata configuration that vmplug relies on (docs/kata.md says
// why each matters). The decisions are pure (kataChecks); finding and reading files is at the edge.

/** Where Kata looks for its configuration, in its own order, then kata-deploy's directory. */
export const KATA_CONFIG_PATHS = [
  '/etc/kata-containers/configuration.toml',
  '/usr/share/defaults/kata-containers/configuration.toml',
  '/opt/kata/share/defaults/kata-containers/configuration.toml',
];
export const KATA_DEPLOY_DIR = '/opt/kata/share/defaults/kata-containers';

/** Kata's default vhost-user store (vhost_user_store_path unset). */
export const KATA_DEFAULT_VHOST_USER_STORE = '/var/run/kata-containers/vhost-user';
const WRAPPER_NAME = 'vmplug-qemu';
const CONFIG_MAX_BYTES = 1024 * 1024;
const IO_TIMEOUT_MS = 2_000;

export interface HugePages {
  free: number;
  sizeKiB: number;
}

/** What the pure checks need to know about the node besides the configuration itself. */
export interface KataNodeFacts {
  /** Whether the vhost-user store directory exists. */
  storeExists: boolean;
  hugePages: HugePages | undefined;
  /** Whether the configured hypervisor path is an executable file. */
  hypervisorExecutable: boolean;
}

const QEMU = 'hypervisor.qemu';

/** The hypervisor table: [hypervisor.qemu], else the first [hypervisor.*] (e.g. a renamed one). */
function hypervisorTable(doc: TomlDoc): string | undefined {
  if (doc.tables.has(QEMU)) return QEMU;
  return [...doc.tables.keys()].find((t) => t.startsWith('hypervisor.'));
}

/** The paths the facts are about: the store and the hypervisor binary. */
export function kataPaths(doc: TomlDoc): { store: string; hypervisor: string | undefined } {
  const table = hypervisorTable(doc) ?? QEMU;
  const store = tomlGet(doc, table, 'vhost_user_store_path');
  const path = tomlGet(doc, table, 'path');
  return {
    store: typeof store === 'string' && store !== '' ? store : KATA_DEFAULT_VHOST_USER_STORE,
    hypervisor: typeof path === 'string' && path !== '' ? path : undefined,
  };
}

/** The checks for one parsed configuration file; pure. */
export function kataChecks(path: string, doc: TomlDoc, facts: KataNodeFacts): DoctorCheck[] {
  const table = hypervisorTable(doc);
  const skippedNote = doc.skipped > 0 ? ` (${doc.skipped} line(s) not understood)` : '';
  if (table === undefined) {
    return [
      { name: 'kata config', status: 'fail', detail: `${path}: no [hypervisor.qemu] table${skippedNote}` },
    ];
  }
  const get = (key: string): TomlValue | undefined => tomlGet(doc, table, key);
  const out: DoctorCheck[] = [
    { name: 'kata config', status: 'ok', detail: `${path} [${table}]${skippedNote}` },
  ];

  // Kata >= 3.26 defaults to true, which silently turns direct-assigned volumes off.
  const disableBlock = get('disable_block_device_use');
  out.push(
    disableBlock === false
      ? { name: 'kata block devices', status: 'ok', detail: 'disable_block_device_use = false' }
      : {
          name: 'kata block devices',
          status: 'fail',
          detail: `disable_block_device_use is ${disableBlock === undefined ? 'unset (true since Kata 3.26)' : String(disableBlock)}: Kata ignores vmplug's pod volume records; set it to false`,
        },
  );

  const { store, hypervisor } = kataPaths(doc);
  const vhostUser = get('enable_vhost_user_store') === true;
  out.push(
    !vhostUser
      ? {
          name: 'kata vhost-user store',
          status: 'warn',
          detail: 'enable_vhost_user_store is not true: rbd pod volumes cannot reach Kata (block mode works)',
        }
      : facts.storeExists
        ? { name: 'kata vhost-user store', status: 'ok', detail: `enabled, ${store} exists` }
        : {
            name: 'kata vhost-user store',
            status: 'fail',
            detail: `enabled, but ${store} (vhost_user_store_path) does not exist: create it, or start vmplugd, which makes it`,
          },
  );

  out.push(hugePagesCheck(get('enable_hugepages') === true, get('default_memory'), facts.hugePages));
  out.push(hypervisorCheck(hypervisor, get('valid_hypervisor_paths'), facts.hypervisorExecutable));
  return out;
}

function hugePagesCheck(
  enabled: boolean,
  defaultMemory: TomlValue | undefined,
  hp: HugePages | undefined,
): DoctorCheck {
  const name = 'kata hugepages';
  if (!enabled) {
    return {
      name,
      status: 'warn',
      detail:
        'enable_hugepages is not true: Kata refuses vhost-user devices, so rbd pod volumes cannot be plugged',
    };
  }
  if (hp === undefined)
    return { name, status: 'warn', detail: 'enabled; HugePages_Free not readable from /proc/meminfo' };
  const freeMiB = Math.floor((hp.free * hp.sizeKiB) / 1024);
  const needMiB = typeof defaultMemory === 'number' && defaultMemory > 0 ? defaultMemory : 2048;
  const what = `enabled; ${hp.free} free huge page(s) of ${hp.sizeKiB} KiB = ${freeMiB} MiB, a sandbox needs default_memory ${needMiB} MiB`;
  // With hugepages on, a sandbox's whole RAM comes from them: none free means no sandbox starts.
  if (hp.free === 0)
    return { name, status: 'fail', detail: `${what}: no sandbox can start (vm.nr_hugepages)` };
  return { name, status: freeMiB >= needMiB ? 'ok' : 'warn', detail: what };
}

function hypervisorCheck(
  path: string | undefined,
  valid: TomlValue | undefined,
  executable: boolean,
): DoctorCheck {
  const name = 'kata hypervisor path';
  if (path === undefined) return { name, status: 'fail', detail: 'no hypervisor path set' };
  if (basename(path) !== WRAPPER_NAME) {
    return {
      name,
      status: 'fail',
      detail: `path = ${path}: not ${WRAPPER_NAME}, so vmplugd cannot reach Kata's guests (no private monitor)`,
    };
  }
  if (!executable) return { name, status: 'fail', detail: `path = ${path} is not an executable file` };
  const patterns = Array.isArray(valid) ? valid.filter((v): v is string => typeof v === 'string') : [];
  if (!patterns.some((p) => globMatch(p, path))) {
    return {
      name,
      status: 'fail',
      detail: `path = ${path} is not in valid_hypervisor_paths (${patterns.length === 0 ? 'empty' : patterns.join(', ')})`,
    };
  }
  return { name, status: 'ok', detail: `path = ${path}, in valid_hypervisor_paths` };
}

/** Go's filepath.Match for `*`, `?` and `[...]` (what Kata matches valid_hypervisor_paths with). */
export function globMatch(pattern: string, path: string): boolean {
  let re = '^';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i] as string;
    if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '[') {
      const end = pattern.indexOf(']', i + 1);
      if (end < 0) return false;
      let body = pattern.slice(i + 1, end);
      if (body.startsWith('^')) body = `^${body.slice(1)}`;
      re += `[${body.replace(/\\/g, '\\\\')}]`;
      i = end;
    } else if (c === '\\' && i + 1 < pattern.length) {
      re += escapeRe(pattern[++i] as string);
    } else re += escapeRe(c);
  }
  try {
    return new RegExp(`${re}$`).test(path);
  } catch {
    return false;
  }
}

function escapeRe(c: string): string {
  return c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

/** HugePages_Free and Hugepagesize from a /proc/meminfo text; pure. */
export function parseMeminfo(text: string): HugePages | undefined {
  const free = /^HugePages_Free:\s+(\d+)\s*$/m.exec(text)?.[1];
  const size = /^Hugepagesize:\s+(\d+)\s*kB\s*$/m.exec(text)?.[1];
  return free === undefined || size === undefined ? undefined : { free: Number(free), sizeKiB: Number(size) };
}

export interface KataCheckOptions {
  /** --kata-config: only this file, and its absence is a failure. */
  configPath?: string;
  /** Overrides for tests. */
  searchPaths?: string[];
  deployDir?: string;
  meminfoPath?: string;
}

/** Finds Kata's configuration and checks it; never throws. */
export async function checkKataConfig(opts: KataCheckOptions = {}): Promise<DoctorCheck[]> {
  const path =
    opts.configPath ??
    (await findKataConfig(opts.searchPaths ?? KATA_CONFIG_PATHS, opts.deployDir ?? KATA_DEPLOY_DIR));
  if (path === undefined) {
    return [
      {
        name: 'kata config',
        status: 'skip',
        detail: `no Kata configuration found (${[...(opts.searchPaths ?? KATA_CONFIG_PATHS), `${opts.deployDir ?? KATA_DEPLOY_DIR}/configuration*.toml`].join(', ')}); pass --kata-config`,
      },
    ];
  }
  let text: string;
  try {
    const st = await stat(path);
    if (!st.isFile() || st.size > CONFIG_MAX_BYTES) throw new Error('not a regular file of at most 1 MiB');
    text = await readFile(path, { encoding: 'utf8', signal: AbortSignal.timeout(IO_TIMEOUT_MS) });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    return [{ name: 'kata config', status: 'fail', detail: `${path}: ${code}` }];
  }
  const doc = parseTomlLite(text);
  const { store, hypervisor } = kataPaths(doc);
  const [storeExists, meminfo, hypervisorExecutable] = await Promise.all([
    stat(store).then(
      (s) => s.isDirectory(),
      () => false,
    ),
    readFile(opts.meminfoPath ?? '/proc/meminfo', {
      encoding: 'utf8',
      signal: AbortSignal.timeout(IO_TIMEOUT_MS),
    }).catch(() => undefined),
    hypervisor === undefined ? false : isExecutableFile(hypervisor),
  ]);
  return kataChecks(path, doc, {
    storeExists,
    hugePages: meminfo === undefined ? undefined : parseMeminfo(meminfo),
    hypervisorExecutable,
  });
}

async function isExecutableFile(path: string): Promise<boolean> {
  try {
    const st = await stat(path);
    if (!st.isFile()) return false;
    await access(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * The first existing file of `paths`; else, in kata-deploy's directory, configuration-qemu.toml
 * or the first configuration*.toml (kata-deploy ships one per hypervisor).
 */
async function findKataConfig(paths: string[], deployDir: string): Promise<string | undefined> {
  for (const p of paths) {
    if (
      await stat(p).then(
        (s) => s.isFile(),
        () => false,
      )
    )
      return p;
  }
  const names = await readdir(deployDir).catch(() => [] as string[]);
  const candidates = names.filter((n) => /^configuration.*\.toml$/.test(n)).sort();
  const pick = candidates.includes('configuration-qemu.toml') ? 'configuration-qemu.toml' : candidates[0];
  return pick === undefined ? undefined : join(deployDir, pick);
}
