import { readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, isAbsolute, join, normalize } from 'node:path';
import { parseArgs } from 'node:util';
import { compileDeviceGlob, type DeviceGlob, parseDeviceGlobList } from '../storage/device-glob.js';
import { DEFAULT_QMP_TIMEOUT_MS } from '../storage/engine.js';
import { DEFAULT_ALLOWED_DEVICES } from '../storage/host-device.js';
import { LAUNCHERS, type Launcher } from '../storage/storage-daemon/index.js';
import { LOG_LEVELS, type LogLevel } from './logger.js';

// vmplugd's settings. Each key can come from a flag, an environment variable or the JSON config
// file; precedence is flag > environment > file > default, and every value is checked at start-up
// with a message that names the key and where the bad value came from, so an operator can fix the
// right place. Unknown flags and unknown file keys are errors (a typo must not silently fall back
// to a default). The file is JSON: it needs no extra parser, and a DaemonSet renders it from a
// ConfigMap as easily as YAML.

export interface DaemonConfig {
  socket: string;
  stateDir: string;
  monitorDir: string;
  kataVmRoot: string;
  /** Kata's persist root (persist.json per sandbox); null: `sbs` beside kataVmRoot (/run/vc/sbs). */
  kataSbsRoot: string | null;
  /** null: libvirt domains are not managed. */
  libvirtUri: string | null;
  logLevel: LogLevel;
  /** Group (name or gid) the socket is given to; null keeps the daemon's own group. */
  socketGroup: string | number | null;
  socketMode: number;
  nodeName: string;
  /** null: in-cluster service account if present, else no cluster. */
  kubeconfig: string | null;
  /** Namespace of the node's heartbeat Lease. */
  leaseNamespace: string;
  maxConcurrentOps: number;
  /** How long shutdown waits for in-flight requests before aborting them. */
  shutdownTimeoutMs: number;
  /**
   * Bound of each QMP command of a volume attach or detach. A command past it is in doubt: the
   * volume is rolled back (or its detach finished) when QEMU's late answer arrives.
   */
  qmpTimeoutMs: number;
  /** Period of the engine's reconcile (journal against QEMU); 0 runs it at start-up only. */
  reconcileIntervalMs: number;
  /** Period of discovery's full rescan of --monitor-dir (fs.watch only hastens it). */
  discoveryRescanMs: number;
  /** How long a sandbox's monitor may refuse connections (QEMU dead) before it is gone and pruned. */
  sandboxGoneGraceMs: number;
  /**
   * Block mode: the host devices a guest may be given, as globs on the resolved path (symlinks
   * followed); empty: none. Default /dev/rbd*, /dev/nbd*, /dev/mapper/* (storage/host-device.ts).
   */
  allowedDevices: readonly DeviceGlob[];
  /** kubelet's root directory: a pod volume's targetPath must be a CSI mount path under it. */
  kubeletRoot: string;
  /** Where Kata's runtime reads direct-assigned volume records (mountInfo.json per target path). */
  kataDirectVolumeRoot: string;
  /** Kata's vhost_user_store_path: rbd pod volumes are exported there (block/sockets, block/devices). */
  kataVhostUserStore: string;
  /** qemu-storage-daemon for rbd hot-attach (DESIGN §5c); null: no storage-daemon backend (rbd in QEMU). */
  hotAttachQsdBinary: string | null;
  /** The hot-attach storage daemons' own directory (state, QMP sockets: keep it short, < 108-byte sockets). */
  hotAttachQsdDir: string;
  /** Where hot-attach exports put their vhost-user sockets: vmplug's own, not Kata's store. */
  hotAttachVhostUserStore: string;
  /** rados_osd_op_timeout of a hot-attach export: bounds an image open (and I/O) on a stalled OSD. */
  hotAttachOsdTimeoutS: number;
  /**
   * How storage daemons (pod volumes and hot-attach) are started, so they outlive a vmplugd
   * restart: `direct`, `systemd-scope` (vmplugd as a systemd service), `host-cgroup` (vmplugd in
   * a pod: each daemon moved into `<storageDaemonCgroupRoot>/.../vmplug/...`, out of the
   * container's cgroup). storage/storage-daemon/argv.ts Launcher.
   */
  storageDaemonLauncher: Launcher;
  /** `host-cgroup`: the host's cgroup mount root as vmplugd sees it (a hostPath in a pod). */
  storageDaemonCgroupRoot: string;
}

