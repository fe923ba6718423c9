/**
 * A throwaway single-node Ceph cluster for integration tests, the demo and humans: one mon, one
 * mgr, one bluestore OSD on a sparse file, cephx on, pool `rbd` and a client `client.vmplug` with
 * the caps QEMU needs. Everything (config, keyrings, data, sockets, logs, pid files) lives in one
 * directory; the mon listens on 127.0.0.1 on a port free at start, so several clusters can run at
 * once. Keys only ever travel in keyring files, never on a command line.
 *
 *   npx tsx test/env/ceph.ts start [dir]   prints the descriptor JSON; the cluster keeps running
 *   npx tsx test/env/ceph.ts stop <dir>    kills its daemons and removes the directory
 */
import { randomUUID } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import { parseMonitors, type RbdSource, Secret } from '../../storage/volume-spec.js';
import { renderConf } from './ceph/config.js';
import { isAlive, isClusterProcess, killDaemons, killDaemonsSync, spawnDaemon } from './ceph/daemons.js';
import { CephEnvError } from './ceph/errors.js';
import * as images from './ceph/images.js';
import { createKeyrings, readKey } from './ceph/keyrings.js';
import { type CephLayout, layoutOf, markerName, mgrId, monId, osdId } from './ceph/layout.js';
import { runProgram } from './ceph/run.js';

export { CephEnvError } from './ceph/errors.js';

/** Plain JSON: what vitest's global setup `provide`s to test files, and what `attachCeph` takes. */
export interface CephDescriptor {
  dir: string;
  confPath: string;
  /** `127.0.0.1:<port>` */
  monitors: string[];
  pool: string;
  clientUser: 'vmplug';
  /** base64 cephx key of client.vmplug. A secret: never log it or put it on a command line. */
  clientKey: string;
  /** `--conf`, `--name client.admin`, `--keyring` for the ceph, rbd and rados CLIs. */
  adminArgs: string[];
  /** Keyring file of client.vmplug, for `--id vmplug --keyring <file>`. */
  clientKeyringPath: string;
  pids: { mon: number; osd: number; mgr: number };
}

export interface CephCluster extends CephDescriptor {
  createImage(name: string, sizeBytes: number): Promise<void>;
  /** Creates an image holding exactly `data` (`rbd import`). */
  importImage(name: string, data: Buffer): Promise<void>;
  removeImage(name: string): Promise<void>;
  /** `rbd export` to a temporary file, read back, deleted. */
  exportImage(name: string): Promise<Buffer>;
  readImage(name: string, offset: number, length: number): Promise<Buffer>;
  imageSize(name: string): Promise<number>;
  listImages(): Promise<string[]>;
  /** Kills every daemon and removes the directory. Idempotent. */
  stop(): Promise<void>;
  descriptor(): CephDescriptor;
}

export interface StartCephOptions {
  /** Use this directory (created if missing; a previous cluster's leftovers in it are cleared). */
  dir?: string;
  signal?: AbortSignal;
  /**
   * Keep the daemons running after this process exits (the CLI's `start`). By default they die
   * with it, however it dies, and are killed on exit, SIGINT and SIGTERM.
   */
  detached?: boolean;
  /** Size of the OSD's sparse block file; default 4 GiB. */
  osdBlockBytes?: number;
  /** The mon's port; default a port free at start. */
  monPort?: number;
  /** Overall start-up deadline; default 120 s. */
  timeoutMs?: number;
}

const pool = 'rbd';
const pgNum = 8;
const cliTimeoutMs = 60_000;

export async function startCeph(opts: StartCephOptions = {}): Promise<CephCluster> {
  const timeout = AbortSignal.timeout(opts.timeoutMs ?? 120_000);
  const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
  try {
    return await startOnce(opts, signal);
  } catch (e) {
    // The one failure a retry fixes: the mon lost its free port to another process in between.
    const retryable =
      e instanceof CephEnvError && e.code === 'CEPH_DAEMON_DIED' && opts.monPort === undefined;
    if (!retryable || signal.aborted) throw e;
    return await startOnce(opts, signal);
  }
}

