import {
  deviceAdd,
  deviceDelAndWait,
  queryHotpluggableCpus,
  queryMemorySizeSummary,
} from '../../qmp/commands.js';
import { QmpTimeoutError } from '../../qmp/errors.js';
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
}

export class QmpResizer implements GuestResizer {
  readonly kind = 'kata' as const;
  readonly #qmp: QmpExecutor;
  readonly #timeoutMs: number;

  constructor(qmp: QmpExecutor, opts: QmpResizerOptions = {}) {
    this.#qmp = qmp;
    this.#timeoutMs = opts.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
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
      await this.#unplug(id, 'vcpus', `vCPU ${id}`, now, view.vcpus, opts);
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
      await this.#unplug(id, 'memoryMiB', `DIMM ${id} (${dimm.size / MiB} MiB)`, now, view.memoryMiB, opts);
      now -= dimm.size / MiB;
      const memdev = dimm.memdev?.replace(/^\/objects\//, '') ?? `${MEM_PREFIX}${dimm.index}`;
      await this.#qmp.execute('object-del', { id: memdev }, call).catch(() => {
        // Left for the next inspect, which frees backends without a DIMM.
      });
    }
  }

  /** device_del, then DEVICE_DELETED within the unplug bound: the guest must release it (ACPI eject). */
  async #unplug(
    id: string,
    field: 'vcpus' | 'memoryMiB',
    what: string,
    now: number,
    before: number,
    opts: ResizeCallOptions,
  ): Promise<void> {
    const timeoutMs = opts.unplugTimeoutMs ?? DEFAULT_UNPLUG_TIMEOUT_MS;
    try {
      await deviceDelAndWait(this.#qmp, id, opts.signal ? { timeoutMs, signal: opts.signal } : { timeoutMs });
    } catch (err) {
      const unit = field === 'vcpus' ? '' : ' MiB';
      const where = now === before ? 'nothing was removed' : `it went from ${before}${unit} to ${now}${unit}`;
      if (err instanceof QmpTimeoutError)
        throw new ResizeError(
          'GUEST_REFUSED_UNPLUG',
          `the guest did not release ${what} within ${timeoutMs} ms; it stays plugged (${where}; the guest may still let go, GET shows the truth)`,
          field,
          { cause: err },
        );
      throw new ResizeError(
        'RESIZE_FAILED',
        `QEMU refused to remove ${what} (${where}): ${(err as Error).message}`,
        field,
        { cause: err },
      );
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
