import { EXIT_CODES_HELP } from './exit-codes.js';

// `vmplug` help texts.

const GLOBAL = `Options of every command:
  --socket <path>      vmplugd's socket (VMPLUG_SOCKET, default /run/vmplug/vmplug.sock)
  --json               print the API's JSON instead of text (errors: problem JSON on stderr)
  --timeout-ms <ms>    bound of the call (default 60000)
  -h, --help           help
`;

const COMMANDS: Record<string, string> = {
  attach: `Usage:
  vmplug attach <sandbox> <volume> --device <path> [--mode block] [--bus B] [--read-only]
  vmplug attach <sandbox> <volume> [--mode rbd] --pool P [--namespace N] --image I [--snapshot S]
                --monitors host:port[,host:port...] --user U --key-file <path|-> [--bus B] [--read-only]
  (either form also takes [--annotation k=v] [--pod-uid U --pod-name N --pod-namespace NS])

Hot-attaches a volume into a running sandbox (idempotent: the same spec again succeeds).
  --device <path>       block mode: a host block device (e.g. /dev/rbd0, a loop device)
  --key-file <path|->   rbd mode: file holding the base64 cephx key ("-": read it from stdin);
                        the key is never taken from the command line
  --bus auto|scsi|virtio-blk   frontend (default auto)
  --read-only           attach read-only (needed with --snapshot)
  --annotation k=v      PVC annotation (repeatable); volume.katacontainers.io/direct-mode may
                        stand in for --mode
  --pod-uid U [--pod-name N --pod-namespace NS]
                        the Pod the volume is for: its Kubernetes Events go there when the
                        runtime records no pod for the sandbox
`,
  detach: `Usage: vmplug detach <sandbox> <volume>

Hot-detaches a volume (idempotent: an unknown or already detached volume succeeds).
Exit code 5 with DETACH_PENDING: the guest has not released the disk yet; run it again.
`,
  publish: `Usage:
  vmplug publish <podUid> <volume> --target-path <path> --device <path> [--fs-type ext4|xfs]
  vmplug publish <podUid> <volume> --target-path <path> --rbd-pool P [--rbd-namespace N] --rbd-image I
                 --monitors host:port[,...] --user ID --key-file <file|-> [--fs-type ext4|xfs]

Publishes a volume for a Kata pod (by its UID, before its sandbox exists): vmplugd prepares the
backend and writes Kata's direct-volume record for --target-path, which Kata's runtime plugs and
mounts when it creates the container. Idempotent: the same spec again succeeds; another is exit 4.
  --target-path P       kubelet's NodePublishVolume target path of this pod
                        (<kubelet root>/pods/<podUid>/volumes/kubernetes.io~csi/<pv>/mount)
  --fs-type T           filesystem Kata's agent mounts (default ext4); a blank rbd image gets it
  --device P            block mode: a block device on this node
  --rbd-pool/--rbd-image/--monitors/--user/--key-file   rbd mode (through a qemu-storage-daemon)
  --read-only           mount read-only
  --mount-option O      one mount option per flag (repeatable)
  --pod-name, --pod-namespace   the Pod, for its Kubernetes Events
`,
  unpublish: `Usage: vmplug unpublish <podUid> <volume>

Removes the Kata record and stops the backend (idempotent: an unknown volume succeeds).
`,
  'nic-attach': `Usage: vmplug nic-attach <sandbox> <nic> (--bridge <bridge> | --tap <tap>) [--mac M] [--mtu N]

Hot-plugs a virtio-net NIC (idempotent: the same spec again succeeds, another is a conflict).
  --bridge <bridge>   vmplug creates a tap vmpt<hash>, enslaves it to this existing bridge, and
                      deletes it on nic-detach
  --tap <tap>         use this existing tap as it is; vmplug never deletes it
  --mac <mac>         unicast MAC (default: derived from sandbox and NIC id, locally administered)
  --mtu <n>           MTU of the tap, offered to the guest driver too
`,
  'nic-detach': `Usage: vmplug nic-detach <sandbox> <nic>

Hot-unplugs a NIC (idempotent). Exit code 5 with DETACH_PENDING: the guest has not released it yet.
`,
  resize: `Usage: vmplug resize <sandbox> <volume> <size>

Online expand of an attached volume. <size> in bytes, or with K, M, G, T (binary, also KiB...)
or KB, MB, GB, TB (decimal). Shrinking is refused.
`,
  'resize-guest': `Usage: vmplug resize-guest <sandbox> [--vcpus <n>] [--memory-mib <MiB>]

Hot-resize a guest in place (CPU and DIMM hot-plug). Without options, prints its vCPUs and memory
and their maxima. Memory changes in 128 MiB steps; only what vmplug added can be taken back, and
only when the guest releases it (exit 4 when it does not; GET shows what the guest kept).
`,
  ls: `Usage: vmplug ls [--pod-uid <uid>]

Lists the sandboxes vmplugd sees, with state, pod and attached volumes; with a pod's UID, also
the volumes published for it (Published, Consumed by a sandbox, or Failed). --json prints the
sandbox list only.
`,
  show: `Usage: vmplug show <sandbox> [volume]

Shows one sandbox, or one volume (state, QEMU names, guest hint, timeline, stats).
`,
  node: `Usage: vmplug node

Shows the node facts vmplugd reports (GET /v1/node).
`,
  doctor: `Usage: vmplug doctor [--kata-config <configuration.toml>]

Checks the node: KVM, the QEMU binary (VMPLUG_QEMU) and its rbd block driver, Ceph config, the
socket's permissions, vmplugd's readiness, sandbox discovery and the API server check; and Kata's
configuration (found at /etc/kata-containers/configuration.toml,
/usr/share/defaults/kata-containers/configuration.toml or kata-deploy's
/opt/kata/share/defaults/kata-containers/configuration*.toml unless --kata-config names it):
disable_block_device_use = false, enable_vhost_user_store and its store path, enable_hugepages
and free huge pages (rbd pod volumes), and the hypervisor path being vmplug-qemu and in
valid_hypervisor_paths. See docs/kata.md.
Exit code 1 when a check fails (warnings do not count).
`,
  health: `Usage: vmplug health [--ready]

Asks vmplugd whether it is alive (GET /healthz) or, with --ready, ready to serve attach requests
(GET /readyz). Exit code 0 when it is, 5 when it is not ready or not reachable: the DaemonSet's
liveness and readiness probes run this (the API is on a unix socket only).
`,
};