async function startOnce(opts: StartCephOptions, signal: AbortSignal): Promise<CephCluster> {
  const dir = opts.dir
    ? await prepareGivenDir(resolve(opts.dir))
    : await mkdtemp(join(tmpdir(), 'vmplug-ceph-'));
  const l = layoutOf(dir);
  const pids: number[] = [];
  const cleanupSync = (): void => {
    killDaemonsSync(pids, l.confPath);
    rmSync(dir, { recursive: true, force: true });
  };
  const guard = opts.detached ? null : exitGuard(cleanupSync);
  try {
    const descriptor = await bootstrap(l, pids, {
      detached: opts.detached ?? false,
      monPort: opts.monPort,
      signal,
      osdBlockBytes: opts.osdBlockBytes ?? 4 * 2 ** 30,
    });
    return clusterOf(descriptor, guard);
  } catch (e) {
    guard?.release();
    await killDaemons(pids, l.confPath).catch(() => {});
    // VMPLUG_CEPH_KEEP_FAILED=1 keeps a failed cluster's logs and data for a post-mortem.
    if (process.env.VMPLUG_CEPH_KEEP_FAILED !== '1') await rm(dir, { recursive: true, force: true });
    if (
      signal.aborted &&
      !opts.signal?.aborted &&
      !(e instanceof CephEnvError && e.code === 'CEPH_DAEMON_DIED')
    ) {
      throw new CephEnvError('CEPH_START_TIMEOUT', `ceph did not become ready: ${(e as Error).message}`, {
        cause: e,
      });
    }
    throw e;
  }
}

/** An image of this cluster as vmplug's rbd source for client.vmplug (the key as a Secret). */
export function rbdSourceOf(d: CephDescriptor, image: string): RbdSource {
  return {
    type: 'rbd',
    pool: d.pool,
    image,
    monitors: parseMonitors(d.monitors),
    user: d.clientUser,
    key: new Secret(d.clientKey),
  };
}

/** Re-opens a cluster started elsewhere (by the global setup) from its descriptor. */
export function attachCeph(descriptor: CephDescriptor): CephCluster {
  return clusterOf(descriptor, null);
}

interface BootstrapOptions {
  detached: boolean;
  monPort: number | undefined;
  signal: AbortSignal;
  osdBlockBytes: number;
}

async function bootstrap(l: CephLayout, pids: number[], o: BootstrapOptions): Promise<CephDescriptor> {
  const { signal } = o;
  await Promise.all(
    [l.monData, l.osdData, l.mgrData, l.runDir, l.logDir, l.crashDir].map((d) =>
      mkdir(d, { recursive: true, mode: 0o700 }),
    ),
  );
  await chmod(l.dir, 0o700);
  await writeFile(l.markerPath, `${markerName}\n`);
  if (!o.detached) await writeFile(l.ownerPath, `${process.pid}\n`);

  const fsid = randomUUID();
  const osdUuid = randomUUID();
  const monPort = o.monPort ?? (await freePort());
  await writeFile(l.confPath, renderConf({ layout: l, fsid, monPort, osdBlockBytes: o.osdBlockBytes }), {
    mode: 0o600,
  });
  await createKeyrings(l, signal);
  const short = { timeoutMs: 30_000, signal };
  await runProgram(
    'monmaptool',
    ['--create', '--clobber', '--fsid', fsid, '--addv', monId, `[v2:127.0.0.1:${monPort}]`, l.monmapPath],
    short,
  );
  // The OSD's mkfs needs no monitor (--no-mon-config), so it overlaps with the mon's.
  await Promise.all([
    runProgram(
      'ceph-mon',
      ['--mkfs', '-c', l.confPath, '-i', monId, '--monmap', l.monmapPath, '--keyring', l.monKeyring],
      short,
    ),
    runProgram(
      'ceph-osd',
      ['--mkfs', '--no-mon-config', '-c', l.confPath, '-i', String(osdId), '--osd-uuid', osdUuid],
      {
        ...short,
        timeoutMs: 60_000,
      },
    ),
  ]);

  const daemonOpts = { dieWithParent: !o.detached };
  const mon = spawnDaemon(l, 'ceph-mon', monId, daemonOpts);
  pids.push(mon);
  const mgr = spawnDaemon(l, 'ceph-mgr', mgrId, daemonOpts);
  pids.push(mgr);
  const watch = watchDaemons(l, pids, signal);
  try {
    return await configure(l, pids, { ...o, signal: watch.signal }, { monPort, osdUuid, mon, mgr });
  } catch (e) {
    throw watch.died() ?? e;
  } finally {
    watch.stop();
  }
}

interface Started {
  monPort: number;
  osdUuid: string;
  mon: number;
  mgr: number;
}

