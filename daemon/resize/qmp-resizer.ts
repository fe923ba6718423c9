import { deviceAdd, queryHotpluggableCpus, queryMemorySizeSummary } from '../../qmp/commands.js';
import type { QmpExecutor } from '../../qmp/executor.js';
import type { HotpluggableCpu } from '../../qmp/types.js';
import { ResizeError } from './errors.js';
import type { GuestResizer, ResizeCallOptions, ResourceView } from './types.js';
import { dimmsToRemove } from './validate.js';

// Resize of a Kata sandbox over vmplug's private monitor: vCPUs by device_add / device_del of the
// CPU slots query-hotpluggable-cpus lists, memory by pc-dimm devices over memory-backend-ram
// objects. Everything vmplug adds carries a vmplug prefix (vmpcpu-, vmpdimm-, vmpmem-), so only
// vmplug's own CPUs and DIMMs are ever removed, and a backend left without its DIMM (a guest that
// let go of it after vmplug stopped waiting) is recognised and freed on the next inspect.

const MiB = 1024 * 1024;
/** Linux x86_64 onlines memory in 128 MiB blocks: a DIMM of another size cannot be fully used. */
export const MEMORY_STEP_MIB = 128;
const CPU_PREFIX = 'vmpcpu-';
const DIMM_PREFIX = 'vmpdimm-';
const MEM_PREFIX = 'vmpmem-';
const DIMM_ID = /^vmpdimm-(\d+)$/;
const DEFAULT_CALL_TIMEOUT_MS = 10_000;
const DEFAULT_UNPLUG_TIMEOUT_MS = 20_000;
/** Between checks while the guest ejects; the events cut it short. */
const POLL_MS = 200;
/** QEMU's answer to device_del while the guest has not answered the previous one. */
const PENDING_UNPLUG = /already in the process of unplug/i;

interface MachineMemory {
  size: number;
  slots: number;
  'max-size': number;
}

interface MemoryDeviceInfo {
  type: string;
  data: { id?: string; size: number; memdev?: string };
}

interface ObjectPropertyInfo {
  name: string;
  type: string;
}

export interface QmpResizerOptions {
  /** Bound on each QMP command. */
  callTimeoutMs?: number;
  /**
   * Remove vCPUs also when QEMU runs without KVM. Off by default: QEMU 7.2 under TCG was seen to
   * segfault shortly after a vCPU it had unplugged was gone (the guest had released it cleanly),
   * killing the sandbox; a resize must never do that.
   */
  vcpuUnplugWithoutKvm?: boolean;
}

export class QmpResizer implements GuestResizer {
  readonly kind = 'kata' as const;
  readonly #qmp: QmpExecutor;
  readonly #timeoutMs: number;
  readonly #unplugWithoutKvm: boolean;

  constructor(qmp: QmpExecutor, opts: QmpResizerOptions = {}) {
    this.#qmp = qmp;
    this.#timeoutMs = opts.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    this.#unplugWithoutKvm = opts.vcpuUnplugWithoutKvm ?? false;
  }

  #call(opts: ResizeCallOptions): { timeoutMs: number; signal?: AbortSignal } {
    return opts.signal ? { timeoutMs: this.#timeoutMs, signal: opts.signal } : { timeoutMs: this.#timeoutMs };
  }

