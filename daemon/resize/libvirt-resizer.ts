import { performance } from 'node:perf_hooks';
import { DomainModify, type LibvirtConnection, type LibvirtUuid, VcpuFlags } from '../../libvirt/index.js';
import { type DomainResources, dimmXml, parseDomainResources } from './domain-xml.js';
import { ResizeError } from './errors.js';
import type { GuestResizer, ResizeCallOptions, ResourceView } from './types.js';
import { dimmsToRemove } from './validate.js';

// Resize of a libvirt domain through libvirt itself, so its own view of the domain stays true:
// vCPUs with setVcpusFlags(LIVE) (libvirt plugs / unplugs QEMU's CPUs), memory with DIMM devices
// (attachDeviceFlags / detachDeviceAlias, user alias ua-vmpdimm-<n>): setMemoryFlags(LIVE) only
// moves a balloon, which neither adds memory nor exists on every domain.

const MEMORY_STEP_MIB = 128;
const DEFAULT_CALL_TIMEOUT_MS = 30_000;
const DEFAULT_UNPLUG_TIMEOUT_MS = 20_000;

export interface LibvirtResizerOptions {
  callTimeoutMs?: number;
  /** As for Kata sandboxes: vCPU removal stays off on a TCG (type='qemu') domain unless set. */
  vcpuUnplugWithoutKvm?: boolean;
}

export class LibvirtResizer implements GuestResizer {
  readonly kind = 'libvirt' as const;
  readonly #conn: LibvirtConnection;
  readonly #uuid: LibvirtUuid;
  readonly #timeoutMs: number;
  readonly #unplugWithoutKvm: boolean;

  constructor(conn: LibvirtConnection, uuid: LibvirtUuid, opts: LibvirtResizerOptions = {}) {
    this.#conn = conn;
    this.#uuid = uuid;
    this.#timeoutMs = opts.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    this.#unplugWithoutKvm = opts.vcpuUnplugWithoutKvm ?? false;
  }

  #call(opts: ResizeCallOptions): { timeoutMs: number; signal?: AbortSignal } {
    return opts.signal ? { timeoutMs: this.#timeoutMs, signal: opts.signal } : { timeoutMs: this.#timeoutMs };
  }

  async #domain(opts: ResizeCallOptions): Promise<DomainResources> {
    const xml = await this.#conn.getXMLDesc(this.#uuid, 0, this.#call(opts));
    return parseDomainResources(xml);
  }

  async inspect(opts: ResizeCallOptions): Promise<ResourceView> {
    const d = await this.#domain(opts);
    const newestFirst = [...d.vmplugDimms].sort((a, b) => b.index - a.index);
    return {
      vcpus: d.vcpus,
      maxVcpus: d.maxVcpus,
      memoryMiB: Math.floor(d.memoryKiB / 1024),
      maxMemoryMiB: Math.floor(d.maxMemoryKiB / 1024),
      memoryStepMiB: MEMORY_STEP_MIB,
      freeMemorySlots: Math.max(0, d.slots - d.memoryDevices),
      minVcpus: Math.min(d.vcpus, d.fixedVcpus),
      removableDimmsMiB: newestFirst.map((x) => Math.floor(x.sizeKiB / 1024)),
      ...(d.domainType === 'kvm' || this.#unplugWithoutKvm
        ? {}
        : {
            vcpuShrinkBlocked: `the domain runs without KVM (type '${d.domainType}'), where removing a vCPU can crash QEMU (seen with QEMU 7.2); vCPUs are only added`,
          }),
    };
  }

  async setVcpus(target: number, _view: ResourceView, opts: ResizeCallOptions): Promise<void> {
    try {
      await this.#conn.setVcpusFlags(this.#uuid, target, VcpuFlags.LIVE, this.#call(opts));
    } catch (err) {
      // libvirt waits for the guest to release unplugged vCPUs and fails when it does not.
      const after = await this.#domain(opts).catch(() => undefined);
      const now = after ? ` (the domain has ${after.vcpus} now)` : '';
      const code = after !== undefined && target < after.vcpus ? 'GUEST_REFUSED_UNPLUG' : 'RESIZE_FAILED';
      throw new ResizeError(
        code,
        `libvirt could not set ${target} vCPUs${now}: ${(err as Error).message}`,
        'vcpus',
        {
          cause: err,
        },
      );
    }
  }

  async setMemory(targetMiB: number, view: ResourceView, opts: ResizeCallOptions): Promise<void> {
    const d = await this.#domain(opts);
    if (targetMiB > view.memoryMiB) {
      const index = d.vmplugDimms.length === 0 ? 0 : Math.max(...d.vmplugDimms.map((x) => x.index)) + 1;
      try {
        await this.#conn.attachDeviceFlags(
          this.#uuid,
          dimmXml(index, targetMiB - view.memoryMiB),
          DomainModify.LIVE,
          this.#call(opts),
        );
      } catch (err) {
        throw new ResizeError(
          'RESIZE_FAILED',
          `libvirt refused the DIMM: ${(err as Error).message}`,
          'memoryMiB',
          {
            cause: err,
          },
        );
      }
      return;
    }
    const remove = [...d.vmplugDimms]
      .sort((a, b) => b.index - a.index)
      .slice(0, dimmsToRemove(view, targetMiB));
    let now = view.memoryMiB;
    for (const dimm of remove) {
      await this.#detach(
        dimm.alias,
        `DIMM ${dimm.alias} (${dimm.sizeKiB / 1024} MiB)`,
        now,
        view.memoryMiB,
        opts,
      );
      now -= dimm.sizeKiB / 1024;
    }
  }

  /** detachDeviceAlias, then libvirt's deviceRemoved for the alias within the unplug bound. */
  async #detach(
    alias: string,
    what: string,
    now: number,
    before: number,
    opts: ResizeCallOptions,
  ): Promise<void> {
    const timeoutMs = opts.unplugTimeoutMs ?? DEFAULT_UNPLUG_TIMEOUT_MS;
    const where = now === before ? 'nothing was removed' : `it went from ${before} MiB to ${now} MiB`;
    const started = performance.now();
    // Subscribed before the request: the event can arrive before detachDeviceAlias returns.
    const outcome = this.#conn
      .waitForEvent(
        (e) =>
          (e.kind === 'deviceRemoved' || e.kind === 'deviceRemovalFailed') &&
          e.domain.uuid === this.#uuid &&
          e.alias === alias,
        opts.signal ? { timeoutMs, signal: opts.signal } : { timeoutMs },
      )
      .then(
        (e) => e.kind,
        () => 'timeout' as const,
      );
    try {
      await this.#conn.detachDeviceAlias(this.#uuid, alias, DomainModify.LIVE, this.#call(opts));
    } catch (err) {
      void outcome;
      throw new ResizeError(
        'RESIZE_FAILED',
        `libvirt refused to remove ${what} (${where}): ${(err as Error).message}`,
        'memoryMiB',
        {
          cause: err,
        },
      );
    }
    const result = await outcome;
    if (result === 'deviceRemoved') return;
    // The event may have come and gone before the wait was armed on a slow loop: the XML decides.
    const still = (await this.#domain(opts)).vmplugDimms.some((x) => x.alias === alias);
    if (!still) return;
    const waited = Math.round(performance.now() - started);
    throw new ResizeError(
      'GUEST_REFUSED_UNPLUG',
      result === 'deviceRemovalFailed'
        ? `the guest refused to release ${what}; it stays plugged (${where})`
        : `the guest did not release ${what} within ${waited} ms; it stays plugged (${where}; the guest may still let go, GET shows the truth)`,
      'memoryMiB',
    );
  }
}
