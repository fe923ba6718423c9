import { describe, expect, it } from 'vitest';
import {
  libvirtVersionString,
  NodeFactsCache,
  type SystemInfo,
  statusNodeFacts,
  virtualizationFlag,
} from '../../../daemon/report/node-facts.js';

// Shapes as systeminformation 5 returns them on this machine (Debian 12, virtio disk, one NIC).
type FakeSystem = SystemInfo & { memFree: number; disks: string[] };

function fakeSystem(over: Partial<SystemInfo> = {}): FakeSystem {
  const state: FakeSystem = {
    memFree: 22_000_000_000,
    disks: ['vda'],
    cpu: async () => ({ manufacturer: 'Intel', brand: 'Xeon® Processor', cores: 2, physicalCores: 2 }),
    cpuFlags: async () => 'fpu vme de pse tsc msr vmx sse2 hypervisor',
    osInfo: async () => ({
      distro: 'Debian GNU/Linux',
      release: '12',
      kernel: '6.1.0-18-amd64',
      arch: 'x64',
      hostname: 'node-a',
    }),
    networkInterfaces: async () => [
      {
        iface: 'lo',
        mac: '00:00:00:00:00:00',
        operstate: 'unknown',
        speed: null,
        mtu: 65536,
        internal: true,
        virtual: false,
      },
      {
        iface: 'eth0',
        mac: '02:fc:00:00:00:01',
        operstate: 'up',
        speed: 10000,
        mtu: 1500,
        internal: false,
        virtual: false,
      },
    ],
    mem: async () => ({ total: 25_276_063_744, free: state.memFree, available: state.memFree + 1_000 }),
    blockDevices: async () =>
      state.disks.map((name) => ({
        name,
        type: name.startsWith('loop') ? 'loop' : 'disk',
        size: 274_877_906_944,
        model: '',
        serial: '',
        removable: false,
      })),
    kvmDevice: async () => 'accessible' as const,
    ...over,
  };
  return state;
}

