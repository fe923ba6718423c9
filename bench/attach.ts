/**
 * Attach and detach through vmplugd's REST API against the same QMP commands sent bare, in one
 * run, on real Kata-shaped sandboxes (TCG guests polling /sys/block every 20 ms), real Ceph and
 * loop devices; then a concurrency run across several sandboxes, with vmplugd's memory.
 *
 * Latency phase: for each mode (rbd, block) x frontend (scsi, virtio-blk), every round does one
 * REST attach + detach through vmplugd on sandbox A and the bare sequence of test/env/hotplug.ts
 * (object-add secret, blockdev-add, device_add / device_del, DEVICE_DELETED, blockdev-del,
 * object-del) on sandbox B's private monitor. B lives in another test root, so vmplugd never sees
 * it and the two phases interleave round by round (load from other processes hits both alike).
 *   attach -> reply: PUT sent -> 201 | first QMP command sent -> device_add's reply
 *   attach -> guest: PUT sent / first command sent -> the guest reports the disk (by serial)
 *   detach -> reply: DELETE sent -> 204 | device_del sent -> blockdev-del (object-del) done,
 *                    without the bare script's wait for the guest in between
 *   detach -> guest: DELETE sent / device_del sent -> the guest reports the disk gone
 *
 * Concurrency phase: N attaches at once across S sandboxes (half rbd images, half loop devices,
 * bus auto), then N detaches at once; throughput, failures, time until every guest saw (lost)
 * every disk; vmplugd's VmRSS / VmHWM idle and sampled under that load. Then vmplugd is stopped
 * and the same volumes go to the same sandboxes as bare QMP (one at a time per sandbox, like
 * vmplugd), for the host's own throughput under the same load.
 *
 * Prints figures; asserts nothing. Everything (guests, Ceph, images, loop devices, vmplugd, temp
 * dirs) is removed however it ends.
 *
 *   npm run bench:attach [-- --rounds 20 --sandboxes 10 --attaches 100]
 *     [--skip-latency] [--cpu-prof DIR]   (DIR: vmplugd's .cpuprofile, written when it stops)
 *     [--build]   (vmplugd from a tsc build, as installed, rather than the sources through tsx)
 *     [--phases]   (vmplugd logs at debug; medians of where each fresh attach's time went)
 *     [--uv-threads N]   (vmplugd started with UV_THREADPOOL_SIZE=N instead of its unit's)
 *     [--node-arg OPT]...   (node options for vmplugd instead of production's, bin/vmplugd.js)
 */
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { type AttachRequest, VmplugClient } from '../cli/client.js';
import { parseSandboxId, parseVolumeId } from '../core/ids.js';
import {
  blockdevAdd,
  blockdevDel,
  deviceAdd,
  deviceDelAndWait,
  objectAdd,
  objectDel,
  QmpSession,
} from '../qmp/index.js';
import { rootPortId, volumeNames } from '../storage/naming.js';
import { deviceArgs, type Lane, rbdConf, secretObject } from '../storage/qemu-args.js';
import { DIRECT_MODE_ANNOTATION, parseMonitors, Secret } from '../storage/volume-spec.js';
import { type CephCluster, startCeph } from '../test/env/ceph.js';
import {
  buildDaemon,
  type DaemonProcess,
  productionNodeOptions,
  startDaemonProcess,
} from '../test/env/daemon.js';
import type { GuestAgent } from '../test/env/guest.js';
import {
  blockdevOf,
  type DiskBackend,
  type HotplugDisk,
  hotAdd,
  hotRemove,
  removeLeftovers,
} from '../test/env/hotplug.js';
import { createLoopDevice, type LoopDevice } from '../test/env/loop.js';
import { rbdSource } from '../test/env/rbd-request.js';
import { createTestRoot, type KataSandbox, startKataSandbox, type TestRoot } from '../test/env/sandbox.js';
import { hostContext, printTable, type Summary, summarize } from './figures.js';

const MiB = 1024 * 1024;

function flag(name: string, fallback: number): number {
  const args = process.argv.slice(2);
  const i = args.indexOf(`--${name}`);
  const v = i >= 0 ? Number(args[i + 1]) : fallback;
  if (!Number.isInteger(v) || v < 1) throw new Error(`--${name} wants a positive integer`);
  return v;
}

function stringFlag(name: string): string | undefined {
  const args = process.argv.slice(2);
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
}
const has = (name: string): boolean => process.argv.slice(2).includes(`--${name}`);

const rounds = flag('rounds', 20);
/** Profiles vmplugd (node --cpu-prof into this dir; written when it stops, after the concurrency run). */
const cpuProfDir = stringFlag('cpu-prof');
/** Skips the latency phase (for profiling the concurrency phase alone). */
const skipLatency = has('skip-latency');
/** vmplugd at log level debug, and its per-attach phase timings (engine.ts 'attach timing') printed. */
const phasesWanted = has('phases');
/** vmplugd from a tsc build (what production runs) instead of the sources through tsx. */
const fromBuild = has('build');
/**
 * libuv's pool (every fs call, dns, crypto) as vmplugd starts with it: only the environment at
 * process start sizes it. Defaults to the installed unit's value, so the bench measures what runs.
 * Measured 2026-12-06 (2 cores, two alternating pairs of runs): 16 threads against the default 4
 * gave attach throughput 0.22x/0.22x vs 0.26x/0.20x of bare and detach 0.82x/0.47x vs 0.62x/0.75x,
 * no gain above the noise, so the unit and the DaemonSet leave the default.
 */
