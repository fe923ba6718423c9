import { constants } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { SandboxId } from '../../core/ids.js';

// Who a Kata sandbox belongs to, read from Kata's own files. Identity is a nicety for reporting
// (which pod a disk went to): missing, unreadable, oversized or strangely shaped files mean "not
// known", never an error, because Kata's persist format is not a contract vmplug controls.
//
// Kata's persist.json (<sbs root>/<id>/persist.json, virtcontainers/persist/api SandboxState) does
// not keep sandbox-level annotations; the pod's CRI annotations are on the sandbox container in
// Config.ContainerConfigs[] (whose ID is the sandbox id, also SandboxState.SandboxContainer).
// containerd spells them io.kubernetes.cri.sandbox-{uid,name,namespace}, CRI-O
// io.kubernetes.pod.{uid,name,namespace}.

export interface PodIdentity {
  uid?: string;
  name?: string;
  namespace?: string;
}

export interface KataFiles {
  /** Kata's per-sandbox state directory root, /run/vc/sbs by default. */
  sbsRoot: string;
  /** Kata's per-VM directory root, /run/vc/vm by default. */
  vmRoot: string;
  /**
   * vmplug's monitor directory: bin/vmplug-qemu writes <monitorDir>/<id>/pod.json at QEMU start
   * from the sandbox bundle's config.json, so the pod is known before Kata's persist.json exists.
   */
  monitorDir?: string;
}

export interface KataIdentity {
  pod?: PodIdentity;
  /** QEMU's pid when Kata recorded it (persist.json HypervisorState.Pid, or the VM dir's pid file). */
  qemuPid?: number;
  /** Where `pod` came from: Kata's persist.json, or the wrapper's pod.json (until Kata writes). */
  podSource?: 'kata' | 'wrapper';
}

const PERSIST_MAX_BYTES = 4 * 1024 * 1024;
const PID_MAX_BYTES = 64;
const WRAPPER_POD_MAX_BYTES = 4096;
const READ_TIMEOUT_MS = 2_000;

const ANNOTATIONS = {
  uid: ['io.kubernetes.cri.sandbox-uid', 'io.kubernetes.pod.uid'],
  name: ['io.kubernetes.cri.sandbox-name', 'io.kubernetes.pod.name'],
  namespace: ['io.kubernetes.cri.sandbox-namespace', 'io.kubernetes.pod.namespace'],
} as const;

// Kubernetes names are at most 253 characters; anything else is not an identity we report.
const VALUE_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,252}$/;

/** Reads what Kata knows about `id`; never throws (an abort included: the answer is then empty). */
export async function readKataIdentity(
  files: KataFiles,
  id: SandboxId,
  signal?: AbortSignal,
): Promise<KataIdentity> {
  const out: KataIdentity = {};
  const persist = await readBounded(join(files.sbsRoot, id, 'persist.json'), PERSIST_MAX_BYTES, signal);
  if (persist !== undefined) {
    const parsed = identityFromPersist(persist, id);
    if (parsed.pod !== undefined) {
      out.pod = parsed.pod;
      out.podSource = 'kata';
    }
    if (parsed.qemuPid !== undefined) out.qemuPid = parsed.qemuPid;
  }
  // Kata's runtime identity wins; the wrapper's record fills in while persist.json is not written
  // yet (or lacks the pod), and never mixes with a runtime identity of another pod.
  if (out.pod?.uid === undefined && files.monitorDir !== undefined) {
    const text = await readBounded(join(files.monitorDir, id, 'pod.json'), WRAPPER_POD_MAX_BYTES, signal);
    const wrapper = text === undefined ? undefined : podFromWrapperRecord(text);
    if (wrapper !== undefined) {
      out.pod = { ...wrapper, ...out.pod, uid: wrapper.uid };
      out.podSource = 'wrapper';
    }
  }
  if (out.qemuPid === undefined) {
    const pidText = await readBounded(join(files.vmRoot, id, 'pid'), PID_MAX_BYTES, signal);
    const pid = pidText === undefined ? undefined : parsePid(pidText.trim());
    if (pid !== undefined) out.qemuPid = pid;
  }
  return out;
}

/**
 * Changes whenever one of the files readKataIdentity reads changes (their mtimes and sizes), so a
 * caller can skip re-reading files that did not change.
 */
