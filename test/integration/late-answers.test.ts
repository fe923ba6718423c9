import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { QmpClient } from '../../qmp/index.js';
import { type DaemonProcess, startDaemonProcess, waitServing } from '../env/daemon.js';
import { vmplugObjects } from '../env/inspect.js';
import { createLoopDevice, type LoopDevice } from '../env/loop.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../env/sandbox.js';

// Late QMP answers (issue 10) against a real vmplugd and a real Kata-shaped sandbox: the guest's
// QEMU is stopped (SIGSTOP) right before an attach step, vmplugd's QMP timeout (short here) runs
// out, and QEMU is resumed: the attach must be rolled back on QEMU's late answer alone (no retry,
// no reconcile round: the periodic reconcile is off), leave nothing in QEMU, and the same PUT
// must then attach a disk the guest sees. The moment is exact: the failpoint stop-after:<State>
// makes vmplugd SIGSTOP itself once that record is durable, the test stops QEMU, then lets vmplugd
// go on, so its next QMP command (blockdev-add after Pending, the qom-list before device_add after
// BlockdevAdded) meets a stopped QEMU. Timings are printed, never asserted.

const MiB = 1024 * 1024;
const QMP_TIMEOUT_MS = 2_000;

interface Problem {
  status: number;
  code: string;
  retryable?: boolean;
  detail?: string;
}

/** The one-letter state of a process (R, S, T for stopped...), undefined once it is gone. */
async function processState(pid: number): Promise<string | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  return stat?.slice(stat.lastIndexOf(')') + 2).charAt(0);
}

/**
 * Each time vmplugd's stop-after failpoint stops it: the first time `first()` runs (it stops
 * QEMU), then vmplugd goes on (SIGCONT). Later stops (the retried attach passes the same state)
 * only go on.
 */
function continueOnStop(d: DaemonProcess, first: () => void): { stop(): void } {
  let firstDone = false;
  let busy = false;
  const timer = setInterval(() => {
    if (busy) return;
    busy = true;
    void processState(d.pid)
      .then((state) => {
        if (state !== 'T') return;
        if (!firstDone) {
          firstDone = true;
          first();
        }
        process.kill(d.pid, 'SIGCONT');
      })
      .finally(() => {
        busy = false;
      });
  }, 5);
  return { stop: () => clearInterval(timer) };
}

