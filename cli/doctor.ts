import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { access, lstat, readFile } from 'node:fs/promises';
import { VmplugApiError, type VmplugClient } from './client.js';
import type { DoctorCheck } from './doctor-check.js';
import { checkKataConfig, type KataCheckOptions } from './kata-config.js';

export type { CheckStatus, DoctorCheck } from './doctor-check.js';

// `vmplug doctor`: what an operator checks first on a node where attaches fail. Each check is
// independent and bounded; one failing never stops the others.

export interface DoctorEnv {
  client: VmplugClient;
  socketPath: string;
  /** QEMU binary the wrapper execs (VMPLUG_QEMU, default /usr/bin/qemu-system-x86_64). */
  qemuPath: string;
  kvmPath?: string;
  cephConf?: string;
  /** Where QEMU's loadable block modules live (Debian: qemu-block-extra). */
  qemuModuleDirs?: string[];
  groupFile?: string;
  timeoutMs?: number;
  /** Where and how the Kata configuration is found (--kata-config). */
  kata?: KataCheckOptions;
}

const EXEC_TIMEOUT_MS = 10_000;

export async function runDoctor(env: DoctorEnv): Promise<DoctorCheck[]> {
  const ready = await readiness(env);
  const [kata, ...rest] = await Promise.all([
    checkKataConfig(env.kata),
    checkKvm(env.kvmPath ?? '/dev/kvm'),
    checkQemu(env.qemuPath),
    checkRbdDriver(
      env.qemuModuleDirs ?? ['/usr/lib/x86_64-linux-gnu/qemu', '/usr/lib/qemu', '/usr/lib64/qemu'],
    ),
    checkCephConf(env.cephConf ?? '/etc/ceph/ceph.conf'),
    checkSocket(env.socketPath, env.groupFile ?? '/etc/group'),
    Promise.resolve(ready.daemon),
    checkDiscovery(env, ready.checks),
    Promise.resolve(kubernetes(ready.checks)),
  ]);
  return [...rest, ...kata];
}

type Checks = Record<string, { ok: boolean; detail?: string }> | undefined;

async function readiness(env: DoctorEnv): Promise<{ daemon: DoctorCheck; checks: Checks }> {
  try {
    const checks = await env.client.ready({ timeoutMs: env.timeoutMs ?? EXEC_TIMEOUT_MS });
    return { daemon: { name: 'vmplugd', status: 'ok', detail: `ready (${summary(checks)})` }, checks };
  } catch (err) {
    if (err instanceof VmplugApiError && err.code === 'NOT_READY') {
      return { daemon: { name: 'vmplugd', status: 'fail', detail: err.message }, checks: undefined };
    }
    return { daemon: { name: 'vmplugd', status: 'fail', detail: (err as Error).message }, checks: undefined };
  }
}

function summary(checks: Record<string, { ok: boolean }>): string {
  return Object.entries(checks)
    .map(([k, c]) => `${k} ${c.ok ? 'ok' : 'failing'}`)
    .join(', ');
}

async function checkKvm(path: string): Promise<DoctorCheck> {
  try {
    await access(path, constants.R_OK | constants.W_OK);
    return { name: 'kvm', status: 'ok', detail: `${path} is usable` };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return {
      name: 'kvm',
      status: 'warn',
      detail:
        code === 'ENOENT'
          ? `no ${path}: guests can only run under TCG (slow)`
          : `${path} is not usable by this user (${code}); Kata runs QEMU as root`,
    };
  }
}

async function checkQemu(path: string): Promise<DoctorCheck> {
  try {
    await access(path, constants.X_OK);
  } catch (err) {
    return {
      name: 'qemu',
      status: 'fail',
      detail: `${path} is not executable (${(err as NodeJS.ErrnoException).code})`,
    };
  }
  const out = await run(path, ['--version']);
  if (out === undefined) return { name: 'qemu', status: 'fail', detail: `${path} --version failed` };
  return { name: 'qemu', status: 'ok', detail: `${path}: ${out.split('\n')[0]?.trim() ?? ''}` };
}