export async function identityStamp(files: KataFiles, id: SandboxId): Promise<string> {
  const parts = await Promise.all(
    [
      join(files.sbsRoot, id, 'persist.json'),
      join(files.vmRoot, id, 'pid'),
      ...(files.monitorDir === undefined ? [] : [join(files.monitorDir, id, 'pod.json')]),
    ].map((p) =>
      stat(p).then(
        (st) => `${st.mtimeMs}:${st.size}`,
        () => '-',
      ),
    ),
  );
  return parts.join('|');
}

/** The identity in a persist.json text; pure, for tests. */
export function identityFromPersist(text: string, id: string): KataIdentity {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return {};
  }
  if (!isObject(json)) return {};
  const out: KataIdentity = {};
  const hv = json.HypervisorState;
  if (isObject(hv)) {
    const pid = parsePid(hv.Pid);
    if (pid !== undefined) out.qemuPid = pid;
  }
  const config = json.Config;
  const containers =
    isObject(config) && Array.isArray(config.ContainerConfigs) ? config.ContainerConfigs : [];
  const sandboxContainer = typeof json.SandboxContainer === 'string' ? json.SandboxContainer : id;
  // The sandbox container first; any other container of the pod carries the same pod annotations
  // in newer containerd releases, so they are a fallback.
  const ordered = [
    ...containers.filter((c) => isObject(c) && (c.ID === sandboxContainer || c.ID === id)),
    ...containers.filter((c) => isObject(c) && c.ID !== sandboxContainer && c.ID !== id),
  ];
  for (const c of ordered) {
    if (!isObject(c) || !isObject(c.Annotations)) continue;
    const pod = podFromAnnotations(c.Annotations);
    if (pod !== undefined) {
      out.pod = pod;
      break;
    }
  }
  return out;
}

const UUID_PATTERN = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
const DNS_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/;
const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * The pod in the wrapper's pod.json ({"uid","name","namespace"}); pure. The wrapper validated it,
 * the daemon validates again: the file sits in a directory other processes may write. A record
 * without a valid uid is no identity; an invalid name or namespace is dropped alone.
 */
export function podFromWrapperRecord(text: string): (PodIdentity & { uid: string }) | undefined {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (!isObject(json) || typeof json.uid !== 'string' || !UUID_PATTERN.test(json.uid)) return undefined;
  const pod: PodIdentity & { uid: string } = { uid: json.uid };
  if (typeof json.name === 'string' && DNS_SUBDOMAIN.test(json.name)) pod.name = json.name;
  if (typeof json.namespace === 'string' && DNS_LABEL.test(json.namespace)) pod.namespace = json.namespace;
  return pod;
}

export function podFromAnnotations(annotations: Record<string, unknown>): PodIdentity | undefined {
  const pod: PodIdentity = {};
  for (const field of ['uid', 'name', 'namespace'] as const) {
    for (const key of ANNOTATIONS[field]) {
      const v = annotations[key];
      if (typeof v === 'string' && VALUE_PATTERN.test(v)) {
        pod[field] = v;
        break;
      }
    }
  }
  return Object.keys(pod).length > 0 ? pod : undefined;
}

function parsePid(v: unknown): number | undefined {
  const n =
    typeof v === 'number' ? v : typeof v === 'string' && /^[0-9]{1,10}$/.test(v) ? Number(v) : Number.NaN;
  return Number.isSafeInteger(n) && n > 1 && n < 2 ** 31 ? n : undefined;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The file's text when it is a regular file of at most `max` bytes; undefined otherwise. */
async function readBounded(path: string, max: number, signal?: AbortSignal): Promise<string | undefined> {
  const timeout = AbortSignal.timeout(READ_TIMEOUT_MS);
  const s = signal === undefined ? timeout : AbortSignal.any([signal, timeout]);
  let fh: Awaited<ReturnType<typeof open>> | undefined;
  try {
    // O_NONBLOCK: a FIFO planted at the path must not hang the read.
    fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
    const st = await fh.stat();
    if (!st.isFile() || st.size > max) return undefined;
    const text = await fh.readFile({ encoding: 'utf8', signal: s });
    return Buffer.byteLength(text) > max ? undefined : text;
  } catch {
    return undefined;
  } finally {
    await fh?.close().catch(() => {});
  }
}
