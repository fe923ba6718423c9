/**
 * libvirt test bed: the host's libvirtd (started if needed) running test domains that boot the
 * test guest (test/env/guest.ts) with its serial-port protocol, for tests of vmplug's libvirt
 * side. Domains are transient (`virsh create`): destroying one also removes its definition.
 *
 * Each domain's files live in its own temp dir (console log, the two guest-protocol sockets,
 * anything a test puts there). Teardown: `destroy()`, and at process exit or SIGINT/SIGTERM a
 * synchronous `virsh destroy` of every domain still running. A domain leaked by a process that
 * was killed outright is destroyed by the next `startTestDomain` (its metadata names its owner).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { ensureGuestImage, GuestAgent } from './guest.js';
import { ensureLibvirtd } from './libvirt/daemon.js';
import { metadataNamespace, testDomainXml } from './libvirt/domain-xml.js';
import { LibvirtTestbedError } from './libvirt/errors.js';
import { defaultLibvirtUri, virsh } from './libvirt/virsh.js';

export { ensureLibvirtd } from './libvirt/daemon.js';
export { LibvirtTestbedError } from './libvirt/errors.js';
export { defaultLibvirtUri, VirshError, virsh } from './libvirt/virsh.js';

export const testDomainPrefix = 'vmplug-test-';
const domainDirPrefix = 'vmplug-lv-';
const namePattern = /^vmplug-test-[a-z0-9-]{1,40}$/;
// memhp_default_state=online: hot-added memory is usable at once (the busybox guest has no udev to online it).
const guestCmdline = 'console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init memhp_default_state=online';

export interface TestDomain {
  name: string;
  uuid: string;
  uri: string;
  /** The domain's own temp dir (mode 0711 so QEMU, running as libvirt-qemu, reaches files in it). */
  dir: string;
  consoleLog: string;
  guestEventsPath: string;
  guestCommandPath: string;
  guest: GuestAgent;
  /** From `virsh create` to the guest's READY, in ms. */
  bootMs: number;
  destroy(): Promise<void>;
}

export interface StartTestDomainOptions {
  name?: string;
  memoryMiB?: number;
  maxMemoryMiB?: number;
  vcpus?: number;
  maxVcpus?: number;
  memorySlots?: number;
  rootPorts?: number;
  signal?: AbortSignal;
  /** Boot (create + READY) timeout; default 90 s. */
  bootTimeoutMs?: number;
}

/** Domains this process runs, so exit handlers can reach them synchronously. */
interface Registry {
  domains: Map<string, { uri: string; dir: string }>;
  unhook: () => void;
}
const registryKey = Symbol.for('vmplug.libvirtTestbed.registry');

function destroySync(reg: Registry): void {
  for (const [name, { uri, dir }] of reg.domains) {
    try {
      execFileSync('virsh', ['-q', '-c', uri, 'destroy', name], { stdio: 'ignore', timeout: 15_000 });
    } catch {
      // Already gone.
    }
    rmSync(dir, { recursive: true, force: true });
  }
  reg.domains.clear();
}

function registry(): Registry {
  // One per process, hung on `process` (which it cleans up) rather than on a module variable.
  const holder = process as unknown as Record<symbol, Registry | undefined>;
  const existing = holder[registryKey];
  if (existing) return existing;
  const reg: Registry = { domains: new Map(), unhook: () => {} };
  const onExit = (): void => destroySync(reg);
  const onSignal = (sig: NodeJS.Signals): void => {
    destroySync(reg);
    reg.unhook();
    if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
  };
  reg.unhook = () => {
    process.off('exit', onExit);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    delete holder[registryKey];
  };
  process.on('exit', onExit);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  holder[registryKey] = reg;
  return reg;
}

/** Field 22 of /proc/<pid>/stat: tells a live owner from a later process that reused its pid. */
async function processStartTicks(pid: number): Promise<string | null> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

/** Destroys test domains whose owning process is gone (killed before it could clean up). */
export async function sweepLeakedTestDomains(
  opts: { uri?: string; signal?: AbortSignal } = {},
): Promise<string[]> {
  const uri = opts.uri ?? defaultLibvirtUri;
  const common = { uri, ...(opts.signal ? { signal: opts.signal } : {}) };
  const { stdout } = await virsh(['list', '--all', '--name'], common);
  const swept: string[] = [];
  for (const name of stdout.split('\n').map((l) => l.trim())) {
    if (!name.startsWith(testDomainPrefix)) continue;
    let owner: { pid: number; start: string; dir: string } | null = null;
    try {
      const { stdout: xml } = await virsh(['dumpxml', name], common);
      const m = new RegExp(
        `<vmplug:owner xmlns:vmplug="${metadataNamespace}" pid="(\\d+)" start="(\\d+)" dir="([^"]*)"`,
      ).exec(xml);
      if (m?.[1] && m[2] && m[3] !== undefined) owner = { pid: Number(m[1]), start: m[2], dir: m[3] };
    } catch {
      continue; // Gone meanwhile.
    }
    if (owner && (await processStartTicks(owner.pid)) === owner.start) continue;
    await virsh(['destroy', name], common).catch(() => {});
    await virsh(['undefine', name], common).catch(() => {});
    // Only ever a dir this module made: the metadata is ours, but check before removing.
    if (owner && dirname(owner.dir) === tmpdir() && basename(owner.dir).startsWith(domainDirPrefix)) {
      await rm(owner.dir, { recursive: true, force: true });
    }
    swept.push(name);
  }
  return swept;
}