describe('late QMP answers: QEMU stopped during an attach step past the QMP timeout, then resumed', () => {
  let root: TestRoot;
  let sandbox: KataSandbox;
  let dir: string;
  let inspector: QmpClient;
  let daemon: DaemonProcess | undefined;
  const loops: LoopDevice[] = [];

  beforeAll(async () => {
    root = await createTestRoot();
    dir = await mkdtemp(join(tmpdir(), 'vmpl-'));
    sandbox = await startKataSandbox(root, { inspectMonitor: true });
    inspector = await QmpClient.connect(sandbox.inspectQmpPath ?? '');
  });

  afterEach(async () => {
    // Whatever happened, QEMU and vmplugd run again before the next test or the teardown.
    if (sandbox) process.kill(sandbox.pid, 'SIGCONT');
    if (daemon) process.kill(daemon.pid, 'SIGCONT');
    await daemon?.stop();
    daemon = undefined;
  });

  afterAll(async () => {
    if (inspector) expect(await vmplugObjects(inspector)).toEqual([]);
    await inspector?.close();
    await sandbox?.stop();
    await root?.cleanup();
    for (const l of loops) await l.detach().catch(() => undefined);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** Same state dir each time (a restart finds the journal); no periodic reconcile round. */
  async function start(failpoint?: string, opts: { serving?: boolean } = {}): Promise<DaemonProcess> {
    const d = await startDaemonProcess({
      dir,
      monitorDir: root.monitorDir,
      kataVmRoot: root.kataVmRoot,
      logLevel: 'info',
      extraArgs: ['--qmp-timeout-ms', String(QMP_TIMEOUT_MS), '--reconcile-interval-ms', '0'],
      ...(failpoint !== undefined ? { failpoint } : {}),
    });
    if (opts.serving !== false) await waitServing(d, sandbox.id);
    return d;
  }

  async function blockBody(bus: string): Promise<Record<string, unknown>> {
    const loop = await createLoopDevice(16 * MiB);
    loops.push(loop);
    return { mode: 'block', bus, source: { type: 'hostDevice', path: loop.path } };
  }

  /**
   * One request through vmplugd whose stop-after failpoint is answered by stopping QEMU first:
   * its next QMP command meets a stopped QEMU (left stopped). Answered 502 BACKEND_FAILED,
   * retryable, and the journal record says Detaching; answers the record's path.
   */
  async function intoStoppedQemu(
    d: DaemonProcess,
    method: 'PUT' | 'DELETE',
    volumeId: string,
    body?: Record<string, unknown>,
  ): Promise<{ record: string; answer: Problem }> {
    const volPath = `/v1/sandboxes/${sandbox.id}/volumes/${volumeId}`;
    let qemuStopped = false;
    const watch = continueOnStop(d, () => {
      process.kill(sandbox.pid, 'SIGSTOP');
      qemuStopped = true;
    });
    try {
      const answer = await d.call<Problem>(method, volPath, body, 60_000);
      expect(qemuStopped).toBe(true);
      expect(answer.status, JSON.stringify(answer.body)).toBe(502);
      expect(answer.body).toMatchObject({ code: 'BACKEND_FAILED', retryable: true });
      const record = join(d.stateDir, 'journal', sandbox.id, `${volumeId}.json`);
      expect(JSON.parse(await readFile(record, 'utf8')).state).toBe('Detaching');
      return { record, answer: answer.body };
    } finally {
      watch.stop();
    }
  }

  /**
   * The attach whose step after the failpoint's state meets a stopped QEMU; while QEMU stays
   * stopped the same PUT and a DELETE get 503 at once. Answers the record's path.
   */
  async function attachIntoStoppedQemu(
    d: DaemonProcess,
    volumeId: string,
    body: Record<string, unknown>,
    step: string,
  ): Promise<string> {
    const volPath = `/v1/sandboxes/${sandbox.id}/volumes/${volumeId}`;
    const { record, answer } = await intoStoppedQemu(d, 'PUT', volumeId, body);
    expect(answer.detail).toContain(`${step} timed out`);
    const t0 = performance.now();
    const retry = await d.call<Problem>('PUT', volPath, body);
    const retryMs = performance.now() - t0;
    expect(retry.status).toBe(503);
    expect(retry.body).toMatchObject({ code: 'DETACH_PENDING', retryable: true });
    const del = await d.call<Problem>('DELETE', volPath);
    expect(del.status).toBe(503);
    console.log(
      `${step} in doubt: first PUT 502 ${answer.code}, retry ${retry.status} ${retry.body.code} ` +
        `in ${retryMs.toFixed(1)} ms, DELETE ${del.status}`,
    );
    return record;
  }

  /** Resumes QEMU and waits, sending vmplugd nothing, until the record is gone; answers ms. */
  async function resumeAndAwaitRollback(record: string): Promise<number> {
    const resumedAt = performance.now();
    process.kill(sandbox.pid, 'SIGCONT');
    while (existsSync(record)) {
      if (performance.now() - resumedAt > 60_000) throw new Error('the rollback did not happen within 60 s');
      await new Promise((r) => setTimeout(r, 5));
    }
    return performance.now() - resumedAt;
  }

  /** The same PUT attaches, the guest sees the disk; DELETE removes it from guest and QEMU. */
  async function sameAttachWorks(d: DaemonProcess, volumeId: string, body: Record<string, unknown>) {
    const volPath = `/v1/sandboxes/${sandbox.id}/volumes/${volumeId}`;
    const watch = continueOnStop(d, () => {});
    try {
      const ok = await d.call<{ serial: string; state: string }>('PUT', volPath, body, 60_000);
      expect(ok.status, JSON.stringify(ok.body)).toBe(201);
      expect(ok.body.state).toBe('Attached');
      const disk = await sandbox.guest.waitForDisk((g) => g.serial === ok.body.serial, { timeoutMs: 30_000 });
      expect((await d.call('DELETE', volPath, undefined, 60_000)).status).toBe(204);
      await sandbox.guest.waitForDiskGone(disk.name, { timeoutMs: 30_000 });
      expect(await vmplugObjects(inspector)).toEqual([]);
    } finally {
      watch.stop();
    }
  }

  /** vmplugd's log line of the settle (it follows the record's removal by a moment); bounded. */
  async function settleLine(
    d: DaemonProcess,
  ): Promise<{ settleMs?: number; lateMs?: number; command?: string }> {
    const find = () => d.lines.find((l) => l.includes('late QMP answer: rollback/detach finished'));
    for (const deadline = performance.now() + 10_000; find() === undefined && performance.now() < deadline; )
      await new Promise((r) => setTimeout(r, 10));
    const line = find();
    expect(
      line,
      `vmplugd logged the settle: ${d.lines.filter((l) => l.includes('late')).join('\n')}`,
    ).toBeDefined();
    return JSON.parse(line ?? '{}');
  }

  // After BlockdevAdded (a state the steps pass without writing; the failpoint still fires there)
  // the next command is device_add itself: a fresh attach does not look at QEMU's devices first.
  // After Pending it is blockdev-add only when the lane was chosen before Pending: a named bus
  // writes Pending beside the lane inspection (engine.ts), which QEMU stopped there would catch
  // instead (a clean 502 refusal, no record). `auto` chooses the lane (scsi here) first.
  for (const { state, step, bus } of [
    { state: 'Pending', step: 'blockdev-add', bus: 'auto' },
    { state: 'BlockdevAdded', step: 'device_add', bus: 'virtio-blk' },
  ]) {
    it(`${step} (${bus}) answered late: rolled back on the answer alone, then the same PUT attaches`, async () => {
      daemon = await start(`stop-after:${state}`);
      const volumeId = `late-${step}`;
      const body = await blockBody(bus);
      const record = await attachIntoStoppedQemu(daemon, volumeId, body, step);
      const ms = await resumeAndAwaitRollback(record);
      const s = await settleLine(daemon);
      console.log(
        `${step} (${bus}): SIGCONT -> rolled back (record gone) ${ms.toFixed(0)} ms; vmplugd: late answer ` +
          `${s.lateMs} ms after sending, rollback ${s.settleMs} ms after the answer`,
      );
      expect(s.command).toBe(step);
      expect(await vmplugObjects(inspector)).toEqual([]);
      await sameAttachWorks(daemon, volumeId, body);
    });
  }

  it('a detach step answered late: the detach finishes on the answer alone', async () => {
    daemon = await start('stop-after:Detaching');
    const d = daemon;
    const volumeId = 'late-detach';
    const body = await blockBody('scsi');
    const volPath = `/v1/sandboxes/${sandbox.id}/volumes/${volumeId}`;
    const put = await d.call<{ serial: string }>('PUT', volPath, body, 60_000);
    expect(put.status, JSON.stringify(put.body)).toBe(201);
    const disk = await sandbox.guest.waitForDisk((g) => g.serial === put.body.serial, { timeoutMs: 30_000 });
    const { record } = await intoStoppedQemu(d, 'DELETE', volumeId);
    expect((await d.call<Problem>('DELETE', volPath)).body.code).toBe('DETACH_PENDING');
    expect((await d.call<Problem>('PUT', volPath, body)).body.code).toBe('DETACH_PENDING');
    const ms = await resumeAndAwaitRollback(record);
    const s = await settleLine(d);
    console.log(
      `detach, ${s.command} in doubt: SIGCONT -> detach finished (record gone) ${ms.toFixed(0)} ms; ` +
        `vmplugd: late answer ${s.lateMs} ms after sending, detach done ${s.settleMs} ms after the answer`,
    );
    await sandbox.guest.waitForDiskGone(disk.name, { timeoutMs: 30_000 });
    expect(await vmplugObjects(inspector)).toEqual([]);
    expect((await d.call('DELETE', volPath)).status).toBe(204);
    await sameAttachWorks(d, volumeId, body);
  });

  /** An attach left in doubt (blockdev-add into a stopped QEMU), then vmplugd SIGKILLed; QEMU stays stopped. */
  async function crashedInDoubt(
    volumeId: string,
  ): Promise<{ body: Record<string, unknown>; record: string }> {
    const d = await start('stop-after:Pending');
    daemon = d;
    // `auto`: the lane is chosen before Pending (see the blockdev-add case above).
    const body = await blockBody('auto');
    const record = await attachIntoStoppedQemu(d, volumeId, body, 'blockdev-add');
    await d.crash();
    daemon = undefined;
    return { body, record };
  }

  it('vmplugd killed (SIGKILL) while in doubt: the restarted one rolls back at start-up', async () => {
    const volumeId = 'late-crash';
    const { body, record } = await crashedInDoubt(volumeId);
    process.kill(sandbox.pid, 'SIGCONT');
    // The late answer goes to a dead connection; the journal (Detaching) is what counts.
    daemon = await start();
    expect(existsSync(record)).toBe(false);
    expect(await vmplugObjects(inspector)).toEqual([]);
    await sameAttachWorks(daemon, volumeId, body);
  });

  it('vmplugd killed while in doubt and restarted while QEMU is still stopped: rolled back once QEMU answers', async () => {
    const volumeId = 'late-crash-stopped';
    const { body, record } = await crashedInDoubt(volumeId);
    // QEMU still stopped: the new vmplugd's monitor connection gets no greeting, its start-up
    // reconcile skips the sandbox; no periodic round follows (interval 0).
    const d = await start(undefined, { serving: false });
    daemon = d;
    const skippedLine = () => d.lines.some((l) => l.includes('reconcile: sandbox unreachable'));
    for (const deadline = performance.now() + 60_000; !skippedLine(); ) {
      if (performance.now() > deadline) throw new Error('the start-up reconcile did not run within 60 s');
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(existsSync(record)).toBe(true);
    const ms = await resumeAndAwaitRollback(record);
    console.log(
      `restarted while QEMU stopped: SIGCONT -> rolled back by the kicked reconcile ${ms.toFixed(0)} ms`,
    );
    expect(await vmplugObjects(inspector)).toEqual([]);
    await waitServing(d, sandbox.id);
    await sameAttachWorks(d, volumeId, body);
  });
});
