/**
 * Makes sure libvirtd (and virtlogd, which it needs to create domains) answer on this host.
 *
 * There is no systemd as PID 1 on the test machines, so the test bed starts the daemons itself
 * with `-d`. Several test processes may race here: that is safe because each daemon takes an
 * exclusive lock on its pid file (/run/virtlogd.pid, /run/libvirtd.pid) and a second copy exits
 * at once; every racer then just waits until the survivor answers. The daemons are shared by
 * all tests on the host and are left running: they are system services, not per-test state.
 */
import { spawn } from 'node:child_process';
import { chmod, chown, readFile, stat } from 'node:fs/promises';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { LibvirtTestbedError } from './errors.js';
import { defaultLibvirtUri, virsh } from './virsh.js';

export const virtlogdSocket = '/run/libvirt/virtlogd-sock';
const probeTimeoutMs = 5_000;
// The first start probes QEMU's capabilities for every emulator: ~50 s on a busy 2-core host.
const startTimeoutMs = 120_000;
const kvmDevice = '/dev/kvm';
const pollMs = 100;

function abortReason(signal: AbortSignal): Error {
  return signal.reason instanceof Error
    ? signal.reason
    : new LibvirtTestbedError('LIBVIRT_ABORTED', 'aborted');
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortReason(signal));
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortReason(signal as AbortSignal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

async function libvirtdAnswers(uri: string, signal?: AbortSignal): Promise<boolean> {
  try {
    await virsh(['version'], { uri, timeoutMs: probeTimeoutMs, ...(signal ? { signal } : {}) });
    return true;
  } catch {
    if (signal?.aborted) throw abortReason(signal);
    return false;
  }
}

function socketAnswers(path: string, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection({ path });
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      s.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

/**
 * Starts a self-daemonizing program and waits for its foreground part to exit. stdio is ignored:
 * a daemon that kept an inherited pipe open would make an execFile-style wait hang forever.
 */
function startDaemon(program: string, signal?: AbortSignal): Promise<{ code: number | null; error?: Error }> {
  return new Promise((resolve) => {
    const child = spawn(program, ['-d'], { stdio: 'ignore', detached: true });
    const timer = setTimeout(() => child.kill('SIGKILL'), startTimeoutMs);
    const onAbort = (): void => {
      child.kill('SIGKILL');
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    const finish = (code: number | null, error?: Error): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      resolve(error ? { code, error } : { code });
    };
    child.once('error', (e) => finish(null, e));
    child.once('exit', (code) => finish(code));
  });
}

/**
 * Gives /dev/kvm the owner and mode udev gives it on a normal Debian host (root:kvm 0660).
 * Without udev it stays root-only 0600; libvirt then sees KVM in its cached QEMU capabilities
 * (probed as root) but not for the QEMU user (libvirt-qemu, group kvm), declares the cache stale
 * and re-probes every emulator on each capabilities lookup: `virsh version` and every domain
 * start took 4-70 s instead of 20 ms.
 */
async function fixKvmDevicePermissions(): Promise<void> {
  let st: Awaited<ReturnType<typeof stat>>;
  try {
    st = await stat(kvmDevice);
  } catch {
    return;
  }
  if ((st.mode & 0o060) === 0o060 && st.gid !== 0) return;
  const gid = await groupId('kvm');
  if (gid === undefined) return;
  await chown(kvmDevice, 0, gid);
  await chmod(kvmDevice, 0o660);
}

async function groupId(name: string): Promise<number | undefined> {
  try {
    const line = (await readFile('/etc/group', 'utf8')).split('\n').find((l) => l.startsWith(`${name}:`));
    const gid = Number(line?.split(':')[2]);
    return Number.isInteger(gid) ? gid : undefined;
  } catch {
    return undefined;
  }
}

export async function ensureLibvirtd(opts: { signal?: AbortSignal } = {}): Promise<{ uri: string }> {
  const uri = defaultLibvirtUri;
  const { signal } = opts;
  await fixKvmDevicePermissions();
  const logdUp = await socketAnswers(virtlogdSocket, probeTimeoutMs);
  if (logdUp && (await libvirtdAnswers(uri, signal))) return { uri };

  const notes: string[] = [];
  if (!logdUp) {
    const r = await startDaemon('virtlogd', signal);
    // A non-zero exit usually means another racer's copy holds the pid file: fine.
    notes.push(`virtlogd -d: ${r.error ? r.error.message : `exit ${r.code}`}`);
  }
  const deadline = performance.now() + startTimeoutMs;
  while (!(await socketAnswers(virtlogdSocket, probeTimeoutMs))) {
    if (performance.now() > deadline) {
      throw new LibvirtTestbedError(
        'LIBVIRT_VIRTLOGD_DOWN',
        `virtlogd does not answer on ${virtlogdSocket} (${notes.join('; ')}); is libvirt-daemon-system installed?`,
      );
    }
    await sleep(pollMs, signal);
  }
  if (await libvirtdAnswers(uri, signal)) return { uri };
  const r = await startDaemon('libvirtd', signal);
  notes.push(`libvirtd -d: ${r.error ? r.error.message : `exit ${r.code}`}`);
  while (!(await libvirtdAnswers(uri, signal))) {
    if (performance.now() > deadline) {
      throw new LibvirtTestbedError(
        'LIBVIRT_DAEMON_DOWN',
        `libvirtd does not answer on ${uri} (${notes.join('; ')}); is libvirt-daemon-system installed?`,
      );
    }
    await sleep(pollMs, signal);
  }
  return { uri };
}
