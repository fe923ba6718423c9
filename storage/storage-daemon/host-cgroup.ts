import { spawn } from 'node:child_process';
import { mkdir, readdir, readFile, readlink, rmdir, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { VmplugError } from '../../core/errors.js';

// The `host-cgroup` launcher's cgroups: each storage daemon, right after its spawn and before it
// serves anything, is moved into a cgroup of its own outside the container's, in every hierarchy
// the host mounts: `<root>/<hierarchy>/vmplug/<group>/<name>` (cgroup v1 or hybrid: one per
// mounted hierarchy, e.g. memory, devices, freezer, unified), or `<root>/vmplug/<group>/<name>`
// (pure cgroup v2). A container restart kills what is in the container's cgroup (runc signals
// every pid of it when the pod shares the host's pid namespace, as vmplugd's does), so a daemon
// outside it keeps serving its guest while vmplugd restarts, and the new vmplugd adopts it.
// `vmplug/` at the top (like the kubelet's `kubepods/`), not under any unit of systemd's; `<group>`
// keeps two backends (pod volumes, hot-attach) from sweeping each other's cgroups.

/** A cgroup path component of ours: the export names and backend groups are `[a-z0-9-]`. */
const COMPONENT = /^[a-z0-9][a-z0-9-]{0,62}$/;

export const HOST_CGROUP_PARENT = 'vmplug';

/** `<hierarchy>/vmplug/<group>`: where one backend's daemons' cgroups are, per hierarchy. */
export function groupDirs(hierarchies: readonly string[], group: string): string[] {
  if (!COMPONENT.test(group)) throw new RangeError(`cgroup group ${JSON.stringify(group)} is not [a-z0-9-]`);
  return hierarchies.map((h) => join(h, HOST_CGROUP_PARENT, group));
}

/** The daemon's own cgroup in every hierarchy. */
export function daemonCgroupDirs(hierarchies: readonly string[], group: string, name: string): string[] {
  if (!COMPONENT.test(name)) throw new RangeError(`cgroup name ${JSON.stringify(name)} is not [a-z0-9-]`);
  return groupDirs(hierarchies, group).map((d) => join(d, name));
}

/**
 * The hierarchies under a cgroup mount root, from the names a directory holds: the root itself
 * when it is a cgroup (it has `cgroup.procs`: pure v2), else each subdirectory that is one (v1
 * and hybrid: cpu, memory, ..., unified). `isCgroup` is the I/O edge; symlinked aliases such as
 * `cpu -> cpu,cpuacct` are not directories and are left out by the caller.
 */
export function hierarchiesOf(
  root: string,
  rootIsCgroup: boolean,
  cgroupSubdirs: readonly string[],
): string[] {
  if (rootIsCgroup) return [root];
  return [...cgroupSubdirs].sort().map((d) => join(root, d));
}

/** The host's cgroups cannot take a daemon (not mounted, not writable): a backend failure. */
export class HostCgroupError extends VmplugError<'BACKEND_FAILED'> {
  constructor(message: string) {
    super('BACKEND_FAILED', message);
  }
}

export interface HostCgroupsOptions {
  /** The host's cgroup mount root as vmplugd sees it (a hostPath of /sys/fs/cgroup in a pod). */
  root: string;
  /** This backend's group under `vmplug/` (`pods`, `hot-attach`). */
  group: string;
  /** The host's cgroup namespace: moving a pid outside ours needs it (kernel cgroup-v2 docs). */
  hostCgroupNs?: string;
}

const STEP_TIMEOUT_MS = 5_000;

export class HostCgroups {
  readonly root: string;
  readonly group: string;
  readonly #hostNs: string;
  #hierarchies: string[] | undefined;

  constructor(opts: HostCgroupsOptions) {
    if (!opts.root.startsWith('/')) throw new RangeError('cgroup root must be an absolute path');
    this.root = opts.root.replace(/\/+$/, '') || '/';
    groupDirs([this.root], opts.group);
    this.group = opts.group;
    this.#hostNs = opts.hostCgroupNs ?? '/proc/1/ns/cgroup';
  }

  /** The mounted hierarchies; an error that names the root when there is none (bad mount). */
  async hierarchies(): Promise<string[]> {
    if (this.#hierarchies !== undefined) return this.#hierarchies;
    const rootIsCgroup = await exists(join(this.root, 'cgroup.procs'));
    const subdirs: string[] = [];
    if (!rootIsCgroup) {
      let entries: import('node:fs').Dirent[];
      try {
        entries = await readdir(this.root, { withFileTypes: true });
      } catch (err) {
        throw new HostCgroupError(
          `cgroup root ${this.root} cannot be read (${(err as NodeJS.ErrnoException).code ?? err}): mount the host's /sys/fs/cgroup there`,
        );
      }
      for (const e of entries) {
        if (e.isDirectory() && (await exists(join(this.root, e.name, 'cgroup.procs')))) subdirs.push(e.name);
      }
    }
    const found = hierarchiesOf(this.root, rootIsCgroup, subdirs);
    if (found.length === 0) {
      throw new HostCgroupError(
        `no cgroup hierarchy at ${this.root}: mount the host's /sys/fs/cgroup there (hostPath)`,
      );
    }
    this.#hierarchies = found;
    return found;
  }

  /**
   * Moves `pid` into its own cgroup in every hierarchy (idempotent: a pid already there stays).
   * Writes from the host's cgroup namespace when ours is another one: the kernel checks a
   * migration against the namespace of whoever opened cgroup.procs (cgroup-v2.rst, "Namespace").
   */
  async place(name: string, pid: number): Promise<void> {
    if (!Number.isSafeInteger(pid) || pid <= 0) throw new RangeError('pid must be a positive integer');
    const dirs = daemonCgroupDirs(await this.hierarchies(), this.group, name);
    const viaHostNs = await this.#otherNamespace();
    for (const dir of dirs) {
      try {
        await makeCgroupDir(dir);
        const procs = join(dir, 'cgroup.procs');
        if (viaHostNs) await writeInHostNs(this.#hostNs, procs, `${pid}\n`);
        else await writeFile(procs, `${pid}\n`, { signal: AbortSignal.timeout(STEP_TIMEOUT_MS) });
      } catch (err) {
        throw new HostCgroupError(
          `cannot move the storage daemon (pid ${pid}) into ${dir}: ${(err as Error).message}`,
        );
      }
    }
  }

  /** Removes the daemon's (empty) cgroups; a cgroup still holding a process stays (EBUSY). */
  async remove(name: string): Promise<void> {
    for (const dir of daemonCgroupDirs(await this.hierarchies(), this.group, name)) await rmdirQuiet(dir);
  }

  /**
   * Removes the empty cgroups of this group whose name `keep` does not hold: left by a daemon
   * that died, or by a vmplugd killed between a daemon's end and its cgroup's removal.
   */
  async sweep(keep: ReadonlySet<string>): Promise<string[]> {
    const removed = new Set<string>();
    for (const g of groupDirs(await this.hierarchies(), this.group)) {
      let names: string[];
      try {
        names = (await readdir(g, { withFileTypes: true })).filter((e) => e.isDirectory()).map((e) => e.name);
      } catch {
        continue;
      }
      for (const n of names) {
        if (keep.has(n) || !COMPONENT.test(n)) continue;
        if (await rmdirQuiet(join(g, n))) removed.add(n);
      }
    }
    return [...removed].sort();
  }

  async #otherNamespace(): Promise<boolean> {
    try {
      return (await readlink('/proc/self/ns/cgroup')) !== (await readlink(this.#hostNs));
    } catch {
      // Unreadable (no ptrace right on pid 1): assume the same namespace; a refused write says so.
      return false;
    }
  }
}

/**
 * mkdir of the cgroup and of its missing parents, one level at a time: a new v1 cpuset cgroup
 * has no cpus and no mems (a pid written to it fails ENOSPC), so each new level gets its
 * parent's, as the kernel does by itself only under cgroup.clone_children.
 */
async function makeCgroupDir(dir: string): Promise<void> {
  const parent = dirname(dir);
  if (!(await exists(parent))) await makeCgroupDir(parent);
  try {
    await mkdir(dir, { mode: 0o755 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return;
    throw err;
  }
  // cgroup v2 (it has cgroup.controllers): an empty cpuset there means the parent's already.
  if (await exists(join(dir, 'cgroup.controllers'))) return;
  for (const f of ['cpuset.cpus', 'cpuset.mems']) {
    const mine = await readFile(join(dir, f), 'utf8').catch(() => undefined);
    if (mine === undefined || mine.trim() !== '') continue;
    await writeFile(join(dir, f), await readFile(join(parent, f), 'utf8'));
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** rmdir; true when removed. A busy cgroup (a zombie not yet reaped) gets a few tries. */
async function rmdirQuiet(dir: string): Promise<boolean> {
  for (let i = 0; ; i++) {
    try {
      await rmdir(dir);
      return true;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return false;
      if (code !== 'EBUSY' || i >= 20) return false;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/**
 * `nsenter --cgroup=<host ns> -- tee <file>` with the text on stdin: opens the file in the host's
 * cgroup namespace. No shell; argv holds paths only.
 */
function writeInHostNs(ns: string, file: string, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('nsenter', [`--cgroup=${ns}`, '--', 'tee', '--', file], {
      stdio: ['pipe', 'ignore', 'pipe'],
      timeout: STEP_TIMEOUT_MS,
      killSignal: 'SIGKILL',
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.once('error', reject);
    child.once('close', (code, signal) =>
      code === 0 ? resolve() : reject(new Error(`nsenter: ${stderr.trim() || signal || `exit ${code}`}`)),
    );
    child.stdin.end(text);
  });
}