async function checkRbdDriver(dirs: string[]): Promise<DoctorCheck> {
  for (const dir of dirs) {
    try {
      await access(`${dir}/block-rbd.so`, constants.R_OK);
      return { name: 'qemu rbd driver', status: 'ok', detail: `${dir}/block-rbd.so` };
    } catch {
      // next
    }
  }
  // Built in rather than a module: qemu-img lists it among its formats.
  const help = await run('qemu-img', ['--help']);
  const formats = help?.split('\n').find((l) => l.startsWith('Supported formats:'));
  if (formats !== undefined && /\brbd\b/.test(formats)) {
    return { name: 'qemu rbd driver', status: 'ok', detail: 'rbd is among qemu-img --help formats' };
  }
  return {
    name: 'qemu rbd driver',
    status: 'warn',
    detail:
      'no rbd block driver found (Debian: install qemu-block-extra); rbd mode will fail, block mode works',
  };
}

async function checkCephConf(path: string): Promise<DoctorCheck> {
  try {
    await access(path, constants.R_OK);
    return { name: 'ceph config', status: 'ok', detail: `${path} is readable` };
  } catch {
    return {
      name: 'ceph config',
      status: 'ok',
      detail: `no ${path}: fine for vmplug (monitors and keys come with each rbd attach)`,
    };
  }
}

async function checkSocket(path: string, groupFile: string): Promise<DoctorCheck> {
  let st: Awaited<ReturnType<typeof lstat>>;
  try {
    st = await lstat(path);
  } catch (err) {
    return {
      name: 'socket',
      status: 'fail',
      detail: `${path}: ${(err as NodeJS.ErrnoException).code} (is vmplugd running?)`,
    };
  }
  if (!st.isSocket()) return { name: 'socket', status: 'fail', detail: `${path} is not a socket` };
  const mode = `0${(st.mode & 0o777).toString(8)}`;
  const group = await groupName(st.gid, groupFile);
  const where = `${path} mode ${mode} group ${group}`;
  if (st.mode & 0o002) return { name: 'socket', status: 'fail', detail: `${where}: writable by every user` };
  try {
    await access(path, constants.W_OK);
  } catch {
    return {
      name: 'socket',
      status: 'fail',
      detail: `${where}: this user may not connect (join group ${group})`,
    };
  }
  return { name: 'socket', status: 'ok', detail: where };
}

async function checkDiscovery(env: DoctorEnv, checks: Checks): Promise<DoctorCheck> {
  const d = checks?.discovery;
  if (checks !== undefined && d === undefined)
    return { name: 'discovery', status: 'skip', detail: 'not reported' };
  try {
    const list = await env.client.listSandboxes({}, { timeoutMs: env.timeoutMs ?? EXEC_TIMEOUT_MS });
    const byState = new Map<string, number>();
    for (const s of list) byState.set(s.state, (byState.get(s.state) ?? 0) + 1);
    const states = [...byState].map(([s, n]) => `${n} ${s}`).join(', ');
    const detail = `${list.length} sandbox(es)${states ? ` (${states})` : ''}${d?.detail ? `; ${d.detail}` : ''}`;
    return { name: 'discovery', status: d === undefined || d.ok ? 'ok' : 'fail', detail };
  } catch (err) {
    return { name: 'discovery', status: 'fail', detail: (err as Error).message };
  }
}

function kubernetes(checks: Checks): DoctorCheck {
  const k = checks?.kubernetes ?? checks?.apiServer;
  if (k === undefined)
    return { name: 'kubernetes', status: 'skip', detail: 'vmplugd reports no API server check' };
  return {
    name: 'kubernetes',
    status: k.ok ? 'ok' : 'warn',
    detail: k.detail ?? (k.ok ? 'reachable' : 'unreachable'),
  };
}

async function groupName(gid: number, groupFile: string): Promise<string> {
  try {
    const text = await readFile(groupFile, { encoding: 'utf8', signal: AbortSignal.timeout(2_000) });
    for (const line of text.split('\n')) {
      const [name, , id] = line.split(':');
      if (id === String(gid) && name) return name;
    }
  } catch {
    // fall back to the number
  }
  return String(gid);
}

/** stdout of a program, or undefined when it cannot run or fails (never a shell). */
function run(file: string, args: string[]): Promise<string | undefined> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: EXEC_TIMEOUT_MS, maxBuffer: 1024 * 1024 }, (err, stdout) =>
      resolve(err === null ? stdout : undefined),
    );
  });
}

export function doctorFailed(checks: DoctorCheck[]): boolean {
  return checks.some((c) => c.status === 'fail');
}
