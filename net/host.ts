import { execFile } from 'node:child_process';
import { HostNetworkError } from './errors.js';

// The host side of a NIC, through iproute2's `ip` (execFile with argument arrays, each call
// bounded and abortable; no shell). Names reaching argv were validated (spec.ts, naming.ts).

export interface CallOpts {
  timeoutMs: number;
  signal: AbortSignal;
}

export interface LinkInfo {
  name: string;
  /** rtnetlink kind: 'tun' for taps, 'bridge', ... ; undefined for plain devices. */
  kind: string | undefined;
  /** For kind 'tun': 'tap' or 'tun'. */
  tunType: string | undefined;
  mtu: number;
  alias: string | undefined;
  master: string | undefined;
  up: boolean;
  /**
   * Carrier: a tap has one exactly while a process (QEMU) holds it open, so an up vmplug tap
   * without carrier is attached to nobody.
   */
  lowerUp: boolean;
}

/** What the engine needs of the host; the real one runs `ip`, unit tests may fake it. */
export interface HostNetwork {
  link(name: string, opts: CallOpts): Promise<LinkInfo | undefined>;
  links(opts: CallOpts): Promise<LinkInfo[]>;
  /** Creates a persistent tap, named, aliased, optionally with an MTU and a bridge, and up. */
  createTap(
    name: string,
    settings: { alias: string; mtu?: number; bridge?: string },
    opts: CallOpts,
  ): Promise<void>;
  setMtu(name: string, mtu: number, opts: CallOpts): Promise<void>;
  /** Deletes a link; a missing one is not an error. */
  deleteLink(name: string, opts: CallOpts): Promise<void>;
}

export const DEFAULT_IP_TIMEOUT_MS = 5_000;

interface IpJsonLink {
  ifname: string;
  flags?: string[];
  mtu: number;
  master?: string;
  ifalias?: string;
  linkinfo?: { info_kind?: string; info_data?: { type?: string } };
}

function toLinkInfo(j: IpJsonLink): LinkInfo {
  const flags = j.flags ?? [];
  return {
    name: j.ifname,
    kind: j.linkinfo?.info_kind,
    tunType: j.linkinfo?.info_data?.type,
    mtu: j.mtu,
    alias: j.ifalias,
    master: j.master,
    up: flags.includes('UP'),
    lowerUp: flags.includes('LOWER_UP'),
  };
}

export class IpCommandError extends Error {
  constructor(
    readonly args: readonly string[],
    readonly stderr: string,
    options?: { cause?: unknown },
  ) {
    super(`ip ${args.join(' ')}: ${stderr.trim() || 'failed'}`, options);
    this.name = 'IpCommandError';
  }
}

export class IpHostNetwork implements HostNetwork {
  constructor(private readonly ipPath = 'ip') {}

  #ip(args: string[], opts: CallOpts): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile(
        this.ipPath,
        args,
        { timeout: opts.timeoutMs, signal: opts.signal, maxBuffer: 16 * 1024 * 1024, encoding: 'utf8' },
        (err, stdout, stderr) => {
          if (err) reject(new IpCommandError(args, stderr || err.message, { cause: err }));
          else resolve(stdout);
        },
      );
    });
  }

  async link(name: string, opts: CallOpts): Promise<LinkInfo | undefined> {
    try {
      const out = await this.#ip(['-j', '-d', 'link', 'show', 'dev', name], opts);
      const parsed = JSON.parse(out) as IpJsonLink[];
      return parsed[0] === undefined ? undefined : toLinkInfo(parsed[0]);
    } catch (err) {
      if (err instanceof IpCommandError && /does not exist|Cannot find device/.test(err.stderr)) {
        return undefined;
      }
      throw wrap('ip link show', err);
    }
  }

  async links(opts: CallOpts): Promise<LinkInfo[]> {
    try {
      const out = await this.#ip(['-j', '-d', 'link', 'show'], opts);
      return (JSON.parse(out) as IpJsonLink[]).map(toLinkInfo);
    } catch (err) {
      throw wrap('ip link show', err);
    }
  }

  async createTap(
    name: string,
    settings: { alias: string; mtu?: number; bridge?: string },
    opts: CallOpts,
  ): Promise<void> {
    try {
      await this.#ip(['tuntap', 'add', 'dev', name, 'mode', 'tap'], opts);
      const set = ['link', 'set', 'dev', name, 'alias', settings.alias];
      if (settings.mtu !== undefined) set.push('mtu', String(settings.mtu));
      if (settings.bridge !== undefined) set.push('master', settings.bridge);
      set.push('up');
      await this.#ip(set, opts);
    } catch (err) {
      throw wrap('create tap', err);
    }
  }

  async setMtu(name: string, mtu: number, opts: CallOpts): Promise<void> {
    try {
      await this.#ip(['link', 'set', 'dev', name, 'mtu', String(mtu)], opts);
    } catch (err) {
      throw wrap('set mtu', err);
    }
  }

  async deleteLink(name: string, opts: CallOpts): Promise<void> {
    try {
      await this.#ip(['link', 'del', 'dev', name], opts);
    } catch (err) {
      if (err instanceof IpCommandError && /Cannot find device|does not exist/.test(err.stderr)) return;
      throw wrap('delete tap', err);
    }
  }
}

function wrap(operation: string, err: unknown): HostNetworkError {
  if (err instanceof HostNetworkError) return err;
  const cause = (err as { cause?: { code?: unknown; killed?: boolean } }).cause;
  const timedOut = cause?.killed === true;
  const aborted = cause?.code === 'ABORT_ERR';
  const detail = err instanceof IpCommandError ? err.stderr.trim() || err.message : (err as Error).message;
  return new HostNetworkError(operation, timedOut ? 'ip timed out' : aborted ? 'aborted' : detail, {
    cause: err,
    retryable: timedOut || aborted,
  });
}
