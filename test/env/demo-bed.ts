/**
 * The stage for demos and benchmarks: a Kata-shaped sandbox (its own test root) and, when asked,
 * a throwaway Ceph cluster, brought up side by side, plus a QMP session on vmplug's private
 * monitor. `close()` tears everything down in order and is idempotent; on Ctrl-C or a crash the
 * test bed's own exit guards (sandbox.ts, ceph.ts, loop.ts) kill and remove what is left, so a
 * demo interrupted at any point leaves no QEMU, Ceph daemon, loop device or temp directory.
 */
import { performance } from 'node:perf_hooks';
import { QmpSession, queryStatus } from '../../qmp/index.js';
import { type CephCluster, startCeph } from './ceph.js';
import {
  createTestRoot,
  type KataSandbox,
  type PodIdentity,
  startKataSandbox,
  type TestRoot,
} from './sandbox.js';

export interface DemoBed {
  root: TestRoot;
  sandbox: KataSandbox;
  /**
   * On vmplug's private monitor (Kata's own stays held by the launcher, as the Kata shim holds
   * it); with `forDaemon`, on the test-only inspect monitor instead, so vmplugd gets the private one.
   */
  qmp: QmpSession;
  /** Present when started with `ceph: true`. */
  ceph: CephCluster | undefined;
  qemuVersion: string;
  timings: { cephReadyMs?: number; sandboxBootMs: number };
  /** Runs `fn` at close, before the sandbox and Ceph go (last registered, first run). */
  defer(fn: () => Promise<unknown>): void;
  close(): Promise<void>;
}

export interface DemoBedOptions {
  ceph?: boolean;
  signal?: AbortSignal;
  /** Told of each milestone (for a demo's narration). */
  log?: (line: string) => void;
  /**
   * vmplugd will drive the sandbox: leave its private monitor free (QEMU serves one client at a
   * time) and open the bed's session on a test-only inspect monitor, to look at QEMU.
   */
  forDaemon?: boolean;
  /** The pod the sandbox belongs to (Kata's persist.json), as discovery reports it. */
  pod?: PodIdentity;
}

export async function startDemoBed(opts: DemoBedOptions = {}): Promise<DemoBed> {
  const log = opts.log ?? (() => {});
  const t0 = performance.now();
  const root = await createTestRoot();
  const signalOpt = opts.signal ? { signal: opts.signal } : {};
  // Both take seconds; neither needs the other.
  const [cephResult, sandboxResult] = await Promise.allSettled([
    opts.ceph
      ? startCeph(signalOpt).then((c) => {
          log(`Ceph ready at ${c.monitors.join(',')} (pool ${c.pool}, user client.${c.clientUser})`);
          return { c, ms: performance.now() - t0 };
        })
      : Promise.resolve(undefined),
    startKataSandbox(root, {
      ...signalOpt,
      ...(opts.forDaemon ? { inspectMonitor: true } : {}),
      ...(opts.pod ? { pod: opts.pod } : {}),
    }).then((s) => {
      log(`sandbox ${s.id} booted in ${(s.bootMs / 1000).toFixed(1)} s (QEMU pid ${s.pid}, TCG)`);
      return s;
    }),
  ]);
  const ceph = cephResult.status === 'fulfilled' ? cephResult.value?.c : undefined;
  if (cephResult.status === 'rejected' || sandboxResult.status === 'rejected') {
    await root.cleanup().catch(() => {});
    await ceph?.stop().catch(() => {});
    throw cephResult.status === 'rejected'
      ? cephResult.reason
      : (sandboxResult as PromiseRejectedResult).reason;
  }
  const sandbox = sandboxResult.value;
  const monitor = opts.forDaemon ? sandbox.inspectQmpPath : sandbox.vmplugQmpPath;
  if (monitor === undefined) {
    await sandbox.stop().catch(() => {});
    await root.cleanup().catch(() => {});
    await ceph?.stop().catch(() => {});
    throw new Error('the sandbox has no inspect monitor');
  }
  const qmp = QmpSession.start(monitor, { defaultTimeoutMs: 30_000 });
  const deferred: Array<() => Promise<unknown>> = [];
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      for (const fn of deferred.reverse()) await fn().catch(() => {});
      await qmp.close().catch(() => {});
      await sandbox.stop().catch(() => {});
      await root.cleanup().catch(() => {});
      await ceph?.stop().catch(() => {});
    })();
    return closing;
  };
  try {
    await qmp.ready({ timeoutMs: 10_000 });
    const status = await queryStatus(qmp);
    const v = qmp.greeting?.QMP.version.qemu;
    const qemuVersion = v ? `${v.major}.${v.minor}.${v.micro}` : 'unknown';
    const which = opts.forDaemon ? 'the test-only inspect monitor' : "vmplug's private monitor";
    log(`QMP session on ${which}: QEMU ${qemuVersion}, guest ${status.status}`);
    const timings: DemoBed['timings'] = { sandboxBootMs: sandbox.bootMs };
    if (cephResult.value) timings.cephReadyMs = cephResult.value.ms;
    return {
      root,
      sandbox,
      qmp,
      ceph,
      qemuVersion,
      timings,
      defer: (fn) => {
        deferred.push(fn);
      },
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}