  async inspect(opts: ResizeCallOptions): Promise<ResourceView> {
    const call = this.#call(opts);
    const cpus = await queryHotpluggableCpus(this.#qmp, call);
    const plugged = cpus.filter((c) => c['qom-path'] !== undefined);
    const vcpus = sumCpus(plugged);
    const mine = plugged.filter(isVmplugCpu);
    const kvm = this.#unplugWithoutKvm
      ? { enabled: true }
      : await this.#qmp.execute<{ enabled: boolean }>('query-kvm', undefined, call);
    const machine = await this.#qmp.execute<MachineMemory>(
      'qom-get',
      { path: '/machine', property: 'memory' },
      call,
    );
    const summary = await queryMemorySizeSummary(this.#qmp, call);
    const devices = await this.#memoryDevices(call);
    await this.#freeOrphanBackends(devices, call);
    const dimms = devices.filter((d) => d.type === 'dimm' || d.type === 'nvdimm');
    const removable = dimms
      .map((d) => ({ index: dimmIndex(d.data.id), sizeMiB: d.data.size / MiB }))
      .filter((d): d is { index: number; sizeMiB: number } => d.index !== undefined)
      .sort((a, b) => b.index - a.index);
    return {
      vcpus,
      maxVcpus: sumCpus(cpus),
      memoryMiB: Math.floor((summary['base-memory'] + (summary['plugged-memory'] ?? 0)) / MiB),
      maxMemoryMiB: Math.floor(machine['max-size'] / MiB),
      memoryStepMiB: MEMORY_STEP_MIB,
      freeMemorySlots: Math.max(0, machine.slots - dimms.length),
      minVcpus: vcpus - sumCpus(mine),
      ...(kvm.enabled
        ? {}
        : {
            vcpuShrinkBlocked:
              'QEMU runs without KVM (TCG), where removing a vCPU can crash QEMU (seen with QEMU 7.2); vCPUs are only added',
          }),
      removableDimmsMiB: removable.map((d) => d.sizeMiB),
    };
  }

  async setVcpus(target: number, view: ResourceView, opts: ResizeCallOptions): Promise<void> {
    const call = this.#call(opts);
    const cpus = await queryHotpluggableCpus(this.#qmp, call);
    let now = sumCpus(cpus.filter((c) => c['qom-path'] !== undefined));
    if (target > now) {
      for (const cpu of cpus.filter((c) => c['qom-path'] === undefined).sort(byTopology)) {
        if (now >= target) break;
        try {
          await deviceAdd(this.#qmp, { driver: cpu.type, id: cpuId(cpu), ...cpu.props }, call);
        } catch (err) {
          throw new ResizeError(
            'RESIZE_FAILED',
            `QEMU refused to add a vCPU (${now} of ${target} plugged): ${(err as Error).message}`,
            'vcpus',
            { cause: err },
          );
        }
        now += cpu['vcpus-count'];
      }
      return;
    }
    // Newest topology slots first, mirroring the order they were added in.
    const mine = cpus.filter(isVmplugCpu).sort(byTopology).reverse();
    for (const cpu of mine) {
      if (now <= target) break;
      const id = (cpu['qom-path'] as string).slice('/machine/peripheral/'.length);
      const slot = cpu.props;
      await this.#unplug(
        id,
        'vcpus',
        `vCPU ${id}`,
        { now, before: view.vcpus },
        async () => {
          const after = await queryHotpluggableCpus(this.#qmp, call);
          return after.some((c) => sameSlot(c.props, slot) && c['qom-path'] === undefined);
        },
        opts,
      );
      now -= cpu['vcpus-count'];
    }
  }

  async setMemory(targetMiB: number, view: ResourceView, opts: ResizeCallOptions): Promise<void> {
    const call = this.#call(opts);
    if (targetMiB > view.memoryMiB) {
      const devices = await this.#memoryDevices(call);
      const objects = await this.#qmp.execute<ObjectPropertyInfo[]>('qom-list', { path: '/objects' }, call);
      const used = [
        ...devices.map((d) => dimmIndex(d.data.id)),
        ...objects.map((o) =>
          o.name.startsWith(MEM_PREFIX) ? Number(o.name.slice(MEM_PREFIX.length)) : undefined,
        ),
      ].filter((n): n is number => n !== undefined && Number.isInteger(n));
      const index = used.length === 0 ? 0 : Math.max(...used) + 1;
      const memdev = `${MEM_PREFIX}${index}`;
      const size = (targetMiB - view.memoryMiB) * MiB;
      try {
        await this.#qmp.execute('object-add', { 'qom-type': 'memory-backend-ram', id: memdev, size }, call);
      } catch (err) {
        throw new ResizeError(
          'RESIZE_FAILED',
          `QEMU refused the memory backend: ${(err as Error).message}`,
          'memoryMiB',
          { cause: err },
        );
      }
      try {
        await deviceAdd(this.#qmp, { driver: 'pc-dimm', id: `${DIMM_PREFIX}${index}`, memdev }, call);
      } catch (err) {
        // Nothing may leak: the backend goes when its DIMM could not be added.
        await this.#qmp.execute('object-del', { id: memdev }, call).catch(() => {});
        throw new ResizeError(
          'RESIZE_FAILED',
          `QEMU refused the DIMM: ${(err as Error).message}`,
          'memoryMiB',
          { cause: err },
        );
      }
      return;
    }
    const devices = await this.#memoryDevices(call);
    const mine = devices
      .map((d) => ({ index: dimmIndex(d.data.id), size: d.data.size, memdev: d.data.memdev }))
      .filter((d): d is { index: number; size: number; memdev: string | undefined } => d.index !== undefined)
      .sort((a, b) => b.index - a.index)
      .slice(0, dimmsToRemove(view, targetMiB));
    let now = view.memoryMiB;
    for (const dimm of mine) {
      const id = `${DIMM_PREFIX}${dimm.index}`;
      await this.#unplug(
        id,
        'memoryMiB',
        `DIMM ${id} (${dimm.size / MiB} MiB)`,
        { now, before: view.memoryMiB },
        async () => !(await this.#memoryDevices(call)).some((d) => d.data.id === id),
        opts,
      );
      now -= dimm.size / MiB;
      const memdev = dimm.memdev?.replace(/^\/objects\//, '') ?? `${MEM_PREFIX}${dimm.index}`;
      await this.#qmp.execute('object-del', { id: memdev }, call).catch(() => {
        // Left for the next inspect, which frees backends without a DIMM.
      });
    }
  }

  /**
   * device_del, then waits (bounded) until `isGone` says QEMU no longer has the device: the guest
   * must release it (ACPI eject). Not DEVICE_DELETED alone: for a CPU, QEMU 7.2 reports only its
   * `lapic` child (a path, no `device`) when the guest ejects it, so the event only cuts the wait
   * short and the query decides. An _OST failure of the eject (ACPI_DEVICE_OST, source 3) is the
   * guest saying no: answered at once rather than at the bound.
   */
  async #unplug(
    id: string,
    field: 'vcpus' | 'memoryMiB',
    what: string,
    progress: { now: number; before: number },
    isGone: () => Promise<boolean>,
    opts: ResizeCallOptions,
  ): Promise<void> {
    const timeoutMs = opts.unplugTimeoutMs ?? DEFAULT_UNPLUG_TIMEOUT_MS;
    const unit = field === 'vcpus' ? '' : ' MiB';
    const where =
      progress.now === progress.before
        ? 'nothing was removed'
        : `it went from ${progress.before}${unit} to ${progress.now}${unit}`;
    let wake: () => void = () => {};
    let refusedStatus: number | undefined;
    const offDeleted = this.#qmp.subscribe('DEVICE_DELETED', (e) => {
      const d = e.data as { device?: string; path?: string };
      if (d.device === id || d.path?.startsWith(`/machine/peripheral/${id}/`)) wake();
    });
    const offOst = this.#qmp.subscribe('ACPI_DEVICE_OST', (e) => {
      const info = (e.data as { info?: { device?: string; source?: number; status?: number } }).info;
      // Source 3 is an eject request; 0 is success and 0x84 "ejection in progress".
      if (info?.device === id && info.source === 3 && info.status !== 0 && info.status !== 0x84) {
        refusedStatus = info.status;
        wake();
      }
    });
    try {
      try {
        await this.#qmp.execute('device_del', { id }, this.#call(opts));
      } catch (err) {
        // An earlier request the guest has not answered yet is still pending: wait for it again
        // rather than fail (a retried shrink after a timeout).
        if (!PENDING_UNPLUG.test((err as Error).message))
          throw new ResizeError(
            'RESIZE_FAILED',
            `QEMU refused to remove ${what} (${where}): ${(err as Error).message}`,
            field,
            {
              cause: err,
            },
          );
      }
      const deadline = performance.now() + timeoutMs;
      for (;;) {
        if (await isGone()) return;
        if (refusedStatus !== undefined)
          throw new ResizeError(
            'GUEST_REFUSED_UNPLUG',
            `the guest refused to release ${what} (ACPI _OST status 0x${refusedStatus.toString(16)}); it stays plugged (${where})`,
            field,
          );
        const left = deadline - performance.now();
        if (left <= 0)
          throw new ResizeError(
            'GUEST_REFUSED_UNPLUG',
            `the guest did not release ${what} within ${timeoutMs} ms; it stays plugged (${where}; the guest may still let go, GET shows the truth)`,
            field,
          );
        if (opts.signal?.aborted) throw opts.signal.reason;
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.min(POLL_MS, left));
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
    } finally {
      offDeleted();
      offOst();
    }
  }

  async #memoryDevices(call: { timeoutMs: number; signal?: AbortSignal }): Promise<MemoryDeviceInfo[]> {
    return this.#qmp.execute<MemoryDeviceInfo[]>('query-memory-devices', undefined, call);
  }

  /** vmpmem- backends whose DIMM is gone (the guest released it after vmplug gave up waiting). */
  async #freeOrphanBackends(
    devices: MemoryDeviceInfo[],
    call: { timeoutMs: number; signal?: AbortSignal },
  ): Promise<void> {
    const inUse = new Set(devices.map((d) => d.data.memdev?.replace(/^\/objects\//, '')));
    const objects = await this.#qmp.execute<ObjectPropertyInfo[]>('qom-list', { path: '/objects' }, call);
    for (const o of objects) {
      if (o.name.startsWith(MEM_PREFIX) && !inUse.has(o.name))
        await this.#qmp.execute('object-del', { id: o.name }, call).catch(() => {});
    }
  }
}

function sameSlot(a: HotpluggableCpu['props'], b: HotpluggableCpu['props']): boolean {
  const keys = ['node-id', 'socket-id', 'die-id', 'cluster-id', 'core-id', 'thread-id'] as const;
  return keys.every((k) => a[k] === b[k]);
}

function sumCpus(cpus: HotpluggableCpu[]): number {
  return cpus.reduce((n, c) => n + c['vcpus-count'], 0);
}

function isVmplugCpu(cpu: HotpluggableCpu): boolean {
  return cpu['qom-path']?.startsWith(`/machine/peripheral/${CPU_PREFIX}`) ?? false;
}

function cpuId(cpu: HotpluggableCpu): string {
  const p = cpu.props;
  return `${CPU_PREFIX}s${p['socket-id'] ?? 0}-c${p['core-id'] ?? 0}-t${p['thread-id'] ?? 0}`;
}

function byTopology(a: HotpluggableCpu, b: HotpluggableCpu): number {
  const key = (c: HotpluggableCpu): number[] => [
    c.props['node-id'] ?? 0,
    c.props['socket-id'] ?? 0,
    c.props['die-id'] ?? 0,
    c.props['cluster-id'] ?? 0,
    c.props['core-id'] ?? 0,
    c.props['thread-id'] ?? 0,
  ];
  const ka = key(a);
  const kb = key(b);
  for (let i = 0; i < ka.length; i++) if (ka[i] !== kb[i]) return (ka[i] ?? 0) - (kb[i] ?? 0);
  return 0;
}

function dimmIndex(id: string | undefined): number | undefined {
  const m = id === undefined ? null : DIMM_ID.exec(id);
  return m?.[1] === undefined ? undefined : Number(m[1]);
}