/** With the mon and mgr running: registers and starts the OSD, makes the pool, waits for PGs. */
async function configure(
  l: CephLayout,
  pids: number[],
  o: BootstrapOptions,
  st: Started,
): Promise<CephDescriptor> {
  const { signal } = o;
  const { monPort, osdUuid, mon, mgr } = st;
  const daemonOpts = { dieWithParent: !o.detached };
  const adminArgs = ['--conf', l.confPath, '--name', 'client.admin', '--keyring', l.adminKeyring];
  const ceph = (args: string[]) =>
    runProgram('ceph', [...adminArgs, ...args], { timeoutMs: cliTimeoutMs, signal });
  // Registers osd.0 (its key is already in the auth database from the mon's mkfs keyring).
  await ceph(['osd', 'new', osdUuid, String(osdId)]);
  const osd = spawnDaemon(l, 'ceph-osd', String(osdId), daemonOpts);
  pids.push(osd);
  await ceph(['osd', 'pool', 'create', pool, String(pgNum), String(pgNum), 'replicated']);
  await runProgram('rbd', [...adminArgs, 'pool', 'init', pool], { timeoutMs: cliTimeoutMs, signal });
  await waitActiveClean(ceph, signal);

  const descriptor: CephDescriptor = {
    dir: l.dir,
    confPath: l.confPath,
    monitors: [`127.0.0.1:${monPort}`],
    pool,
    clientUser: 'vmplug',
    clientKey: await readKey(l.clientKeyring),
    adminArgs,
    clientKeyringPath: l.clientKeyring,
    pids: { mon, osd, mgr },
  };
  await writeFile(l.descriptorPath, `${JSON.stringify(descriptor, null, 2)}\n`, { mode: 0o600 });
  return descriptor;
}

interface PgSummary {
  num_pgs: number;
  num_pg_by_state?: Array<{ name: string; num: number }>;
}

/**
 * Ready means every PG is active+clean. Not HEALTH_OK: a one-OSD cluster always warns. The mgr's
 * own pool may appear meanwhile, so the count is re-read each time.
 */
async function waitActiveClean(
  ceph: (args: string[]) => Promise<{ stdout: Buffer }>,
  signal: AbortSignal,
): Promise<void> {
  for (;;) {
    signal.throwIfAborted();
    const { stdout } = await ceph(['pg', 'stat', '--format', 'json']);
    const stat = (JSON.parse(stdout.toString('utf8')) as { pg_summary: PgSummary }).pg_summary;
    const clean = stat.num_pg_by_state?.find((s) => s.name === 'active+clean')?.num ?? 0;
    if (stat.num_pgs > 0 && clean === stat.num_pgs) return;
    await new Promise((r) => setTimeout(r, 250));
  }
}

interface DaemonWatch {
  /** Aborted when `parent` is, or as soon as a daemon dies. */
  signal: AbortSignal;
  /** The error describing the death, if one died. */
  died(): CephEnvError | null;
  stop(): void;
}

/**
 * A daemon that dies during start-up (a port taken, a bad setting) would otherwise leave the
 * CLI calls waiting for their mount timeout: abort them at once and say which one died and why.
 */
function watchDaemons(l: CephLayout, pids: readonly number[], parent: AbortSignal): DaemonWatch {
  const ac = new AbortController();
  let death: CephEnvError | null = null;
  const timer = setInterval(() => {
    const dead = pids.find((p) => !isAlive(p));
    if (dead === undefined) return;
    death = new CephEnvError(
      'CEPH_DAEMON_DIED',
      `a ceph daemon (pid ${dead}) died during start-up:\n${logTails(l)}`,
    );
    ac.abort(death);
  }, 100);
  return {
    signal: AbortSignal.any([parent, ac.signal]),
    died: () => death,
    stop: () => clearInterval(timer),
  };
}

/** The last lines of each daemon's output, for start-up errors (cephx keys are never logged). */
function logTails(l: CephLayout): string {
  const parts: string[] = [];
  for (const f of readdirSync(l.logDir).filter(
    (n) => n.endsWith('.out') || /^(mon|osd|mgr)\.\w+\.log$/.test(n),
  )) {
    const lines = readFileSync(join(l.logDir, f), 'utf8')
      .split('\n')
      .filter((line) => line.trim() !== '')
      .slice(-8);
    if (lines.length > 0) parts.push(`== ${f}\n${lines.join('\n')}`);
  }
  return parts.join('\n');
}

function clusterOf(d: CephDescriptor, guard: ExitGuard | null): CephCluster {
  const t = { dir: d.dir, pool: d.pool, adminArgs: d.adminArgs };
  let stopped: Promise<void> | null = null;
  return {
    ...d,
    createImage: (name, size) => images.createImage(t, name, size),
    importImage: (name, data) => images.importImage(t, name, data),
    removeImage: (name) => images.removeImage(t, name),
    exportImage: (name) => images.exportImage(t, name),
    readImage: (name, offset, length) => images.readImage(t, name, offset, length),
    imageSize: (name) => images.imageSize(t, name),
    listImages: () => images.listImages(t),
    descriptor: () => ({ ...d, monitors: [...d.monitors], adminArgs: [...d.adminArgs], pids: { ...d.pids } }),
    stop() {
      stopped ??= (async () => {
        guard?.release();
        await killDaemons(Object.values(d.pids), d.confPath);
        await rm(d.dir, { recursive: true, force: true });
      })();
      return stopped;
    },
  };
}

