/**
 * NIC hot-plug figures on a real Kata-shaped sandbox (TCG guest, QEMU 7.2 through
 * bin/vmplug-qemu), through the NIC engine with a vmplug tap on a fresh host bridge:
 *   - attach call -> reply (tap + netdev_add + device_add + journal writes);
 *   - reply -> the guest lists the MAC in /sys/class/net (polled with guest commands; the bare
 *     round trip of one guest command is printed too, as the polling's own cost);
 *   - ping guest -> bridge address (RTT of each echo, after the first which pays ARP);
 *   - detach call -> reply (device_del until DEVICE_DELETED, netdev_del, tap deleted) and
 *     reply -> the guest no longer lists the MAC.
 * Prints min / median / p99 / max; asserts nothing. Bridge, taps and guest go however it ends.
 *
 *   npm run bench:nic-hotplug [-- <runs>]   (default 10)
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { parseNicId, parseSandboxId } from '../core/ids.js';
import { NicEngine, type NicLogger, nicNames, parseNicSpec } from '../net/index.js';
import { QmpSession } from '../qmp/index.js';
import { createTestRoot, startKataSandbox } from '../test/env/sandbox.js';
import { hostContext, printTable, summarize } from './figures.js';

const runs = Number(process.argv.slice(2).find((a) => /^\d+$/.test(a)) ?? 10);
const run = promisify(execFile);
const ip = (...args: string[]) => run('ip', args, { timeout: 10_000 });
const quiet: NicLogger = { debug() {}, info() {}, warn() {}, error() {}, child: () => quiet };

async function main(): Promise<void> {
  const tag = randomBytes(3).toString('hex');
  const bridge = `vmpbr${tag}`;
  const third = 1 + (Number.parseInt(tag.slice(0, 2), 16) % 250);
  const hostIp = `169.254.${third}.1`;
  const root = await createTestRoot();
  const stateDir = await mkdtemp(join(tmpdir(), 'vmplug-nic-bench-'));
  const taps = new Set<string>();
  let qmp: QmpSession | undefined;
  let engine: NicEngine | undefined;
  try {
    await ip('link', 'add', 'name', bridge, 'type', 'bridge');
    await ip('addr', 'add', `${hostIp}/30`, 'dev', bridge);
    await ip('link', 'set', 'dev', bridge, 'up');
    const sandbox = await startKataSandbox(root);
    const s = QmpSession.start(sandbox.vmplugQmpPath);
    qmp = s;
    await s.ready({ timeoutMs: 20_000 });
    const sid = parseSandboxId(sandbox.id);
    const e = new NicEngine({
      stateDir,
      logger: quiet,
      sandboxes: {
        lookup: (id) => (id === sid ? { state: 'present', sandbox: { qmp: s } } : { state: 'gone' }),
        known: () => [sid],
      },
    });
    engine = e;
    const ctx = () => ({ signal: AbortSignal.timeout(60_000), log: quiet });
    const macs = async () => (await sandbox.guest.run('cat /sys/class/net/*/address')).stdout;
    const until = async (pred: (m: string) => boolean): Promise<number> => {
      const t = performance.now();
      while (!pred(await macs())) {
        if (performance.now() - t > 60_000) throw new Error('guest did not follow within 60 s');
      }
      return performance.now() - t;
    };
    const samples = {
      attach: [] as number[],
      seen: [] as number[],
      detach: [] as number[],
      lost: [] as number[],
    };
    const guestRtt: number[] = [];
    const ping: number[] = [];
    for (let i = 0; i < runs; i++) {
      const nic = parseNicId(`bench${i}`);
      const spec = parseNicSpec({ hostInterface: { type: 'tap', bridge } }, sid, nic);
      taps.add(nicNames(sid, nic).tap);
      const g0 = performance.now();
      await sandbox.guest.run('true');
      guestRtt.push(performance.now() - g0);
      let t = performance.now();
      await e.attach(sid, nic, spec, ctx());
      samples.attach.push(performance.now() - t);
      samples.seen.push(await until((m) => m.includes(spec.mac)));
      if (i === 0) {
        const r = await sandbox.guest.run(
          `for d in /sys/class/net/*; do [ "$(cat $d/address)" = "${spec.mac}" ] && i=$(basename $d); done; ` +
            `ip addr add 169.254.${third}.2/30 dev $i && ip link set dev $i up && ping -c 11 -i 0.2 -W 5 ${hostIp}`,
          { timeoutMs: 60_000 },
        );
        ping.push(...[...r.stdout.matchAll(/time=([0-9.]+) ms/g)].slice(1).map((m) => Number(m[1])));
      }
      t = performance.now();
      await e.detach(sid, nic, ctx());
      samples.detach.push(performance.now() - t);
      samples.lost.push(await until((m) => !m.includes(spec.mac)));
    }
    process.stdout.write(`NIC hot-plug, ${runs} runs; ${hostContext()}\n`);
    printTable('attach and detach (virtio-net-pci on a vmplug root port, vmplug tap on a bridge)', [
      ['attach call -> reply', summarize(samples.attach)],
      ['reply -> guest lists MAC', summarize(samples.seen)],
      ['detach call -> reply', summarize(samples.detach)],
      ['reply -> guest lost MAC', summarize(samples.lost)],
      ['one guest command (poll cost)', summarize(guestRtt)],
    ]);
    printTable('ping guest -> bridge through tap and bridge (ARP excluded)', [['echo RTT', summarize(ping)]]);
  } finally {
    await engine?.close();
    qmp?.close();
    await root.cleanup();
    for (const t of taps) await ip('link', 'del', 'dev', t).catch(() => undefined);
    await ip('link', 'del', 'dev', bridge).catch(() => undefined);
    await rm(stateDir, { recursive: true, force: true });
  }
}

await main();