export async function startTestDomain(opts: StartTestDomainOptions = {}): Promise<TestDomain> {
  const name = opts.name ?? `${testDomainPrefix}${randomBytes(4).toString('hex')}`;
  if (!namePattern.test(name)) {
    throw new LibvirtTestbedError('LIBVIRT_BAD_NAME', `test domain names match ${namePattern}: ${name}`);
  }
  const { signal } = opts;
  const sig = signal ? { signal } : {};
  const { uri } = await ensureLibvirtd(sig);
  await sweepLeakedTestDomains({ uri, ...sig });
  const image = await ensureGuestImage(signal);
  const startTicks = await processStartTicks(process.pid);

  const dir = await mkdtemp(join(tmpdir(), domainDirPrefix));
  // QEMU runs as libvirt-qemu: it must traverse the dir to reach sockets and disk images in it.
  await chmod(dir, 0o711);
  const consoleLog = join(dir, 'console.log');
  const guestEventsPath = join(dir, 'events.sock');
  const guestCommandPath = join(dir, 'cmd.sock');
  const xmlPath = join(dir, 'domain.xml');
  const maxVcpus = opts.maxVcpus ?? 4;
  await writeFile(
    xmlPath,
    testDomainXml({
      name,
      accel: process.env.VMPLUG_TEST_ACCEL === 'kvm' ? 'kvm' : 'tcg',
      kernel: image.kernel,
      initrd: image.initrd,
      cmdline: guestCmdline,
      memoryMiB: opts.memoryMiB ?? 256,
      maxMemoryMiB: opts.maxMemoryMiB ?? 1024,
      memorySlots: opts.memorySlots ?? 4,
      vcpus: opts.vcpus ?? 1,
      maxVcpus,
      rootPorts: opts.rootPorts ?? 4,
      consoleLog,
      eventsSocket: guestEventsPath,
      commandSocket: guestCommandPath,
      owner: { pid: process.pid, startTicks: startTicks ?? '0', dir },
    }),
    { mode: 0o600 },
  );

  const reg = registry();
  let guest: GuestAgent | undefined;
  let destroying: Promise<void> | undefined;
  const destroy = (): Promise<void> => {
    destroying ??= (async () => {
      await guest?.close().catch(() => {});
      await virsh(['destroy', name], { uri }).catch((err: unknown) => {
        if (!/not found|not running|no domain|failed to get domain/i.test(String((err as Error).message)))
          throw err;
      });
      // A transient domain is gone once destroyed; undefine covers a persistent one of that name.
      await virsh(['undefine', name], { uri }).catch(() => {});
      reg.domains.delete(name);
      if (reg.domains.size === 0) reg.unhook();
      await rm(dir, { recursive: true, force: true });
    })();
    return destroying;
  };

  const bootTimeoutMs = opts.bootTimeoutMs ?? 90_000;
  const started = performance.now();
  reg.domains.set(name, { uri, dir });
  try {
    await virsh(['create', xmlPath], { uri, ...sig });
    const { stdout: uuid } = await virsh(['domuuid', name], { uri, ...sig });
    guest = await GuestAgent.connect(guestEventsPath, guestCommandPath, { timeoutMs: bootTimeoutMs, ...sig });
    // libvirt cannot hold the guest until we connect (no wait=on): waitReady falls back to a
    // snapshot if READY went out before we were there.
    await guest.waitReady({ timeoutMs: Math.max(1, started + bootTimeoutMs - performance.now()) });
    const bootMs = (guest.readySince ?? performance.now()) - started;
    return {
      name,
      uuid: uuid.trim(),
      uri,
      dir,
      consoleLog,
      guestEventsPath,
      guestCommandPath,
      guest,
      bootMs,
      destroy,
    };
  } catch (err) {
    const consoleTail = await readFile(consoleLog, 'utf8').catch(() => '');
    await destroy().catch(() => {});
    throw new LibvirtTestbedError(
      'LIBVIRT_DOMAIN_START_FAILED',
      `test domain ${name} did not start: ${(err as Error).message}; console: ${consoleTail.slice(-1500)}`,
      { cause: err },
    );
  }
}