export type ConfigKey = keyof DaemonConfig;

/** Where a value came from, spelled as the operator would write it. */
export type ConfigSource =
  | { kind: 'flag'; name: string }
  | { kind: 'env'; name: string }
  | { kind: 'file'; path: string; key: string }
  | { kind: 'default' };

export function describeSource(source: ConfigSource): string {
  switch (source.kind) {
    case 'flag':
      return `--${source.name}`;
    case 'env':
      return source.name;
    case 'file':
      return `${source.path}: ${source.key}`;
    case 'default':
      return 'default';
  }
}

export class ConfigError extends Error {
  readonly code = 'CONFIG_INVALID';

  constructor(
    message: string,
    readonly key?: string,
    readonly source?: string,
  ) {
    super(message);
    this.name = 'ConfigError';
  }
}

export const DEFAULT_CONFIG_FILE = '/etc/vmplug/config.json';
const CONFIG_FILE_MAX_BYTES = 1024 * 1024;
const CONFIG_FILE_TIMEOUT_MS = 5_000;

// sun_path holds 108 bytes with the NUL; the daemon first binds a temporary name 8 bytes longer
// than the socket path (see unix-socket.ts) so the socket appears with its final mode at once.
export const SOCKET_PATH_MAX_BYTES = 107 - 8;

type Raw = string | number | boolean | null;
type Parser<K extends ConfigKey> = (value: Raw) => DaemonConfig[K];

interface KeySpec<K extends ConfigKey> {
  flag: string;
  env: string;
  default: () => DaemonConfig[K];
  parse: Parser<K>;
}

type Specs = { [K in ConfigKey]: KeySpec<K> };

/** Thrown by parsers; the caller adds the key and source. */
class BadValue extends Error {}