export function helpText(topic?: string): string {
  if (topic !== undefined && COMMANDS[topic] !== undefined)
    return `${COMMANDS[topic]}\n${GLOBAL}\n${EXIT_CODES_HELP}`;
  return `Usage: vmplug <command> [arguments] [options]

Client of vmplugd's REST API on its unix socket.

Commands:
  attach <sandbox> <volume> ...   hot-attach a volume (block: --device; rbd: --pool/--image/...)
  detach <sandbox> <volume>       hot-detach a volume
  nic-attach <sandbox> <nic> --bridge <br> | --tap <tap> [--mac M] [--mtu N]
                                  hot-plug a virtio-net NIC
  nic-detach <sandbox> <nic>      hot-unplug a NIC
  resize <sandbox> <volume> <size> online expand
  resize-guest <sandbox> [--vcpus <n>] [--memory-mib <MiB>]
                                  hot-resize a guest's vCPUs / memory
  publish <podUid> <volume> --target-path P (--device D | --rbd-pool ...)
                                  publish a volume for a Kata pod (Kata's direct-volume record)
  unpublish <podUid> <volume>     unpublish it
  ls [--pod-uid <uid>]            sandboxes on this node (and a pod's published volumes)
  show <sandbox> [volume]         one sandbox or volume
  node                            node facts
  doctor                          check the node (KVM, QEMU, rbd driver, socket, discovery...)
  health [--ready]                liveness / readiness (exit code 0 or 5), for probes
  help [command]                  help of a command

${GLOBAL}
${EXIT_CODES_HELP}`;
}
