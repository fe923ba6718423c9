import { BackendError } from '../../core/errors.js';
import type { SandboxId } from '../../core/ids.js';
import type { LibvirtConnection, LibvirtUuid } from '../../libvirt/binding.js';
import type { LibvirtDomains } from '../../libvirt/domains.js';
import type { AttachService, ListVolumes } from '../../storage/attach-service.js';
import type { LibvirtAttachService } from '../../storage/libvirt/engine.js';
import type { SandboxDirectory } from '../../storage/sandbox-directory.js';

// One REST surface over two kinds of sandbox: a Kata sandbox (discovery knows it) goes to the Kata
// engine, a libvirt domain (by name) to the libvirt service; anything else to the Kata engine,
// which answers 404 (or, for a detach, the idempotent 204). Kata first: discovery's ids come from
// vmplug's own monitors, and a Kata id and a domain name clashing would be an operator's doing.

export type ResolvedSandbox =
  | { kind: 'kata'; id: SandboxId }
  | { kind: 'libvirt'; id: SandboxId; domainName: string; uuid: LibvirtUuid; connection: LibvirtConnection };

/**
 * Which hypervisor runs `id`. For a libvirt domain it hands out the live connection (for resize,
 * which drives libvirt directly); a known domain while libvirtd is away throws a retryable
 * BackendError rather than pretend the domain does not exist.
 */
export type SandboxResolver = (id: SandboxId) => ResolvedSandbox | undefined;

export function createSandboxResolver(kata: SandboxDirectory, domains?: LibvirtDomains): SandboxResolver {
  return (id) => {
    if (kata.lookup(id).state !== 'gone') return { kind: 'kata', id };
    const d = domains?.get(id);
    if (d === undefined || domains === undefined) return undefined;
    const connection = domains.connection;
    if (connection === undefined) {
      throw new BackendError('libvirt', domains.health().detail, { retryable: true });
    }
    return { kind: 'libvirt', id, domainName: d.name, uuid: d.uuid, connection };
  };
}

export interface AttachRouterOptions {
  kata: AttachService;
  kataVolumes: ListVolumes;
  kataSandboxes: SandboxDirectory;
  libvirt: LibvirtAttachService;
  domains: LibvirtDomains;
}

export class AttachRouter implements AttachService {
  readonly #o: AttachRouterOptions;

  constructor(opts: AttachRouterOptions) {
    this.#o = opts;
  }

  /**
   * The service of `id`: Kata when discovery knows it, libvirt for a known domain or one vmplug
   * still has records of (a detach after the domain went away cleans its secret up).
   */
  async serviceOf(id: SandboxId): Promise<'kata' | 'libvirt'> {
    if (this.#o.kataSandboxes.lookup(id).state !== 'gone') return 'kata';
    if (this.#o.domains.get(id) !== undefined) return 'libvirt';
    return (await this.#o.libvirt.hasRecords(id)) ? 'libvirt' : 'kata';
  }

  async #pick(id: SandboxId): Promise<AttachService> {
    return (await this.serviceOf(id)) === 'libvirt' ? this.#o.libvirt : this.#o.kata;
  }

  // Each call goes, unchanged, to the service that owns the sandbox (its signature is the
  // AttachService interface's, written once there).
  attach: AttachService['attach'] = async (sandboxId, ...rest) =>
    (await this.#pick(sandboxId)).attach(sandboxId, ...rest);

  detach: AttachService['detach'] = async (sandboxId, ...rest) =>
    (await this.#pick(sandboxId)).detach(sandboxId, ...rest);

  get: AttachService['get'] = async (sandboxId, ...rest) =>
    (await this.#pick(sandboxId)).get(sandboxId, ...rest);

  resize: AttachService['resize'] = async (sandboxId, ...rest) =>
    (await this.#pick(sandboxId)).resize(sandboxId, ...rest);

  /** The volumes of a sandbox, from the service that owns it. */
  listVolumes: ListVolumes = async (sandboxId, ctx) =>
    (await this.serviceOf(sandboxId)) === 'libvirt'
      ? this.#o.libvirt.list(sandboxId, ctx)
      : this.#o.kataVolumes(sandboxId, ctx);
}