const SPECS: Specs = {
  socket: {
    flag: 'socket',
    env: 'VMPLUG_SOCKET',
    default: () => '/run/vmplug/vmplug.sock',
    parse: (v) => {
      const p = absolutePath(v);
      if (Buffer.byteLength(p) > SOCKET_PATH_MAX_BYTES) {
        throw new BadValue(
          `must be at most ${SOCKET_PATH_MAX_BYTES} bytes (a unix socket path is limited to 107 bytes and vmplugd binds a name 8 bytes longer first)`,
        );
      }
      return p;
    },
  },
  stateDir: {
    flag: 'state-dir',
    env: 'VMPLUG_STATE_DIR',
    default: () => '/var/lib/vmplug',
    parse: absolutePath,
  },
  monitorDir: {
    flag: 'monitor-dir',
    env: 'VMPLUG_MONITOR_DIR',
    default: () => '/run/vmplug/sandboxes',
    parse: absolutePath,
  },
  kataVmRoot: {
    flag: 'kata-vm-root',
    env: 'VMPLUG_KATA_VM_ROOT',
    default: () => '/run/vc/vm',
    parse: absolutePath,
  },
  kataSbsRoot: {
    flag: 'kata-sbs-root',
    env: 'VMPLUG_KATA_SBS_ROOT',
    default: () => null,
    parse: (v) => (v === null || v === '' ? null : absolutePath(v)),
  },
  libvirtUri: {
    flag: 'libvirt-uri',
    env: 'VMPLUG_LIBVIRT_URI',
    default: () => 'qemu:///system',
    parse: (v) => {
      if (v === null || v === '') return null;
      const s = str(v);
      if (!/^[a-z][a-z0-9+.-]*:\/\/[^\s]*$/.test(s)) {
        throw new BadValue(
          'must be a libvirt URI such as "qemu:///system", or "" to manage no libvirt domains',
        );
      }
      return s;
    },
  },
  logLevel: {
    flag: 'log-level',
    env: 'VMPLUG_LOG_LEVEL',
    default: () => 'info',
    parse: (v) => {
      const s = str(v);
      if (!(LOG_LEVELS as readonly string[]).includes(s))
        throw new BadValue(`must be one of ${LOG_LEVELS.join(', ')}`);
      return s as LogLevel;
    },
  },
  socketGroup: {
    flag: 'socket-group',
    env: 'VMPLUG_SOCKET_GROUP',
    default: () => null,
    parse: (v) => {
      if (v === null || v === '') return null;
      if (typeof v === 'number' || (typeof v === 'string' && /^[0-9]+$/.test(v))) {
        return integer(v, 0, 2 ** 32 - 2);
      }
      const s = str(v);
      if (!/^[A-Za-z_][A-Za-z0-9_.-]{0,31}$/.test(s))
        throw new BadValue('must be a group name or a numeric gid');
      return s;
    },
  },
  socketMode: {
    flag: 'socket-mode',
    env: 'VMPLUG_SOCKET_MODE',
    default: () => 0o660,
    parse: (v) => {
      // A JSON number 660 would be read as decimal: only octal strings are unambiguous.
      if (typeof v !== 'string' || !/^0?[0-7]{3}$/.test(v)) {
        throw new BadValue('must be an octal mode string such as "0660"');
      }
      const mode = Number.parseInt(v, 8);
      // Connecting to a unix socket needs write permission: o+w would let any local user attach
      // disks to every VM on the node.
      if (mode & 0o002)
        throw new BadValue("must not be writable by others (anyone could drive the node's VMs)");
      return mode;
    },
  },
  nodeName: {
    flag: 'node-name',
    env: 'NODE_NAME',
    default: () => hostname().toLowerCase(),
    parse: (v) => {
      const s = str(v);
      if (s.length > 253 || !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/.test(s)) {
        throw new BadValue(
          'must be a Kubernetes node name (lower-case DNS subdomain, at most 253 characters)',
        );
      }
      return s;
    },
  },
  kubeconfig: {
    flag: 'kubeconfig',
    env: 'KUBECONFIG',
    default: () => null,
    parse: (v) => (v === null || v === '' ? null : absolutePath(v)),
  },
  leaseNamespace: {
    flag: 'lease-namespace',
    env: 'VMPLUG_LEASE_NAMESPACE',
    default: () => 'vmplug-system',
    parse: (v) => {
      const s = str(v);
      if (!/^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/.test(s))
        throw new BadValue('must be a Kubernetes namespace name (lower-case DNS label)');
      return s;
    },
  },
  maxConcurrentOps: {
    flag: 'max-concurrent-ops',
    env: 'VMPLUG_MAX_CONCURRENT_OPS',
    default: () => 8,
    parse: (v) => integer(v, 1, 1024),
  },
  shutdownTimeoutMs: {
    flag: 'shutdown-timeout-ms',
    env: 'VMPLUG_SHUTDOWN_TIMEOUT_MS',
    // Below Kubernetes' default 30 s grace period, so vmplugd finishes before it is SIGKILLed.
    default: () => 25_000,
    parse: (v) => integer(v, 0, 600_000),
  },
  qmpTimeoutMs: {
    flag: 'qmp-timeout-ms',
    env: 'VMPLUG_QMP_TIMEOUT_MS',
    default: () => DEFAULT_QMP_TIMEOUT_MS,
    parse: (v) => integer(v, 100, 600_000),
  },
  reconcileIntervalMs: {
    flag: 'reconcile-interval-ms',
    env: 'VMPLUG_RECONCILE_INTERVAL_MS',
    default: () => 60_000,
    parse: (v) => {
      const n = integer(v, 0, 86_400_000);
      if (n !== 0 && n < 100) throw new BadValue('must be 0 (start-up only) or at least 100');
      return n;
    },
  },
  discoveryRescanMs: {
    flag: 'discovery-rescan-ms',
    env: 'VMPLUG_DISCOVERY_RESCAN_MS',
    default: () => 5_000,
    parse: (v) => integer(v, 50, 3_600_000),
  },
  sandboxGoneGraceMs: {
    flag: 'sandbox-gone-grace-ms',
    env: 'VMPLUG_SANDBOX_GONE_GRACE_MS',
    default: () => 15_000,
    parse: (v) => integer(v, 0, 3_600_000),
  },
  allowedDevices: {
    flag: 'allowed-devices',
    env: 'VMPLUG_ALLOWED_DEVICES',
    default: () => parseDeviceGlobList(DEFAULT_ALLOWED_DEVICES),
    parse: (v) => {
      // Comma separated in every layer (a file value is a string too), "" for none.
      const s = v === null ? '' : str(v);
      for (const p of s.split(',').map((x) => x.trim())) {
        if (p === '') continue;
        try {
          compileDeviceGlob(p);
        } catch (err) {
          throw new BadValue(
            `${(err as Error).message}: give comma-separated globs of /dev paths (* and ? only), or "" for none`,
          );
        }
      }
      return parseDeviceGlobList(s);
    },
  },
  kubeletRoot: {
    flag: 'kubelet-root',
    env: 'VMPLUG_KUBELET_ROOT',
    default: () => '/var/lib/kubelet',
    parse: absolutePath,
  },
  kataDirectVolumeRoot: {
    flag: 'kata-direct-volume-root',
    env: 'VMPLUG_KATA_DIRECT_VOLUME_ROOT',
    default: () => '/run/kata-containers/shared/direct-volumes',
    parse: absolutePath,
  },
  kataVhostUserStore: {
    flag: 'kata-vhost-user-store',
    env: 'VMPLUG_KATA_VHOST_USER_STORE',
    default: () => '/var/run/kata-containers/vhost-user',
    parse: absolutePath,
  },
  hotAttachQsdBinary: {
    flag: 'hot-attach-qsd-binary',
    env: 'VMPLUG_HOT_ATTACH_QSD_BINARY',
    default: () => '/usr/bin/qemu-storage-daemon',
    parse: (v) => (v === null || v === '' ? null : absolutePath(v)),
  },
  hotAttachQsdDir: {
    flag: 'hot-attach-qsd-dir',
    env: 'VMPLUG_HOT_ATTACH_QSD_DIR',
    default: () => '/run/vmplug/qsd-hot',
    parse: absolutePath,
  },
  hotAttachVhostUserStore: {
    flag: 'hot-attach-vhost-user-store',
    env: 'VMPLUG_HOT_ATTACH_VHOST_USER_STORE',
    default: () => '/run/vmplug/vhost-user',
    parse: absolutePath,
  },
  hotAttachOsdTimeoutS: {
    flag: 'hot-attach-osd-timeout-s',
    env: 'VMPLUG_HOT_ATTACH_OSD_TIMEOUT_S',
    default: () => 30,
    parse: (v) => integer(v, 1, 3_600),
  },
  storageDaemonLauncher: {
    flag: 'storage-daemon-launcher',
    env: 'VMPLUG_STORAGE_DAEMON_LAUNCHER',
    default: () => 'direct',
    parse: (v) => {
      const s = str(v);
      if (!(LAUNCHERS as readonly string[]).includes(s)) {
        throw new BadValue(
          `must be one of ${LAUNCHERS.join(', ')} (host-cgroup when vmplugd runs in a pod, systemd-scope under systemd)`,
        );
      }
      return s as Launcher;
    },
  },
  storageDaemonCgroupRoot: {
    flag: 'storage-daemon-cgroup-root',
    env: 'VMPLUG_STORAGE_DAEMON_CGROUP_ROOT',
    default: () => '/sys/fs/cgroup',
    parse: (v) => {
      const p = absolutePath(v);
      if (p === '/') throw new BadValue("must be the host's cgroup mount root, not /");
      return p;
    },
  },
};

