// The storage daemon's command line: a QMP monitor and nothing else. The image, the key and the
// export all go over that monitor, so nothing secret (nor anything a caller chose) is in argv,
// which every local user can read in /proc/<pid>/cmdline.

/**
 * QEMU's option parser splits on commas and takes a doubled comma as a literal one, so a path
 * holding commas is escaped that way; control characters are refused outright.
 */
export function qemuOptValue(value: string): string {
  if (/[\u0000-\u001f\u007f]/.test(value)) throw new RangeError('control character in a QEMU option value');
  return value.replaceAll(',', ',,');
}

/** `--chardev socket,...,server=on,wait=off --monitor chardev=m` (FACTS: qemu-storage-daemon). */
export function daemonArgv(qmpSocketPath: string): string[] {
  return [
    '--chardev',
    `socket,id=m,path=${qemuOptValue(qmpSocketPath)},server=on,wait=off`,
    '--monitor',
    'chardev=m',
  ];
}

/** The QMP socket path a storage daemon's argv names, or undefined when it is not one of ours. */
export function qmpSocketOfArgv(argv: readonly string[]): string | undefined {
  const i = argv.indexOf('--chardev');
  const spec = i >= 0 ? argv[i + 1] : undefined;
  if (spec === undefined || argv[i + 2] !== '--monitor' || argv[i + 3] !== 'chardev=m') return undefined;
  const m = /^socket,id=m,path=((?:[^,]|,,)+),server=on,wait=off$/.exec(spec);
  return m?.[1]?.replaceAll(',,', ',');
}

/**
 * How the daemon is started. `direct`: a detached child of vmplugd, which is enough when nothing
 * kills vmplugd's whole process group or cgroup. `systemd-scope`: through `systemd-run --scope`,
 * which execs the daemon (same pid, same argv afterwards) in a transient scope unit of its own,
 * outside vmplugd's cgroup: systemd's stop of vmplugd.service (KillMode=mixed SIGKILLs whatever
 * is left in the unit's cgroup) then leaves the daemons serving. `host-cgroup`: spawned like
 * `direct`, then moved at once into a cgroup of its own outside vmplugd's (host-cgroup.ts), which
 * needs no systemd: what a container restart kills (everything in the container's cgroup when
 * the pod has the host's pid namespace) then leaves the daemons serving.
 */
export const LAUNCHERS = ['direct', 'systemd-scope', 'host-cgroup'] as const;
export type Launcher = (typeof LAUNCHERS)[number];

export function launchCommand(
  launcher: Launcher,
  binary: string,
  name: string,
  qmpSocketPath: string,
): [string, string[]] {
  const argv = daemonArgv(qmpSocketPath);
  // host-cgroup moves the daemon after the spawn (backend.ts): same command as direct.
  if (launcher !== 'systemd-scope') return [binary, argv];
  return [
    'systemd-run',
    ['--scope', '--quiet', '--collect', `--unit=vmplug-qsd-${name}`, '--', binary, ...argv],
  ];
}
