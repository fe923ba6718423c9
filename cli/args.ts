import { parseArgs } from 'node:util';
import type { Bus, HostDeviceSourceRequest, Mode, PodRef, RbdSourceRequest } from '../api/index.js';

// `vmplug` command lines parsed into one typed command, or a UsageError (exit code 2). Pure: no
// I/O here; the cephx key is never an argument, only a file (or "-" for stdin) to read it from.

export class UsageError extends Error {
  readonly code = 'USAGE';
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export interface GlobalOptions {
  socket: string | undefined;
  json: boolean;
  timeoutMs: number | undefined;
}

/** The request's rbd source with, instead of the key, where to read it from. */
export type RbdSourceArgs = Omit<RbdSourceRequest, 'key'> & {
  /** Path of the file holding the key, or "-" for stdin. */
  keyFile: string;
};

export type Command =
  | { name: 'help'; topic?: string }
  | { name: 'version' }
  | {
      name: 'attach';
      sandboxId: string;
      volumeId: string;
      mode?: Mode;
      source: HostDeviceSourceRequest | RbdSourceArgs;
      bus?: Bus;
      readOnly: boolean;
      annotations?: Record<string, string>;
      pod?: PodRef;
    }
  | { name: 'detach'; sandboxId: string; volumeId: string }
  | {
      name: 'nic-attach';
      sandboxId: string;
      nicId: string;
      bridge?: string;
      tap?: string;
      mac?: string;
      mtu?: number;
    }
  | { name: 'nic-detach'; sandboxId: string; nicId: string }
  | { name: 'resize'; sandboxId: string; volumeId: string; sizeBytes: number }
  | { name: 'resize-guest'; sandboxId: string; vcpus?: number; memoryMiB?: number }
  | { name: 'ls'; podUid?: string }
  | { name: 'show'; sandboxId: string; volumeId?: string }
  | { name: 'node' }
  | { name: 'doctor' };

export interface ParsedCommandLine {
  global: GlobalOptions;
  command: Command;
}

type OptionSpec = Record<string, { type: 'string' | 'boolean'; short?: string; multiple?: boolean }>;

const GLOBAL_OPTIONS: OptionSpec = {
  socket: { type: 'string' },
  json: { type: 'boolean' },
  'timeout-ms': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
};

const RESIZE_GUEST_OPTIONS: OptionSpec = {
  vcpus: { type: 'string' },
  'memory-mib': { type: 'string' },
};

const ATTACH_OPTIONS: OptionSpec = {
  mode: { type: 'string' },
  device: { type: 'string' },
  pool: { type: 'string' },
  namespace: { type: 'string' },
  image: { type: 'string' },
  snapshot: { type: 'string' },
  monitors: { type: 'string' },
  user: { type: 'string' },
  'key-file': { type: 'string' },
  bus: { type: 'string' },
  'read-only': { type: 'boolean' },
  annotation: { type: 'string', multiple: true },
  'pod-uid': { type: 'string' },
  'pod-name': { type: 'string' },
  'pod-namespace': { type: 'string' },
};

const NIC_OPTIONS: OptionSpec = {
  bridge: { type: 'string' },
  tap: { type: 'string' },
  mac: { type: 'string' },
  mtu: { type: 'string' },
};

const COMMANDS: Record<string, { options: OptionSpec; positionals: [number, number] }> = {
  'nic-attach': { options: NIC_OPTIONS, positionals: [2, 2] },
  'nic-detach': { options: {}, positionals: [2, 2] },
  attach: { options: ATTACH_OPTIONS, positionals: [2, 2] },
  detach: { options: {}, positionals: [2, 2] },
  resize: { options: {}, positionals: [3, 3] },
  'resize-guest': { options: RESIZE_GUEST_OPTIONS, positionals: [1, 1] },
  ls: { options: { 'pod-uid': { type: 'string' } }, positionals: [0, 0] },
  show: { options: {}, positionals: [1, 2] },
  node: { options: {}, positionals: [0, 0] },
  doctor: { options: {}, positionals: [0, 0] },
  help: { options: {}, positionals: [0, 1] },
};

export function parseCommandLine(argv: readonly string[]): ParsedCommandLine {
  const args = [...argv];
  // The command is the first word that is not an option or an option's value.
  const at = commandIndex(args);
  const name = at === undefined ? undefined : args[at];
  if (at === undefined || name === undefined) {
    const { values } = parse(args, GLOBAL_OPTIONS_WITH_VERSION, [0, 0], 'vmplug');
    const global = globalOptions(values);
    if (values.version === true) return { global, command: { name: 'version' } };
    return { global, command: { name: 'help' } };
  }
  const spec = COMMANDS[name];
  if (spec === undefined) throw new UsageError(`unknown command "${clip(name)}" (see vmplug --help)`);
  const rest = args.filter((_, i) => i !== at);
  const { values, positionals } = parse(rest, { ...GLOBAL_OPTIONS, ...spec.options }, spec.positionals, name);
  const global = globalOptions(values);
  if (values.help === true) return { global, command: { name: 'help', topic: name } };
  const p = positionals;
  switch (name) {
    case 'help':
      return { global, command: p[0] === undefined ? { name: 'help' } : { name: 'help', topic: p[0] } };
    case 'attach':
      return { global, command: attachCommand(p[0]!, p[1]!, values) };
    case 'detach':
      return { global, command: { name: 'detach', sandboxId: p[0]!, volumeId: p[1]! } };
    case 'nic-attach':
      return { global, command: nicAttachCommand(p[0]!, p[1]!, values) };
    case 'nic-detach':
      return { global, command: { name: 'nic-detach', sandboxId: p[0]!, nicId: p[1]! } };
    case 'resize':
      return {
        global,
        command: { name: 'resize', sandboxId: p[0]!, volumeId: p[1]!, sizeBytes: parseSize(p[2]!) },
      };
    case 'resize-guest': {
      const vcpus = positiveInt(values.vcpus, '--vcpus');
      const memoryMiB = positiveInt(values['memory-mib'], '--memory-mib');
      return {
        global,
        command: {
          name: 'resize-guest',
          sandboxId: p[0]!,
          ...(vcpus !== undefined ? { vcpus } : {}),
          ...(memoryMiB !== undefined ? { memoryMiB } : {}),
        },
      };
    }
    case 'ls': {
      const podUid = str(values['pod-uid']);
      return { global, command: podUid === undefined ? { name: 'ls' } : { name: 'ls', podUid } };
    }
    case 'show':
      return {
        global,
        command:
          p[1] === undefined
            ? { name: 'show', sandboxId: p[0]! }
            : { name: 'show', sandboxId: p[0]!, volumeId: p[1] },
      };
    case 'doctor':
      return { global, command: { name: 'doctor' } };
    default:
      return { global, command: { name: 'node' } };
  }
}

const GLOBAL_OPTIONS_WITH_VERSION: OptionSpec = { ...GLOBAL_OPTIONS, version: { type: 'boolean' } };

/** Options of every command that take a value, so their values are not taken for the command. */
const VALUE_OPTIONS = new Set(
  Object.entries({
    ...GLOBAL_OPTIONS,
    ...ATTACH_OPTIONS,
    ...RESIZE_GUEST_OPTIONS,
    ...NIC_OPTIONS,
    'pod-uid': { type: 'string' },
  })
    .filter(([, o]) => o.type === 'string')
    .map(([k]) => `--${k}`),
);

function positiveInt(value: Values[string], option: string): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || !/^[1-9][0-9]{0,8}$/.test(value))
    throw new UsageError(`${option} takes a positive whole number, got "${clip(String(value))}"`);
  return Number(value);
}