/** Kata's persist root: the configured one, else `sbs` beside the vm root (/run/vc/vm -> /run/vc/sbs). */
export function kataSbsRootOf(config: Pick<DaemonConfig, 'kataSbsRoot' | 'kataVmRoot'>): string {
  return config.kataSbsRoot ?? join(dirname(config.kataVmRoot), 'sbs');
}

export const CONFIG_KEYS = Object.keys(SPECS) as ConfigKey[];

function str(v: Raw): string {
  if (typeof v !== 'string') throw new BadValue('must be a string');
  return v;
}

function absolutePath(v: Raw): string {
  const s = str(v);
  if (s.length === 0) throw new BadValue('must not be empty');
  if (s.includes('\0')) throw new BadValue('must not contain NUL');
  if (!isAbsolute(s)) throw new BadValue('must be an absolute path');
  const n = normalize(s);
  return n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
}

function integer(v: Raw, min: number, max: number): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' && /^[0-9]+$/.test(v) ? Number(v) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max)
    throw new BadValue(`must be an integer from ${min} to ${max}`);
  return n;
}

export type Action = 'run' | 'help' | 'version' | 'print-openapi';

export interface CommandLine {
  action: Action;
  /** --config, when given. */
  configFile?: string;
  /** Flag values by config key, as typed. */
  flags: Partial<Record<ConfigKey, string>>;
}