const uvThreads = stringFlag('uv-threads');
/**
 * Node options for vmplugd (repeatable), e.g. `--node-arg --max-semi-space-size=16`; default those
 * production starts it with (bin/vmplugd.js's first line), so the bench measures what runs.
 */
const givenNodeArgs = process.argv.slice(2).flatMap((a, i, all) => (all[i - 1] === '--node-arg' ? [a] : []));
const sandboxCount = flag('sandboxes', 10);
const attachCount = flag('attaches', 100);
/** Guests booted at once: more than a few TCG boots on 2 cores only slow each other down. */
const bootBatch = 3;

const out = (line = ''): void => {
  process.stdout.write(`${line}\n`);
};
const secs = (msv: number): string => `${(msv / 1000).toFixed(1)} s`;

/** Everything the bench made, for one teardown that runs however the bench ends. */
class Stage {
  readonly roots: TestRoot[] = [];
  readonly loops: LoopDevice[] = [];
  readonly images: string[] = [];
  readonly sessions: QmpSession[] = [];
  ceph: CephCluster | undefined;
  daemon: DaemonProcess | undefined;
  #closing: Promise<void> | undefined;

  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.daemon?.stop().catch(() => {});
      for (const s of this.sessions) await s.close().catch(() => {});
      for (const r of this.roots) await r.cleanup().catch(() => {});
      if (this.ceph) for (const i of this.images) await this.ceph.removeImage(i).catch(() => {});
      await Promise.allSettled(this.loops.map((l) => l.detach()));
      await this.ceph?.stop().catch(() => {});
    })();
    return this.#closing;
  }

  async image(tag: string, size = 64 * MiB): Promise<string> {
    const ceph = this.ceph as CephCluster;
    const name = `bench-${tag}-${randomBytes(3).toString('hex')}`;
    this.images.push(name);
    await ceph.createImage(name, size);
    return name;
  }

  async loop(size = 64 * MiB): Promise<LoopDevice> {
    const l = await createLoopDevice(size);
    this.loops.push(l);
    return l;
  }
}