function commandIndex(args: string[]): number | undefined {
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--') return undefined;
    if (a.startsWith('-')) {
      if (VALUE_OPTIONS.has(a)) i++;
      continue;
    }
    return i;
  }
  return undefined;
}

type Values = Record<string, string | boolean | (string | boolean)[] | undefined>;

function parse(
  args: string[],
  options: OptionSpec,
  [min, max]: [number, number],
  command: string,
): { values: Values; positionals: string[] } {
  let parsed: { values: Values; positionals: string[] };
  try {
    parsed = parseArgs({ args, options, strict: true, allowPositionals: true }) as typeof parsed;
  } catch (err) {
    throw new UsageError(
      `${command}: ${(err as Error).message.split('\n')[0]} (see vmplug ${command} --help)`,
    );
  }
  if (parsed.values.help === true) return parsed;
  const n = parsed.positionals.length;
  if (n < min || n > max) {
    const want = min === max ? `${min}` : `${min} to ${max}`;
    throw new UsageError(`${command}: expects ${want} argument(s), got ${n} (see vmplug ${command} --help)`);
  }
  return parsed;
}

function globalOptions(values: Values): GlobalOptions {
  const t = str(values['timeout-ms']);
  let timeoutMs: number | undefined;
  if (t !== undefined) {
    if (!/^[0-9]{1,9}$/.test(t) || Number(t) < 1)
      throw new UsageError('--timeout-ms: must be a positive integer');
    timeoutMs = Number(t);
  }
  return { socket: str(values.socket), json: values.json === true, timeoutMs };
}