const FLAG_TO_KEY = new Map(CONFIG_KEYS.map((k) => [SPECS[k].flag, k]));

export function parseCommandLine(argv: readonly string[]): CommandLine {
  const options: Record<string, { type: 'string' | 'boolean'; short?: string }> = {
    config: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
    version: { type: 'boolean' },
    'print-openapi': { type: 'boolean' },
  };
  for (const k of CONFIG_KEYS) options[SPECS[k].flag] = { type: 'string' };
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: [...argv], options, strict: true, allowPositionals: false });
  } catch (err) {
    throw new ConfigError(`${(err as Error).message} (see vmplugd --help)`);
  }
  const values = parsed.values as Record<string, string | boolean | undefined>;
  const flags: Partial<Record<ConfigKey, string>> = {};
  for (const [flag, key] of FLAG_TO_KEY) {
    const v = values[flag];
    if (typeof v === 'string') flags[key] = v;
  }
  const action: Action = values.help
    ? 'help'
    : values.version
      ? 'version'
      : values['print-openapi']
        ? 'print-openapi'
        : 'run';
  const cl: CommandLine = { action, flags };
  if (typeof values.config === 'string') cl.configFile = values.config;
  return cl;
}

export interface ConfigFile {
  path: string;
  /** The decoded JSON. */
  content: unknown;
}

export interface ResolvedConfig {
  config: DaemonConfig;
  sources: Record<ConfigKey, ConfigSource>;
  /** The file that was read, if any. */
  file: string | null;
}

/** Merges the layers and validates every value. Pure: reads nothing. */
export function resolveConfig(
  flags: Partial<Record<ConfigKey, string>>,
  env: Readonly<Record<string, string | undefined>>,
  file: ConfigFile | null,
): ResolvedConfig {
  const fileValues = file === null ? {} : fileObject(file);
  const config: Partial<Record<ConfigKey, unknown>> = {};
  const sources: Partial<Record<ConfigKey, ConfigSource>> = {};
  for (const key of CONFIG_KEYS) {
    const spec: KeySpec<ConfigKey> = SPECS[key] as KeySpec<ConfigKey>;
    let raw: Raw | undefined;
    let source: ConfigSource;
    if (flags[key] !== undefined) {
      raw = flags[key];
      source = { kind: 'flag', name: spec.flag };
    } else if (env[spec.env] !== undefined) {
      raw = env[spec.env];
      source = { kind: 'env', name: spec.env };
    } else if (file !== null && Object.hasOwn(fileValues, key)) {
      raw = fileValues[key] as Raw;
      source = { kind: 'file', path: file.path, key };
    } else {
      config[key] = spec.default();
      sources[key] = { kind: 'default' };
      continue;
    }
    try {
      config[key] = spec.parse(raw as Raw);
    } catch (err) {
      if (!(err instanceof BadValue)) throw err;
      const where = describeSource(source);
      throw new ConfigError(`${where}: ${err.message} (got ${shown(raw)})`, key, where);
    }
    sources[key] = source;
  }
  return {
    config: config as DaemonConfig,
    sources: sources as Record<ConfigKey, ConfigSource>,
    file: file === null ? null : file.path,
  };
}

