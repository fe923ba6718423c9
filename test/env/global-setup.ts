/**
 * Global setup of the `integration` project: checks the host has what the tests drive for real,
 * starts one Ceph cluster for the whole run and hands its descriptor to test files
 * (`attachCeph(inject('ceph'))`), and stops it afterwards, also when tests fail.
 *
 * A host that lacks something fails the run with a message naming test/env/setup: integration
 * tests are never skipped silently, CI must run them for real.
 */
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { TestProject } from 'vitest/node';
import { type CephDescriptor, startCeph, sweepStaleClusters } from './ceph.js';
import { sweepStaleLoopDevices } from './loop.js';
import { defaultQemuPath } from './paths.js';

declare module 'vitest' {
  export interface ProvidedContext {
    ceph: CephDescriptor;
  }
}

const programs = [
  'ceph',
  'ceph-mon',
  'ceph-osd',
  'ceph-mgr',
  'ceph-authtool',
  'monmaptool',
  'rbd',
  'rados',
  'losetup',
  'setpriv',
  'qemu-img',
];

function onPath(program: string): boolean {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    try {
      accessSync(join(dir, program), constants.X_OK);
      return true;
    } catch {
      // Not in this directory.
    }
  }
  return false;
}

/** Everything missing on this host, as human sentences. Empty when the host is fit. */
export function hostProblems(): string[] {
  const problems: string[] = [];
  if (process.getuid?.() !== 0)
    problems.push('integration tests must run as root (loop devices, QEMU, libvirt)');
  const qemu = process.env.VMPLUG_QEMU ?? defaultQemuPath;
  if (!existsSync(qemu)) problems.push(`no QEMU binary at ${qemu} (package qemu-system-x86)`);
  // QEMU loads its rbd driver as a module; without it every rbd attach fails at blockdev-add.
  if (!existsSync('/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so')) {
    problems.push('no QEMU rbd block driver (package qemu-block-extra)');
  }
  const missing = programs.filter((p) => !onPath(p));
  if (missing.length > 0) problems.push(`missing programs: ${missing.join(', ')}`);
  if (!existsSync('/dev/loop-control')) problems.push('no /dev/loop-control: loop devices cannot be created');
  return problems;
}

function rssMiB(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m?.[1] ? Math.round(Number(m[1]) / 1024) : 0;
  } catch {
    return 0;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const problems = hostProblems();
  if (problems.length > 0) {
    throw new Error(
      `integration tests cannot run on this host:\n  - ${problems.join('\n  - ')}\n` +
        'Run test/env/setup (as root) to install what they need; they are never skipped.',
    );
  }
  // Leftovers of earlier runs that were killed outright (their owner is dead): clusters only cost
  // disk, but stale loop devices pile up.
  await sweepStaleClusters();
  await sweepStaleLoopDevices();
  const t0 = performance.now();
  const ceph = await startCeph();
  const { mon, osd, mgr } = ceph.pids;
  process.stderr.write(
    `[global-setup] ceph ready in ${Math.round(performance.now() - t0)} ms at ${ceph.monitors.join(',')}; ` +
      `RSS mon ${rssMiB(mon)} MiB, osd ${rssMiB(osd)} MiB, mgr ${rssMiB(mgr)} MiB\n`,
  );
  project.provide('ceph', ceph.descriptor());
  return () => ceph.stop();
}