function attachCommand(sandboxId: string, volumeId: string, v: Values): Command {
  const mode = str(v.mode);
  if (mode !== undefined && mode !== 'block' && mode !== 'rbd') {
    throw new UsageError('attach: --mode must be "block" or "rbd"');
  }
  const device = str(v.device);
  const rbdFlags = ['pool', 'namespace', 'image', 'snapshot', 'monitors', 'user', 'key-file'].filter(
    (k) => v[k] !== undefined,
  );
  const isBlock = mode === 'block' || (mode === undefined && device !== undefined);
  let source: (Command & { name: 'attach' })['source'];
  if (isBlock) {
    if (device === undefined) throw new UsageError('attach: --mode block needs --device <path>');
    if (rbdFlags.length > 0)
      throw new UsageError(`attach: --${rbdFlags[0]} is for --mode rbd, not with --device`);
    source = { type: 'hostDevice', path: device };
  } else {
    if (device !== undefined) throw new UsageError('attach: --device is for --mode block');
    if (mode === undefined && rbdFlags.length === 0) {
      throw new UsageError(
        'attach: give --device <path> (block mode) or --pool/--image/--monitors/--user/--key-file (rbd mode)',
      );
    }
    const need = (k: string): string => {
      const s = str(v[k]);
      if (s === undefined || s === '') throw new UsageError(`attach: rbd mode needs --${k}`);
      return s;
    };
    const pool = need('pool');
    const image = need('image');
    const monitors = need('monitors')
      .split(',')
      .map((m) => m.trim())
      .filter((m) => m.length > 0);
    const user = need('user');
    const keyFile = need('key-file');
    source = { type: 'rbd', pool, image, monitors, user, keyFile };
    const ns = str(v.namespace);
    const snap = str(v.snapshot);
    if (ns !== undefined) source.namespace = ns;
    if (snap !== undefined) source.snapshot = snap;
  }
  const cmd: Command & { name: 'attach' } = {
    name: 'attach',
    sandboxId,
    volumeId,
    source,
    readOnly: v['read-only'] === true,
  };
  if (mode !== undefined) cmd.mode = mode;
  const bus = str(v.bus);
  if (bus !== undefined) {
    if (bus !== 'auto' && bus !== 'scsi' && bus !== 'virtio-blk') {
      throw new UsageError('attach: --bus must be "auto", "scsi" or "virtio-blk"');
    }
    cmd.bus = bus;
  }
  const ann = v.annotation;
  if (Array.isArray(ann) && ann.length > 0) {
    const annotations: Record<string, string> = {};
    for (const a of ann) {
      const s = String(a);
      const eq = s.indexOf('=');
      if (eq <= 0) throw new UsageError(`attach: --annotation must be key=value (got "${clip(s)}")`);
      annotations[s.slice(0, eq)] = s.slice(eq + 1);
    }
    cmd.annotations = annotations;
  }
  // Checked by the daemon (one rule set); here only that a name comes with the uid it belongs to.
  const podUid = str(v['pod-uid']);
  const podName = str(v['pod-name']);
  const podNamespace = str(v['pod-namespace']);
  if (podUid === undefined && (podName !== undefined || podNamespace !== undefined)) {
    throw new UsageError('attach: --pod-name and --pod-namespace need --pod-uid');
  }
  if (podUid !== undefined) {
    cmd.pod = {
      uid: podUid,
      ...(podName !== undefined ? { name: podName } : {}),
      ...(podNamespace !== undefined ? { namespace: podNamespace } : {}),
    };
  }
  return cmd;
}

function nicAttachCommand(sandboxId: string, nicId: string, v: Values): Command {
  const bridge = str(v.bridge);
  const tap = str(v.tap);
  if ((bridge === undefined) === (tap === undefined)) {
    throw new UsageError(
      'nic-attach: give either --bridge <bridge> (vmplug creates the tap) or --tap <existing tap>',
    );
  }
  const cmd: Command & { name: 'nic-attach' } = { name: 'nic-attach', sandboxId, nicId };
  if (bridge !== undefined) cmd.bridge = bridge;
  if (tap !== undefined) cmd.tap = tap;
  const mac = str(v.mac);
  if (mac !== undefined) cmd.mac = mac;
  const mtu = positiveInt(v.mtu, '--mtu');
  if (mtu !== undefined) cmd.mtu = mtu;
  return cmd;
}

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tib: 1024 ** 4,
  kb: 1000,
  mb: 1000 ** 2,
  gb: 1000 ** 3,
  tb: 1000 ** 4,
};

/** "10737418240", "10G", "10GiB" (binary), "10GB" (decimal) -> bytes. */
export function parseSize(text: string): number {
  const m = /^([0-9]+)\s*([A-Za-z]*)$/.exec(text.trim());
  const unit = m === null ? undefined : UNITS[m[2]!.toLowerCase()];
  if (m === null || unit === undefined) {
    throw new UsageError(
      `resize: size "${clip(text)}" must be bytes or a number with K, M, G, T (binary) or KB, MB, GB, TB`,
    );
  }
  const n = Number(m[1]) * unit;
  if (!Number.isSafeInteger(n) || n <= 0)
    throw new UsageError(`resize: size "${clip(text)}" is out of range`);
  return n;
}

function str(v: Values[string]): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

function clip(s: string): string {
  return s.length > 60 ? `${s.slice(0, 60)}…` : s;
}