function fileObject(file: ConfigFile): Record<string, unknown> {
  const c = file.content;
  if (typeof c !== 'object' || c === null || Array.isArray(c)) {
    throw new ConfigError(`${file.path}: must hold a JSON object`, undefined, file.path);
  }
  for (const [k, v] of Object.entries(c)) {
    if (!(CONFIG_KEYS as string[]).includes(k)) {
      throw new ConfigError(
        `${file.path}: unknown key "${k}" (known keys: ${CONFIG_KEYS.join(', ')})`,
        k,
        `${file.path}: ${k}`,
      );
    }
    if (typeof v === 'object' && v !== null) {
      throw new ConfigError(`${file.path}: ${k}: must be a string, number or null`, k, `${file.path}: ${k}`);
    }
  }
  return c as Record<string, unknown>;
}

function shown(v: Raw | undefined): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 80 ? `${s.slice(0, 80)}…` : s;
}

export interface LoadConfigOptions {
  argv: readonly string[];
  env: Readonly<Record<string, string | undefined>>;
  signal?: AbortSignal;
}

export interface LoadedConfig extends ResolvedConfig {
  action: Action;
}

/**
 * The daemon's configuration from its command line, environment and config file (`--config`,
 * else VMPLUG_CONFIG, else /etc/vmplug/config.json when that exists).
 */
export async function loadConfig(options: LoadConfigOptions): Promise<LoadedConfig> {
  const cl = parseCommandLine(options.argv);
  if (cl.action === 'help' || cl.action === 'version') {
    return { action: cl.action, ...resolveConfig({}, {}, null) };
  }
  const explicit = cl.configFile ?? options.env.VMPLUG_CONFIG;
  const origin = cl.configFile !== undefined ? '--config' : 'VMPLUG_CONFIG';
  if (explicit !== undefined && (explicit === '' || !isAbsolute(explicit))) {
    throw new ConfigError(`${origin}: must be an absolute path (got ${shown(explicit)})`, 'config', origin);
  }
  const path = explicit ?? DEFAULT_CONFIG_FILE;
  const file = await readConfigFile(path, explicit !== undefined, options.signal);
  return { action: cl.action, ...resolveConfig(cl.flags, options.env, file) };
}

async function readConfigFile(
  path: string,
  required: boolean,
  signal?: AbortSignal,
): Promise<ConfigFile | null> {
  const timeout = AbortSignal.timeout(CONFIG_FILE_TIMEOUT_MS);
  let text: string;
  try {
    text = await readFile(path, {
      encoding: 'utf8',
      signal: signal === undefined ? timeout : AbortSignal.any([signal, timeout]),
    });
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (code === 'ENOENT' && !required) return null;
    throw new ConfigError(`${path}: cannot read the config file (${String(code ?? (err as Error).message)})`);
  }
  if (Buffer.byteLength(text) > CONFIG_FILE_MAX_BYTES) {
    throw new ConfigError(`${path}: the config file is larger than ${CONFIG_FILE_MAX_BYTES} bytes`);
  }
  try {
    return { path, content: JSON.parse(text) as unknown };
  } catch (err) {
    throw new ConfigError(`${path}: not valid JSON: ${(err as Error).message}`);
  }
}

export function helpText(): string {
  const lines = [
    'Usage: vmplugd [options]',
    '',
    'Hot-attaches volumes into Kata sandboxes and libvirt domains; serves a REST API on a unix socket.',
    'Each option is also an environment variable and a key of the JSON config file;',
    'precedence: option > environment > config file > default.',
    '',
    '  --config <path>            JSON config file (VMPLUG_CONFIG, default /etc/vmplug/config.json if present)',
  ];
  for (const key of CONFIG_KEYS) {
    const spec = SPECS[key] as KeySpec<ConfigKey>;
    const d = spec.default();
    const shownDefault =
      key === 'socketMode'
        ? `0${(d as number).toString(8)}`
        : key === 'nodeName'
          ? 'the host name'
          : key === 'kataSbsRoot'
            ? '"sbs" beside --kata-vm-root'
            : key === 'allowedDevices'
              ? `"${DEFAULT_ALLOWED_DEVICES}"`
              : String(d);
    lines.push(
      `  --${`${spec.flag} <value>`.padEnd(25)} ${spec.env}, file key "${key}", default ${shownDefault}`,
    );
  }
  lines.push(
    '  --print-openapi            print the REST API OpenAPI document and exit',
    '  --version                  print the version and exit',
    '  -h, --help                 print this help and exit',
  );
  return `${lines.join('\n')}\n`;
}