interface ExitGuard {
  release(): void;
}

/** Kills the cluster when the process exits or is told to stop, then lets the signal act. */
function exitGuard(cleanupSync: () => void): ExitGuard {
  const onExit = (): void => cleanupSync();
  const onSignal = (sig: NodeJS.Signals): void => {
    cleanupSync();
    release();
    if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
  };
  const release = (): void => {
    process.off('exit', onExit);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
  process.on('exit', onExit);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return { release };
}

function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => {
      const addr = srv.address();
      srv.close(() => {
        if (addr && typeof addr === 'object') resolvePort(addr.port);
        else reject(new CephEnvError('CEPH_NO_PORT', 'could not pick a free port'));
      });
    });
  });
}

/** A directory given by the caller: stop a cluster left in it by a crash, then start afresh. */
async function prepareGivenDir(dir: string): Promise<string> {
  if (existsSync(dir)) {
    const entries = await readdir(dir);
    if (entries.length > 0 && !entries.includes(markerName)) {
      throw new CephEnvError(
        'CEPH_DIR_NOT_EMPTY',
        `${dir} is not empty and holds no test cluster; refusing to wipe it`,
      );
    }
    stopLeftovers(dir);
    await rm(dir, { recursive: true, force: true });
  }
  await mkdir(dir, { recursive: true, mode: 0o700 });
  return dir;
}

/** Kills whatever daemons a cluster directory's descriptor (or a half-made start) names. */
function stopLeftovers(dir: string): void {
  const l = layoutOf(dir);
  const pids = new Set<number>();
  try {
    const d = JSON.parse(readFileSync(l.descriptorPath, 'utf8')) as CephDescriptor;
    for (const p of Object.values(d.pids)) pids.add(p);
  } catch {
    // No descriptor: the start never finished.
  }
  // Daemons write pid files as they start, so a start that crashed half-way is covered too.
  try {
    for (const f of readdirSync(l.runDir)) {
      if (!f.endsWith('.pid')) continue;
      const p = Number.parseInt(readFileSync(join(l.runDir, f), 'utf8'), 10);
      if (Number.isSafeInteger(p) && p > 0) pids.add(p);
    }
  } catch {
    // No run dir.
  }
  killDaemonsSync([...pids], l.confPath);
}

/**
 * Removes clusters in `root` (default: the temp dir) whose owning test process is gone, i.e.
 * leftovers of runs that were killed outright. Clusters started detached (no owner) are a
 * human's and are left alone. Returns the directories removed.
 */
export async function sweepStaleClusters(root = tmpdir()): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await readdir(root).catch(() => [] as string[])) {
    if (!name.startsWith('vmplug-ceph-')) continue;
    const dir = join(root, name);
    const l = layoutOf(dir);
    if (!existsSync(l.markerPath)) continue;
    const owner = Number.parseInt(await readFile(l.ownerPath, 'utf8').catch(() => ''), 10);
    if (!Number.isSafeInteger(owner) || owner <= 0 || isAlive(owner)) continue;
    stopLeftovers(dir);
    await rm(dir, { recursive: true, force: true });
    removed.push(dir);
  }
  return removed;
}

/** For tests: whether any process of the cluster still runs. */
export function clusterProcessesAlive(d: CephDescriptor): number[] {
  return Object.values(d.pids).filter((p) => isAlive(p) && isClusterProcess(p, d.confPath));
}

async function main(argv: string[]): Promise<number> {
  const [cmd, dirArg] = argv;
  if (cmd === 'start') {
    const t0 = performance.now();
    const c = await startCeph({ detached: true, ...(dirArg ? { dir: dirArg } : {}) });
    process.stderr.write(`ceph ready in ${Math.round(performance.now() - t0)} ms\n`);
    process.stdout.write(`${JSON.stringify(c.descriptor(), null, 2)}\n`);
    return 0;
  }
  if (cmd === 'stop' && dirArg) {
    const dir = resolve(dirArg);
    if (!existsSync(join(dir, markerName))) {
      process.stderr.write(`${dir} holds no test cluster\n`);
      return 1;
    }
    const d = JSON.parse(
      await readFile(layoutOf(dir).descriptorPath, 'utf8').catch(() => 'null'),
    ) as CephDescriptor | null;
    if (d) await attachCeph(d).stop();
    else {
      stopLeftovers(dir);
      await rm(dir, { recursive: true, force: true });
    }
    return 0;
  }
  process.stderr.write('usage: ceph.ts start [dir] | stop <dir>\n');
  return 2;
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
      process.exit(1);
    },
  );
}