describe('NodeFactsCache', () => {
  it('gathers static facts once and dynamic ones at most once per TTL', async () => {
    let now = 0;
    const sys = fakeSystem();
    const cache = new NodeFactsCache({ system: sys, ttlMs: 30_000, now: () => now });
    const first = await cache.get();
    expect(first.cpu).toEqual({ model: 'Intel Xeon® Processor', cores: 2, threads: 2 });
    expect(first.virtualization).toEqual({ cpuFlag: 'vmx', kvmDevice: 'accessible' });
    expect(first.os).toEqual({
      distro: 'Debian GNU/Linux',
      release: '12',
      kernel: '6.1.0-18-amd64',
      arch: 'x64',
    });
    expect(first.nics?.map((n) => n.name)).toEqual(['eth0']);
    expect(first.memory?.freeBytes).toBe(22_000_000_000);
    for (let i = 0; i < 20; i++) await cache.get();
    now += 29_000;
    await cache.get();
    expect(Object.fromEntries(cache.calls)).toEqual({
      cpu: 1,
      cpuFlags: 1,
      osInfo: 1,
      networkInterfaces: 1,
      mem: 1,
      blockDevices: 1,
      kvmDevice: 1,
    });
    sys.memFree = 1_000;
    sys.disks = ['vda', 'loop0'];
    now += 2_000;
    const later = await cache.get();
    expect(later.memory?.freeBytes).toBe(1_000);
    expect(later.blockDevices?.map((d) => d.name)).toEqual(['vda', 'loop0']);
    expect(cache.calls.get('blockDevices')).toBe(2);
    expect(cache.calls.get('cpu')).toBe(1);
    expect(cache.calls.get('networkInterfaces')).toBe(1);
  });

  it('concurrent callers share one refresh', async () => {
    const cache = new NodeFactsCache({ system: fakeSystem() });
    await Promise.all(Array.from({ length: 10 }, () => cache.get()));
    expect(cache.calls.get('blockDevices')).toBe(1);
    expect(cache.calls.get('cpu')).toBe(1);
  });

  it('a call that hangs is bounded: the others answer, and it is tried again next refresh', async () => {
    let hang = true;
    const errors: string[] = [];
    const sys = fakeSystem({
      blockDevices: () =>
        hang
          ? new Promise(() => {})
          : Promise.resolve([
              { name: 'vdb', type: 'disk', size: 1, model: 'm', serial: 's', removable: false },
            ]),
    });
    let now = 0;
    const cache = new NodeFactsCache({
      system: sys,
      callTimeoutMs: 50,
      ttlMs: 1_000,
      now: () => now,
      onError: (part, err) => errors.push(`${part}: ${(err as { code?: string }).code}`),
    });
    const facts = await cache.get();
    expect(facts.blockDevices).toBeUndefined();
    expect(facts.memory?.totalBytes).toBe(25_276_063_744);
    expect(errors).toEqual(['blockDevices: NODE_FACTS_TIMEOUT']);
    hang = false;
    now += 1_000;
    const again = await cache.get();
    expect(again.blockDevices).toEqual([
      { name: 'vdb', type: 'disk', sizeBytes: 1, model: 'm', serial: 's', removable: false },
    ]);
  });

  it('a failed static call is retried; the others are not repeated', async () => {
    let fail = true;
    const sys = fakeSystem({
      osInfo: async () => {
        if (fail) throw new Error('hostname: exec failed');
        return { distro: 'Debian GNU/Linux', release: '12', kernel: 'k', arch: 'x64', hostname: 'h' };
      },
    });
    const cache = new NodeFactsCache({ system: sys });
    expect((await cache.get()).hostname).toBeUndefined();
    fail = false;
    await cache.refresh();
    expect(cache.current().hostname).toBe('h');
    // cpu was asked again along with osInfo: the static set is gathered together until complete.
    await cache.refresh();
    expect(cache.calls.get('osInfo')).toBe(2);
    expect(cache.calls.get('cpu')).toBe(2);
  });

  it('tells listeners only when a fact changed, not on every refresh', async () => {
    const sys = fakeSystem();
    const cache = new NodeFactsCache({ system: sys });
    let changes = 0;
    cache.onChange(() => changes++);
    await cache.refresh();
    expect(changes).toBeGreaterThan(0);
    const before = changes;
    await cache.refresh();
    await cache.refresh();
    expect(changes).toBe(before);
    sys.disks = ['vda', 'loop3'];
    await cache.refresh();
    expect(changes).toBe(before + 1);
  });

  it('the status facts are the stable subset (no free memory) and fit the CRD', async () => {
    const cache = new NodeFactsCache({ system: fakeSystem() });
    const s = statusNodeFacts(await cache.get(), '0.1.0');
    expect(s).toEqual({
      hostname: 'node-a',
      os: 'Debian GNU/Linux 12',
      kernel: '6.1.0-18-amd64',
      arch: 'x64',
      vmplugVersion: '0.1.0',
      cpu: { model: 'Intel Xeon® Processor', cores: 2, threads: 2 },
      memoryBytes: 25_276_063_744,
      virtualization: { kvm: true },
      blockDevices: [{ name: 'vda', type: 'disk', sizeBytes: 274_877_906_944 }],
      nics: [{ name: 'eth0', up: true, mac: '02:fc:00:00:00:01', speedMbps: 10000 }],
    });
  });

  it('reads the virtualization flag from the CPU flags', () => {
    expect(virtualizationFlag('fpu svm sse')).toBe('svm');
    expect(virtualizationFlag('fpu vmx')).toBe('vmx');
    expect(virtualizationFlag('fpu hypervisor')).toBeNull();
  });

  it('is complete once static and dynamic facts were gathered; versions reach the status', async () => {
    let release: () => void = () => {};
    const slowMem = new Promise<void>((r) => {
      release = r;
    });
    const base = fakeSystem();
    const facts = new NodeFactsCache({
      system: fakeSystem({
        mem: async () => {
          await slowMem;
          return base.mem();
        },
        virtVersions: async () => ({ qemu: '7.2.19', libvirt: '9.0.0' }),
      }),
    });
    const started = facts.start();
    await new Promise((r) => setTimeout(r, 10));
    expect(facts.complete()).toBe(false);
    release();
    await started;
    expect(facts.complete()).toBe(true);
    expect(statusNodeFacts(facts.current()).virtualization).toEqual({
      kvm: true,
      qemuVersion: '7.2.19',
      libvirtVersion: '9.0.0',
    });
    // A monitor's greeting does not override the binary's answer.
    facts.observeQemuVersion('8.0.0');
    expect(facts.current().virtualization?.qemuVersion).toBe('7.2.19');
    facts.close();
  });

  it('takes QEMU version from a greeting when the binary is not there', async () => {
    // A greeting heard before the facts were gathered is kept for them.
    const early = new NodeFactsCache({ system: fakeSystem({ virtVersions: async () => ({}) }) });
    early.observeQemuVersion('7.2.19');
    await early.start();
    expect(early.current().virtualization?.qemuVersion).toBe('7.2.19');
    early.close();

    const facts = new NodeFactsCache({ system: fakeSystem({ virtVersions: async () => ({}) }) });
    await facts.start();
    const changes: number[] = [];
    facts.onChange(() => changes.push(1));
    facts.observeQemuVersion('7.2.19');
    expect(statusNodeFacts(facts.current()).virtualization).toEqual({ kvm: true, qemuVersion: '7.2.19' });
    expect(changes).toHaveLength(1);
    facts.close();
  });

  it('formats libvirt version numbers', () => {
    expect(libvirtVersionString(9_000_000)).toBe('9.0.0');
    expect(libvirtVersionString(10_010_003)).toBe('10.10.3');
  });
});