async function bootSandboxes(root: TestRoot, n: number): Promise<KataSandbox[]> {
  const out: KataSandbox[] = [];
  for (let i = 0; i < n; i += bootBatch) {
    const batch = Array.from({ length: Math.min(bootBatch, n - i) }, () =>
      startKataSandbox(root, { bootTimeoutMs: 180_000 }),
    );
    const settled = await Promise.allSettled(batch);
    for (const s of settled) if (s.status === 'fulfilled') out.push(s.value);
    const failed = settled.find((s) => s.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
  }
  return out;
}

async function memory(pid: number): Promise<{ rssKiB: number; hwmKiB: number }> {
  const text = await readFile(`/proc/${pid}/status`, 'utf8');
  const kib = (key: string): number =>
    Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
  return { rssKiB: kib('VmRSS'), hwmKiB: kib('VmHWM') };
}
const mib = (kib: number): string => `${(kib / 1024).toFixed(1)} MiB`;

async function waitDiscovered(client: VmplugClient, ids: string[]): Promise<number> {
  const started = performance.now();
  const deadline = Date.now() + 120_000;
  for (;;) {
    const seen = new Set(
      (await client.listSandboxes({}, { timeoutMs: 10_000 }).catch(() => []))
        .filter((s) => s.state === 'running')
        .map((s) => s.id),
    );
    if (ids.every((id) => seen.has(id))) return performance.now() - started;
    if (Date.now() > deadline) throw new Error(`vmplugd discovered ${seen.size} of ${ids.length} sandboxes`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Resolves with performance.now() when the guest lost `name` (armed before the call that removes it). */
function armLost(guest: GuestAgent, name: string): { at: () => Promise<number>; off: () => void } {
  let lostAt: number | undefined;
  const off = guest.onEvent((e) => {
    if (e.type === 'disk-del' && e.name === name) lostAt ??= e.at;
  });
  return {
    at: async () => {
      const gone = await guest.waitForDiskGone(name, { timeoutMs: 60_000 });
      return lostAt ?? gone.at;
    },
    off,
  };
}

interface CaseSamples {
  attachReply: number[];
  attachGuest: number[];
  detachReply: number[];
  detachGuest: number[];
}
const emptySamples = (): CaseSamples => ({
  attachReply: [],
  attachGuest: [],
  detachReply: [],
  detachGuest: [],
});

interface LatencyCase {
  label: string;
  rest: { volumeId: string; body: AttachRequest };
  bare: HotplugDisk;
  vmplug: CaseSamples;
  qmp: CaseSamples;
  /** Sum of the attach timeline's step durations (the QMP side effects, as vmplugd timed them). */
  steps: number[];
}

async function restRound(client: VmplugClient, sandbox: KataSandbox, c: LatencyCase): Promise<void> {
  const guest = sandbox.guest;
  const sent = performance.now();
  const { attachment } = await client.attach(sandbox.id, c.rest.volumeId, c.rest.body);
  c.vmplug.attachReply.push(performance.now() - sent);
  c.steps.push(attachment.timeline.reduce((sum, t) => sum + t.ms, 0));
  const disk = await guest.waitForDisk((d) => d.serial === attachment.serial, { timeoutMs: 60_000 });
  c.vmplug.attachGuest.push(Math.max(disk.seenAt, sent) - sent);
  const lost = armLost(guest, disk.name);
  try {
    const del = performance.now();
    await client.detach(sandbox.id, c.rest.volumeId);
    c.vmplug.detachReply.push(performance.now() - del);
    c.vmplug.detachGuest.push((await lost.at()) - del);
  } finally {
    lost.off();
  }
}

async function bareRound(qmp: QmpSession, sandbox: KataSandbox, c: LatencyCase): Promise<void> {
  const { disk, timings: t } = await hotAdd(qmp, sandbox.guest, c.bare, { timeoutMs: 60_000 });
  c.qmp.attachReply.push((t.secretMs ?? 0) + t.blockdevAddMs + t.deviceAddMs);
  c.qmp.attachGuest.push(t.totalMs);
  const d = await hotRemove(qmp, sandbox.guest, c.bare, disk.name, { timeoutMs: 60_000 });
  c.qmp.detachReply.push(d.deviceDeletedMs + d.releaseMs);
  c.qmp.detachGuest.push(d.guestLostMs);
}

function printComparison(title: string, cases: LatencyCase[], pick: (s: CaseSamples) => number[]): void {
  const f = (x: number): string => (x < 100 ? x.toFixed(1) : x.toFixed(0));
  out(`\n${title}`);
  out(
    `  ${'case'.padEnd(20)}${'vmplug med'.padStart(11)}${'p99'.padStart(8)}${'min'.padStart(8)}${'max'.padStart(8)}` +
      `${'bare med'.padStart(11)}${'p99'.padStart(8)}${'min'.padStart(8)}${'max'.padStart(8)}${'ratio med'.padStart(11)}${'p99'.padStart(7)}`,
  );
  for (const c of cases) {
    const v: Summary = summarize(pick(c.vmplug));
    const b: Summary = summarize(pick(c.qmp));
    out(
      `  ${c.label.padEnd(20)}${f(v.median).padStart(11)}${f(v.p99).padStart(8)}${f(v.min).padStart(8)}${f(v.max).padStart(8)}` +
        `${f(b.median).padStart(11)}${f(b.p99).padStart(8)}${f(b.min).padStart(8)}${f(b.max).padStart(8)}` +
        `${(v.median / b.median).toFixed(2).padStart(10)}x${(v.p99 / b.p99).toFixed(2).padStart(6)}x`,
    );
  }
}

async function latencyPhase(
  stage: Stage,
  client: VmplugClient,
  a: KataSandbox,
  b: KataSandbox,
  qmpB: QmpSession,
  confPath: string,
): Promise<void> {
  const ceph = stage.ceph as CephCluster;
  const sidB = parseSandboxId(b.id);
  const [imgA, imgB, loopA, loopB] = await Promise.all([
    stage.image('lat-a'),
    stage.image('lat-b'),
    stage.loop(),
    stage.loop(),
  ]);
  const fronts: Array<['scsi' | 'virtio-blk', Lane]> = [
    ['scsi', { bus: 'scsi', scsiId: 0 }],
    ['virtio-blk', { bus: 'virtio-blk', port: rootPortId(0) }],
  ];
  const cases: LatencyCase[] = [];
  for (const mode of ['rbd', 'block'] as const) {
    for (const [bus, lane] of fronts) {
      const volumeId = `lat-${mode}-${bus}`;
      const body: AttachRequest =
        mode === 'rbd'
          ? {
              bus,
              source: {
                type: 'rbd',
                pool: ceph.pool,
                image: imgA,
                monitors: ceph.monitors,
                user: ceph.clientUser,
                key: ceph.clientKey,
              },
              annotations: { [DIRECT_MODE_ANNOTATION]: 'rbd' },
            }
          : { mode: 'block', bus, source: { type: 'hostDevice', path: loopA.path } };
      const backend: DiskBackend =
        mode === 'rbd'
          ? {
              kind: 'rbd',
              source: {
                type: 'rbd',
                pool: ceph.pool,
                image: imgB,
                monitors: parseMonitors(ceph.monitors),
                user: ceph.clientUser,
              },
              key: new Secret(ceph.clientKey),
              confPath,
            }
          : { kind: 'hostDevice', path: loopB.path };
      const bare: HotplugDisk = { names: volumeNames(sidB, parseVolumeId(volumeId)), backend, lane };
      cases.push({
        label: `${mode} on ${bus}`,
        rest: { volumeId, body },
        bare,
        vmplug: emptySamples(),
        qmp: emptySamples(),
        steps: [],
      });
    }
  }
  // One unmeasured round first: the first blockdev-add rbd of a QEMU loads librbd, the daemon's
  // first request warms its JIT.
  for (const c of cases) {
    await restRound(client, a, c);
    await bareRound(qmpB, b, c);
    for (const s of [c.vmplug, c.qmp])
      for (const k of Object.keys(s) as (keyof CaseSamples)[]) s[k].length = 0;
  }
  const started = performance.now();
  for (let i = 0; i < rounds; i++) {
    for (const c of cases) {
      // Alternate who goes first, so neither always follows the other's guest activity.
      if (i % 2 === 0) {
        await restRound(client, a, c);
        await bareRound(qmpB, b, c);
      } else {
        await bareRound(qmpB, b, c);
        await restRound(client, a, c);
      }
    }
  }
  out(
    `${rounds} rounds x ${cases.length} cases in ${secs(performance.now() - started)} (after one warm-up round)`,
  );
  out('all figures in ms; ratio = vmplug / bare QMP');
  printComparison(
    'attach -> reply (vmplug: PUT sent -> 201; bare: first command -> device_add reply)',
    cases,
    (s) => s.attachReply,
  );
  const med = (xs: number[]): string => summarize(xs).median.toFixed(1).padStart(10);
  out("\nwhere vmplugd's attach reply time goes (medians, ms): its timeline steps (secret, blockdev-add,");
  out(
    'device_add, as vmplugd timed them) vs everything else (HTTP, validation, lane lookup in QEMU, journal)',
  );
  out(`  ${'case'.padEnd(20)}${'reply'.padStart(10)}${'steps'.padStart(10)}${'other'.padStart(10)}`);
  for (const c of cases) {
    const other = c.vmplug.attachReply.map((r, i) => r - (c.steps[i] ?? 0));
    out(`  ${c.label.padEnd(20)}${med(c.vmplug.attachReply)}${med(c.steps)}${med(other)}`);
  }
  printComparison(
    'attach -> guest sees the disk (from the PUT / the first command)',
    cases,
    (s) => s.attachGuest,
  );
  printComparison(
    'detach -> reply (vmplug: DELETE sent -> 204; bare: device_del -> blockdev-del/object-del done)',
    cases,
    (s) => s.detachReply,
  );
  printComparison(
    'detach -> guest lost the disk (from the DELETE / device_del)',
    cases,
    (s) => s.detachGuest,
  );
}

interface ConcurrentJob {
  sandbox: KataSandbox;
  volumeId: string;
  body: AttachRequest;
  /** The same volume for the bare QMP run. */
  backend: DiskBackend;
  mode: 'rbd' | 'block';
  serial: string;
  guestName: string;
  attachMs: number;
  detachMs: number;
  stepsMs: number;
  /** The same volume's bare QMP attach / detach: from the burst's start to its last command's reply. */
  bareAttachMs: number;
  bareDetachMs: number;
}

/** Replies per second of each burst through vmplugd, for the ratios to bare QMP. */
interface Throughput {
  attachPerS: number;
  detachPerS: number;
}

async function concurrencyPhase(
  stage: Stage,
  client: VmplugClient,
  sandboxes: KataSandbox[],
  confPath: string,
): Promise<{ jobs: ConcurrentJob[]; throughput: Throughput }> {
  const ceph = stage.ceph as CephCluster;
  const daemon = stage.daemon as DaemonProcess;
  // Each sandbox gets rbd and block volumes in turn, so neither mode queues behind the other.
  const modeOf = (i: number): 'rbd' | 'block' =>
    Math.floor(i / sandboxes.length) % 2 === 0 ? 'rbd' : 'block';
  const modes = Array.from({ length: attachCount }, (_, i) => modeOf(i));
  const nRbd = modes.filter((m) => m === 'rbd').length;
  const t = performance.now();
  const images = await Promise.all(Array.from({ length: nRbd }, (_, i) => stage.image(`c${i}`, 16 * MiB)));
  const loops: LoopDevice[] = [];
  for (let i = nRbd; i < attachCount; i++) loops.push(await stage.loop(16 * MiB));
  out(`made ${nRbd} RBD images and ${loops.length} loop devices in ${secs(performance.now() - t)}`);

  let nextImage = 0;
  let nextLoop = 0;
  const jobs = modes.map((mode, i): ConcurrentJob => {
    const sandbox = sandboxes[i % sandboxes.length] as KataSandbox;
    const volumeId = `conc-${i}`;
    const common = {
      sandbox,
      volumeId,
      mode,
      serial: '',
      guestName: '',
      attachMs: NaN,
      detachMs: NaN,
      stepsMs: NaN,
      bareAttachMs: NaN,
      bareDetachMs: NaN,
    };
    if (mode === 'block') {
      const path = (loops[nextLoop++] as LoopDevice).path;
      return {
        ...common,
        body: { mode: 'block', source: { type: 'hostDevice', path } },
        backend: { kind: 'hostDevice', path },
      };
    }
    const image = images[nextImage++] as string;
    return {
      ...common,
      body: {
        source: rbdSource(ceph, image),
        annotations: { [DIRECT_MODE_ANNOTATION]: 'rbd' },
      },
      backend: {
        kind: 'rbd',
        source: {
          type: 'rbd',
          pool: ceph.pool,
          image,
          monitors: parseMonitors(ceph.monitors),
          user: ceph.clientUser,
        },
        key: new Secret(ceph.clientKey),
        confPath,
      },
    };
  });
  // The daemon's own bound on operations in flight shapes the figures below.
  const started = daemon.lines.find((l) => l.includes('"maxConcurrentOps"'));
  const maxOps = started ? (/"maxConcurrentOps":(\d+)/.exec(started)?.[1] ?? '?') : '?';
  out(`vmplugd runs at most ${maxOps} operations at once (maxConcurrentOps) and one at a time per sandbox`);

  await new Promise((r) => setTimeout(r, 2000));
  const idle = await memory(daemon.pid);
  out(
    `vmplugd idle with ${sandboxes.length} sandboxes: VmRSS ${mib(idle.rssKiB)}, VmHWM so far ${mib(idle.hwmKiB)}`,
  );

  let peakRss = 0;
  const sampler = setInterval(() => {
    memory(daemon.pid).then(
      (m) => {
        peakRss = Math.max(peakRss, m.rssKiB);
      },
      () => {},
    );
  }, 25);
  try {
    // Attach: all at once.
    const a0 = performance.now();
    const replies = await Promise.allSettled(
      jobs.map(async (j) => {
        const r = await client.attach(j.sandbox.id, j.volumeId, j.body, { timeoutMs: 300_000 });
        if (r.attachment.state !== 'Attached') throw new Error(`${j.volumeId}: state ${r.attachment.state}`);
        j.serial = r.attachment.serial;
        j.attachMs = performance.now() - a0;
        j.stepsMs = r.attachment.timeline.reduce((sum, e) => sum + e.ms, 0);
      }),
    );
    const aReplied = performance.now() - a0;
    const aFailed = replies.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
    const seen = await Promise.allSettled(
      jobs
        .filter((j) => j.serial !== '')
        .map(async (j) => {
          const d = await j.sandbox.guest.waitForDisk((g) => g.serial === j.serial, { timeoutMs: 120_000 });
          j.guestName = d.name;
          return d.seenAt;
        }),
    );
    const aSeen = Math.max(...seen.map((s) => (s.status === 'fulfilled' ? s.value : 0))) - a0;
    const seenFailed = seen.filter((s) => s.status === 'rejected').length;
    const attachMem = await memory(daemon.pid);

    // Detach: all at once.
    const d0 = performance.now();
    const dels = await Promise.allSettled(
      jobs.map(async (j) => {
        await client.detach(j.sandbox.id, j.volumeId, { timeoutMs: 300_000 });
        j.detachMs = performance.now() - d0;
      }),
    );
    const dReplied = performance.now() - d0;
    const dFailed = dels.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
    const gone = await Promise.allSettled(
      jobs
        .filter((j) => j.guestName !== '')
        .map((j) => j.sandbox.guest.waitForDiskGone(j.guestName, { timeoutMs: 120_000 })),
    );
    const dGone = Math.max(...gone.map((g) => (g.status === 'fulfilled' ? g.value.at : 0))) - d0;
    const goneFailed = gone.filter((g) => g.status === 'rejected').length;
    clearInterval(sampler);
    const after = await memory(daemon.pid);
    const left = (await client.listSandboxes()).reduce((n, s) => n + s.volumes.length, 0);

    out();
    out(
      `${attachCount} attaches (${nRbd} rbd, ${attachCount - nRbd} block; bus auto) sent at once across ${sandboxes.length} sandboxes (${Math.ceil(attachCount / sandboxes.length)} each)`,
    );
    out(
      `  attach: all ${attachCount} replies in ${secs(aReplied)} = ${(attachCount / (aReplied / 1000)).toFixed(1)} attaches/s; ` +
        `every guest saw every disk after ${secs(aSeen)}; failures: ${aFailed.length} REST, ${seenFailed} not seen in the guest`,
    );
    out(
      `  detach: all ${attachCount} replies in ${secs(dReplied)} = ${(attachCount / (dReplied / 1000)).toFixed(1)} detaches/s; ` +
        `every guest lost every disk after ${secs(dGone)}; failures: ${dFailed.length} REST, ${goneFailed} still in the guest; volumes left in vmplugd: ${left}`,
    );
    const ok = (xs: number[]) => xs.filter((x) => Number.isFinite(x));
    printTable(
      'each request, sent together with all the others -> its reply (ms)',
      (['rbd', 'block'] as const).flatMap((m) => [
        [`attach ${m}`, summarize(ok(jobs.filter((j) => j.mode === m).map((j) => j.attachMs)))] as const,
        [
          `  its timeline steps`,
          summarize(ok(jobs.filter((j) => j.mode === m).map((j) => j.stepsMs))),
        ] as const,
        [`detach ${m}`, summarize(ok(jobs.filter((j) => j.mode === m).map((j) => j.detachMs)))] as const,
      ]),
      ['n', 'min', 'median', 'p99', 'max'],
    );
    for (const f of [...aFailed, ...dFailed].slice(0, 5))
      out(`  failure: ${String(f.reason?.message ?? f.reason)}`);
    out(
      `  vmplugd memory: idle VmRSS ${mib(idle.rssKiB)}; with ${attachCount} attached VmRSS ${mib(attachMem.rssKiB)}; ` +
        `peak sampled VmRSS ${mib(peakRss)}; VmHWM ${mib(after.hwmKiB)}` +
        `${after.hwmKiB === idle.hwmKiB ? ' (unchanged by the load: reached at start-up, loading and compiling modules)' : ''}` +
        `; after detaching all VmRSS ${mib(after.rssKiB)}`,
    );
    return {
      jobs,
      throughput: {
        attachPerS: attachCount / (aReplied / 1000),
        detachPerS: attachCount / (dReplied / 1000),
      },
    };
  } finally {
    clearInterval(sampler);
  }
}

/**
 * The same volumes on the same sandboxes, sent as bare QMP by a minimal script once vmplugd is
 * stopped: per sandbox one disk at a time (as vmplugd does), all sandboxes at once (no global
 * bound), replies only; then the guests are waited for, as above.
 */
async function bareConcurrencyPhase(
  stage: Stage,
  jobs: ConcurrentJob[],
  sandboxes: KataSandbox[],
  vmplug: Throughput,
): Promise<void> {
  const sessions = new Map<string, QmpSession>();
  for (const sb of sandboxes) {
    const q = QmpSession.start(sb.vmplugQmpPath, { defaultTimeoutMs: 120_000 });
    stage.sessions.push(q);
    sessions.set(sb.id, q);
  }
  await Promise.all([...sessions.values()].map((q) => q.ready({ timeoutMs: 30_000 })));
  const disks = jobs.map((j, i) => {
    const k = Math.floor(i / sandboxes.length);
    const d: HotplugDisk = {
      names: volumeNames(parseSandboxId(j.sandbox.id), parseVolumeId(j.volumeId)),
      backend: j.backend,
      lane: { bus: 'scsi', scsiId: k },
    };
    return { j, d, qmp: sessions.get(j.sandbox.id) as QmpSession, guestName: '' };
  });
  const bySandbox = sandboxes.map((sb) => disks.filter((x) => x.j.sandbox.id === sb.id));
  let failures = 0;
  try {
    const a0 = performance.now();
    await Promise.all(
      bySandbox.map(async (list) => {
        for (const x of list) {
          try {
            if (x.d.backend.kind === 'rbd') await objectAdd(x.qmp, secretObject(x.d.names, x.d.backend.key));
            await blockdevAdd(x.qmp, blockdevOf(x.d));
            await deviceAdd(x.qmp, deviceArgs(x.d.names, x.d.lane));
            x.j.bareAttachMs = performance.now() - a0;
          } catch {
            failures++;
          }
        }
      }),
    );
    const aReplied = performance.now() - a0;
    const seen = await Promise.allSettled(
      disks.map(async (x) => {
        const g = await x.j.sandbox.guest.waitForDisk((d) => d.serial === x.d.names.serial, {
          timeoutMs: 120_000,
        });
        x.guestName = g.name;
        return g.seenAt;
      }),
    );
    const aSeen = Math.max(...seen.map((r) => (r.status === 'fulfilled' ? r.value : 0))) - a0;
    const d0 = performance.now();
    await Promise.all(
      bySandbox.map(async (list) => {
        for (const x of list) {
          try {
            await deviceDelAndWait(x.qmp, x.d.names.device);
            await blockdevDel(x.qmp, x.d.names.node);
            if (x.d.backend.kind === 'rbd') await objectDel(x.qmp, x.d.names.secret);
            x.j.bareDetachMs = performance.now() - d0;
          } catch {
            failures++;
          }
        }
      }),
    );
    const dReplied = performance.now() - d0;
    const gone = await Promise.allSettled(
      disks
        .filter((x) => x.guestName !== '')
        .map((x) => x.j.sandbox.guest.waitForDiskGone(x.guestName, { timeoutMs: 120_000 })),
    );
    const dGone = Math.max(...gone.map((r) => (r.status === 'fulfilled' ? r.value.at : 0))) - d0;
    const notSeen = seen.filter((r) => r.status === 'rejected').length;
    const notGone = gone.filter((r) => r.status === 'rejected').length;
    out();
    out(
      `the same ${jobs.length} volumes as bare QMP (vmplugd stopped; one at a time per sandbox, all sandboxes at once):`,
    );
    out(
      `  attach: all done in ${secs(aReplied)} = ${(jobs.length / (aReplied / 1000)).toFixed(1)} attaches/s; every guest saw every disk after ${secs(aSeen)}`,
    );
    out(
      `  detach: all done in ${secs(dReplied)} = ${(jobs.length / (dReplied / 1000)).toFixed(1)} detaches/s; every guest lost every disk after ${secs(dGone)}`,
    );
    out(`  failures: ${failures} QMP, ${notSeen} not seen in the guest, ${notGone} still in the guest`);
    printConcurrencyRatios(jobs, vmplug, {
      attachPerS: jobs.length / (aReplied / 1000),
      detachPerS: jobs.length / (dReplied / 1000),
    });
  } finally {
    for (const x of disks) await removeLeftovers(x.qmp, x.d.names).catch(() => {});
  }
}

/** vmplugd against bare QMP under the same burst: throughput and each request's reply (issue 11's targets). */
function printConcurrencyRatios(jobs: ConcurrentJob[], vmplug: Throughput, bare: Throughput): void {
  const ok = (xs: number[]) => xs.filter((x) => Number.isFinite(x));
  const rows: Array<[string, number[], number[]]> = [
    ['attach', jobs.map((j) => j.attachMs), jobs.map((j) => j.bareAttachMs)],
    ['detach', jobs.map((j) => j.detachMs), jobs.map((j) => j.bareDetachMs)],
  ];
  out('\nconcurrency, vmplugd / bare QMP (targets: throughput >= 0.8x, p99 reply <= 2x)');
  out(
    `  ${'op'.padEnd(8)}${'vmplug/s'.padStart(10)}${'bare/s'.padStart(10)}${'ratio'.padStart(8)}` +
      `${'vmplug p99'.padStart(12)}${'bare p99'.padStart(10)}${'ratio'.padStart(8)}${'med ratio'.padStart(11)}`,
  );
  for (const [op, v, b] of rows) {
    const vs = summarize(ok(v));
    const bs = summarize(ok(b));
    const vt = op === 'attach' ? vmplug.attachPerS : vmplug.detachPerS;
    const bt = op === 'attach' ? bare.attachPerS : bare.detachPerS;
    out(
      `  ${op.padEnd(8)}${vt.toFixed(1).padStart(10)}${bt.toFixed(1).padStart(10)}${`${(vt / bt).toFixed(2)}x`.padStart(8)}` +
        `${vs.p99.toFixed(0).padStart(12)}${bs.p99.toFixed(0).padStart(10)}${`${(vs.p99 / bs.p99).toFixed(2)}x`.padStart(8)}` +
        `${`${(vs.median / bs.median).toFixed(2)}x`.padStart(11)}`,
    );
  }
}

/**
 * Medians of vmplugd's 'attach timing' debug lines (storage/engine.ts), by latency case and for
 * the concurrent attaches: the turn (waiting for the sandbox's lock and a node slot), the journal
 * read, the host-device check, the lane listing, the backend choice, the Ceph probe, the rbd
 * preflight, the Pending record (its write overlaps the checks: what it took beyond them), and
 * the steps (QMP + their journal writes); 'journal+' is the steps' time outside their own timed
 * side effects (the last record is written behind the answer, so little); 'outside' is the rest of
 * the request's time in vmplugd (fastify's responseTime less the phases: HTTP, validation, the
 * request's log lines, the observers, the answer's serialization).
 */
function printPhases(daemon: DaemonProcess, jobs: readonly ConcurrentJob[]): void {
  const modeOf = new Map(jobs.map((j) => [j.volumeId, j.mode]));
  // fastify's own 'request completed' line: the request's time inside vmplugd (reqId ties them).
  const served = new Map<string, number>();
  for (const line of daemon.lines) {
    if (!line.includes('"request completed"')) continue;
    const o = JSON.parse(line) as { reqId?: string; responseTime?: number };
    if (o.reqId !== undefined && o.responseTime !== undefined) served.set(o.reqId, o.responseTime);
  }
  const groups = new Map<string, Record<string, number[]>>();
  for (const line of daemon.lines) {
    if (!line.includes('"attach timing"')) continue;
    const o = JSON.parse(line) as {
      volumeId: string;
      reqId?: string;
      phases: Record<string, number>;
      stepTimesMs: number;
      checkedAhead?: boolean;
    };
    // A concurrent attach by mode; an rbd one by where its Ceph checks ran (ahead: while it
    // waited near its turn in its sandbox's queue).
    const mode = modeOf.get(o.volumeId) ?? '?';
    const g = o.volumeId.startsWith('lat-')
      ? o.volumeId
      : `conc ${mode}${mode === 'rbd' ? (o.checkedAhead ? ' ahead' : ' in turn') : ''}`;
    const acc = groups.get(g) ?? {};
    const inEngine = Object.values(o.phases).reduce((a, b) => a + b, 0);
    const total = o.reqId === undefined ? undefined : served.get(o.reqId);
    const phases = {
      ...o.phases,
      'journal+Ms': (o.phases.stepsMs ?? 0) - o.stepTimesMs,
      ...(total !== undefined ? { outsideMs: total - inEngine } : {}),
    };
    for (const [k, v] of Object.entries(phases)) acc[k] = [...(acc[k] ?? []), v];
    groups.set(g, acc);
  }
  const keys = [
    'turnMs',
    'loadMs',
    'hostCheckMs',
    'lanesMs',
    'backendMs',
    'cephMs',
    'preflightMs',
    'pendingMs',
    'stepsMs',
    'journal+Ms',
    'outsideMs',
  ];
  out("\nvmplugd's attach phases (medians, ms; engine.ts 'attach timing' lines, warm-up included)");
  out(
    `  ${'case'.padEnd(20)}${keys.map((k) => k.replace('Ms', '').padStart(10)).join('')}${'n'.padStart(5)}`,
  );
  for (const [g, acc] of groups) {
    out(
      `  ${g.padEnd(20)}${keys
        .map((k) =>
          summarize(acc[k] ?? [])
            .median.toFixed(2)
            .padStart(10),
        )
        .join('')}${String(acc.turnMs?.length ?? 0).padStart(5)}`,
    );
  }
}

async function main(): Promise<void> {
  const stage = new Stage();
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      process.stdout.write(
        `\n${sig}: stopping vmplugd, QEMU and Ceph, removing loop devices and temp files\n`,
      );
      setImmediate(() => process.exit(130));
    });
  }
  process.once('exit', () => {
    const pid = stage.daemon?.pid;
    if (pid === undefined) return;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  });
  try {
    out('bench:attach: vmplugd REST vs bare QMP, then concurrent attaches');
    out(hostContext());
    const t = performance.now();
    const [rootA, rootB] = await Promise.all([createTestRoot(), createTestRoot()]);
    stage.roots.push(rootA, rootB);
    const [cephR, aR, bR] = await Promise.allSettled([
      startCeph(),
      startKataSandbox(rootA, { bootTimeoutMs: 180_000 }),
      startKataSandbox(rootB, { bootTimeoutMs: 180_000 }),
    ]);
    if (cephR.status === 'fulfilled') stage.ceph = cephR.value;
    for (const r of [cephR, aR, bR]) if (r.status === 'rejected') throw r.reason;
    const a = (aR as PromiseFulfilledResult<KataSandbox>).value;
    const b = (bR as PromiseFulfilledResult<KataSandbox>).value;
    out(`Ceph and two sandboxes (A for vmplugd, B for bare QMP) up in ${secs(performance.now() - t)}`);

    const daemonDir = join(rootA.dir, 'vmplugd');
    const script = fromBuild ? await buildDaemon(join(rootA.dir, 'build')) : undefined;
    const nodeArgs = givenNodeArgs.length > 0 ? givenNodeArgs : await productionNodeOptions();
    out(`vmplugd runs from ${script ? 'a tsc build' : 'the sources through tsx'}`);
    stage.daemon = await startDaemonProcess({
      dir: daemonDir,
      monitorDir: rootA.monitorDir,
      kataVmRoot: rootA.kataVmRoot,
      logLevel: phasesWanted ? 'debug' : 'info',
      ...(script ? { script } : {}),
      nodeArgs: [...nodeArgs, ...(cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', cpuProfDir] : [])],
      ...(uvThreads !== undefined ? { env: { UV_THREADPOOL_SIZE: uvThreads } } : {}),
    });
    out(`vmplugd's libuv pool: ${uvThreads ?? process.env.UV_THREADPOOL_SIZE ?? '4 (default)'} threads`);
    if (nodeArgs.length > 0) out(`vmplugd's node options: ${nodeArgs.join(' ')}`);
    const client = new VmplugClient({ socketPath: stage.daemon.socketPath, timeoutMs: 120_000 });
    await waitDiscovered(client, [a.id]);
    const qmpB = QmpSession.start(b.vmplugQmpPath, { defaultTimeoutMs: 60_000 });
    stage.sessions.push(qmpB);
    await qmpB.ready({ timeoutMs: 10_000 });
    const confPath = join(rootB.dir, 'rbd.conf');
    await writeFile(confPath, rbdConf(), { mode: 0o600 });

    out();
    out(`== Latency: vmplugd (sandbox ${a.id}) vs bare QMP (sandbox ${b.id}, vmplugd does not watch it) ==`);
    try {
      if (!skipLatency) await latencyPhase(stage, client, a, b, qmpB, confPath);
    } finally {
      for (const n of ['rbd', 'block'])
        for (const bus of ['scsi', 'virtio-blk'])
          await removeLeftovers(
            qmpB,
            volumeNames(parseSandboxId(b.id), parseVolumeId(`lat-${n}-${bus}`)),
          ).catch(() => {});
    }

    // Frees B's CPU and memory for the concurrency run.
    await qmpB.close();
    await b.stop();

    out();
    out(`== Concurrency: ${attachCount} attaches across ${sandboxCount} sandboxes ==`);
    out(
      `${sandboxCount} sandboxes${sandboxCount < 20 ? " rather than the issue's 20" : ''}: each TCG guest costs ~13% of a core` +
        ' idle and 256 MiB, so 20 would keep this 2-core host near saturation with guests alone and boot for' +
        ' minutes; the default 10 leave headroom for vmplugd, the QEMU main loops and Ceph, so the figures show vmplugd rather' +
        ' than a thrashing host. Change with --sandboxes / --attaches.',
    );
    const tb = performance.now();
    const more = await bootSandboxes(rootA, sandboxCount - 1);
    const all = [a, ...more];
    const discoveredMs = await waitDiscovered(
      client,
      all.map((s) => s.id),
    );
    out(
      `booted ${more.length} more sandboxes (${bootBatch} at a time) in ${secs(performance.now() - tb)}; vmplugd lists all ${all.length} (${secs(discoveredMs)} after the last boot)`,
    );
    out(hostContext());
    const confA = join(rootA.dir, 'rbd.conf');
    await writeFile(confA, rbdConf(), { mode: 0o600 });
    const { jobs, throughput } = await concurrencyPhase(stage, client, all, confA);
    if (phasesWanted) printPhases(stage.daemon, jobs);
    // The bare run needs the private monitors vmplugd holds.
    await stage.daemon.stop();
    out(hostContext());
    await bareConcurrencyPhase(stage, jobs, all, throughput);
  } finally {
    out();
    out('cleaning up: vmplugd, guests, RBD images, loop devices, Ceph, temp dirs...');
    await stage.close();
  }
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  },
);
