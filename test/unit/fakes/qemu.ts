// The one in-process fake QEMU of the unit tests: a QmpExecutor that keeps the state a QEMU 7.2
// sandbox started through bin/vmplug-qemu has (q35, Kata's scsi0 and pci-bridge-0, vmplug-scsi0,
// vmplug-rp<N>) and answers the commands the volume and NIC engines send the way QEMU 7.2 does.
// (qmp-server.ts beside it is the other layer: QEMU's wire behaviour over a real socket.)
// Error classes and descriptions were captured from qemu-system-x86_64 7.2 (Debian 1:7.2+dfsg-7+deb12u18):
//   blockdev-add twice     GenericError "Duplicate nodes with node-name='<n>'"
//   object-add twice       GenericError "attempt to add duplicate property '<id>' to object (type 'container')"
//   device_add twice       GenericError "Duplicate device ID '<id>'"
//   scsi-hd, taken id      GenericError "lun already used by '<id>'"
//   virtio-blk, addr=0 on an occupied root port
//                          GenericError "PCI: slot 0 function 0 not available for virtio-blk-pci, in use by virtio-blk-pci,id=<id>"
//   unknown drive          GenericError "Property 'scsi-hd.drive' can't find value '<n>'"
//   unknown bus            GenericError "Bus '<b>' not found"
//   blockdev-del, in use   GenericError "Node <n> is in use"
//   blockdev-del, unknown  GenericError "Failed to find node with node-name='<n>'"
//   object-del, unknown    GenericError "object '<id>' not found"
//   device_del, unknown    DeviceNotFound "Device '<id>' not found"
//   device_del again while the guest has not released a PCI device
//                          GenericError "Device <id> is already in the process of unplug"
//   qom-list, unknown path DeviceNotFound "Device '<path>' not found"
//   netdev_add, taken id   GenericError "Duplicate ID '<id>'"
//   netdev_del, unknown    DeviceNotFound "Device '<id>' not found"
//   virtio-net-pci addr=0 on an occupied root port
//                          GenericError "PCI: slot 0 function 0 not available for virtio-net-pci, in use by <type>,id=<id>"
//   info network (HMP)     "<nic id>: index=0,type=nic,model=virtio-net-pci,macaddr=..\r\n \\ <netdev>: index=0,type=tap,ifname=..\r\n"
//   block_resize of a node no device uses: QEMU 7.2 dies (SIGSEGV): the connection closes.
// A stalled main loop (librbd waiting on an OSD inside blockdev-add, a SIGSTOPped QEMU): every
// command, the stalling one first, waits in order; a caller that stops waiting gets QMP_TIMEOUT or
// QMP_ABORTED carrying the answer still due (as qmp/protocol.ts does), and the commands run, in
// order, when the loop runs again; the guest's unplug acknowledgements wait too.
// Unplug: scsi-hd leaves at once (DEVICE_DELETED before the reply); virtio-blk-pci leaves when the
// guest acknowledges (ACPI), emitting DEVICE_DELETED for its virtio-backend path (no `device`)
// first and then the one naming the device.
import { existsSync } from 'node:fs';
import { armDeadline, type CallOptions } from '../../../qmp/deadline.js';
import {
  EventHub,
  type LateAnswer,
  QmpClosedError,
  QmpCommandError,
  type QmpEvent,
  type QmpExecutor,
  QmpTimeoutError,
  withLateAnswer,
} from '../../../qmp/index.js';

interface Device {
  id: string;
  type: string;
  /** Bus name: 'vmplug-scsi0.0', 'vmplug-rp1', 'pcie.0'. */
  bus: string;
  scsiId?: number;
  drive?: string;
  serial?: string;
  netdev?: string;
}

interface Node {
  name: string;
  driver: string;
  filename: string;
  readOnly: boolean;
  size: number;
  args: Record<string, unknown>;
}

export interface FakeQemuOptions {
  rootPorts?: number;
  /** How the guest answers a virtio-blk unplug: after `ms`, or never (guest stuck, or stopped). */
  guestUnplug?: { ms: number } | 'never';
  /** Ceph reachable from QEMU (rbd blockdev-add). */
  ceph?: 'up' | 'down';
  defaultSize?: number;
}

type Hook = (command: string, args: Record<string, unknown>) => void | Promise<void>;

export class FakeQemu implements QmpExecutor {
  readonly hub = new EventHub(10_000);
  readonly devices = new Map<string, Device>();
  readonly objects = new Map<string, { type: string; data?: string }>();
  readonly nodes = new Map<string, Node>();
  /**
   * Nodes a device gone from /machine/peripheral still holds: QEMU releases a device's
   * BlockBackend only with its last reference (requests the guest had in flight), so blockdev-del
   * answers "in use" for a moment after device_del already answers DeviceNotFound.
   */
  readonly heldNodes = new Set<string>();
  readonly unplugging = new Set<string>();
  readonly netdevs = new Map<string, { ifname: string }>();
  /** Root ports that query-pci shows free but that a racing device_add took meanwhile. */
  readonly raced = new Set<string>();
  /** Every command received, in order (arguments included: object-add carries the key). */
  readonly calls: { command: string; args: Record<string, unknown> }[] = [];
  dead = false;
  opts: Required<FakeQemuOptions>;
  #hooks: Hook[] = [];
  #hang = new Set<string>();
  /** While QEMU's main loop is stalled: what runs, in order, when it runs again. */
  #stalled: (() => void)[] | undefined;

  constructor(opts: FakeQemuOptions = {}) {
    this.opts = { rootPorts: 4, guestUnplug: { ms: 5 }, ceph: 'up', defaultSize: 64 * 1024 * 1024, ...opts };
    const add = (id: string, type: string, bus = 'pcie.0'): void => {
      this.devices.set(id, { id, type, bus });
    };
    add('pci-bridge-0', 'pci-bridge');
    add('scsi0', 'virtio-scsi-pci');
    for (let n = 0; n < this.opts.rootPorts; n++) add(`vmplug-rp${n}`, 'pcie-root-port');
    add('vmplug-scsi0', 'virtio-scsi-pci');
    this.objects.set('pc.ram', { type: 'memory-backend-ram' });
  }

  /** Runs before each command; throwing from it fails the command with that error. */
  onCommand(hook: Hook): () => void {
    this.#hooks.push(hook);
    return () => {
      this.#hooks = this.#hooks.filter((h) => h !== hook);
    };
  }

  /** The next `command` fails once with this QEMU error. */
  failOnce(command: string, errorClass: string, desc: string): void {
    const off = this.onCommand((c) => {
      if (c !== command) return;
      off();
      throw new QmpCommandError(command, errorClass, desc);
    });
  }

  /** `command` never answers (until its caller's timeout). */
  hang(command: string): void {
    this.#hang.add(command);
  }

  /** QEMU's main loop stops: commands (from the next one on) wait until resume(). */
  stall(): void {
    this.#stalled ??= [];
  }

  /** `command` stalls the main loop when it arrives (it runs, late, at resume()). */
  stallOn(command: string): void {
    const off = this.onCommand((c) => {
      if (c !== command) return;
      off();
      this.stall();
    });
  }

  get stalled(): boolean {
    return this.#stalled !== undefined;
  }

  /** The main loop runs again: what waited runs in order, answering callers or as late answers. */
  resume(): void {
    const queued = this.#stalled ?? [];
    this.#stalled = undefined;
    for (const run of queued) run();
  }

  subscribe: QmpExecutor['subscribe'] = (name, listener) => this.hub.subscribe(name, listener);
  waitFor: QmpExecutor['waitFor'] = (name, predicate, opts) => this.hub.waitFor(name, predicate, opts);

  async execute<T = unknown>(command: string, args: object = {}, opts: CallOptions = {}): Promise<T> {
    const a = args as Record<string, unknown>;
    if (this.dead) throw new QmpClosedError(command);
    opts.signal?.throwIfAborted();
    this.calls.push({ command, args: structuredClone(a) });
    for (const h of [...this.#hooks]) await h(command, a);
    if (this.#hang.has(command)) {
      await new Promise((_, reject) =>
        setTimeout(
          () => reject(new QmpTimeoutError(command, opts.timeoutMs ?? 10_000)),
          opts.timeoutMs ?? 10_000,
        ),
      );
    }
    if (this.#stalled !== undefined) return this.#whenRunning<T>(this.#stalled, command, a, opts);
    // QEMU answers asynchronously: never within the caller's synchronous turn.
    await Promise.resolve();
    return this.#run(command, a) as T;
  }

  #whenRunning<T>(
    queue: (() => void)[],
    command: string,
    a: Record<string, unknown>,
    opts: CallOptions,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const sentAt = performance.now();
      let late: ((answer: LateAnswer) => void) | undefined;
      const disarm = armDeadline(command, opts.timeoutMs ?? 10_000, opts.signal, (err) => {
        withLateAnswer(err, new Promise((r) => (late = r)));
        reject(err);
      });
      queue.push(() => {
        const afterMs = Math.round(performance.now() - sentAt);
        try {
          const value = this.#run(command, a);
          if (late === undefined) {
            disarm();
            resolve(value as T);
          } else late({ kind: 'return', command, afterMs, value });
        } catch (err) {
          if (late === undefined) {
            disarm();
            reject(err);
          } else if (err instanceof QmpCommandError) late({ kind: 'error', command, afterMs, error: err });
          else late({ kind: 'lost', command, afterMs });
        }
      });
    });
  }

  emit(event: string, data: Record<string, unknown>): void {
    const e: QmpEvent = {
      event,
      data,
      timestamp: { seconds: Math.floor(Date.now() / 1000), microseconds: 0 },
    };
    this.hub.emit(e);
  }

  // ---- state helpers for tests (what a crashed vmplugd may have left behind) ----

  addNode(
    name: string,
    args: Record<string, unknown> = { driver: 'host_device', filename: '/dev/loop9' },
  ): void {
    this.#run('blockdev-add', { ...args, 'node-name': name });
  }

  addSecret(id: string): void {
    this.#run('object-add', { 'qom-type': 'secret', id, data: 'QUFBQQ==', format: 'base64' });
  }

  addDevice(args: Record<string, unknown>): void {
    this.#run('device_add', args);
  }

  vmplugState(): { devices: string[]; nodes: string[]; secrets: string[] } {
    const mine = (s: string): boolean => /^vmp[dfs]?-/.test(s);
    return {
      devices: [...this.devices.keys()].filter(mine).sort(),
      nodes: [...this.nodes.keys()].filter(mine).sort(),
      secrets: [...this.objects.keys()].filter(mine).sort(),
    };
  }

  #err(command: string, desc: string, cls = 'GenericError'): never {
    throw new QmpCommandError(command, cls, desc);
  }

  #run(command: string, a: Record<string, unknown>): unknown {
    switch (command) {
      case 'query-status':
        return { status: 'running', singlestep: false, running: true };
      case 'qom-list':
        return this.#qomList(String(a.path));
      case 'qom-get':
        return this.#qomGet(String(a.path), String(a.property));
      case 'query-named-block-nodes':
        return [...this.nodes.values()].map((n) => ({
          'node-name': n.name,
          drv: n.driver,
          file: n.filename,
          ro: n.readOnly,
          image: { filename: n.filename, format: n.driver, 'virtual-size': n.size },
          backing_file_depth: 0,
          encrypted: false,
          detect_zeroes: 'off',
          cache: { writeback: true, direct: true, 'no-flush': false },
        }));
      case 'query-blockstats': {
        // QEMU accounts the guest's I/O on the device's BlockBackend; with query-nodes the
        // per-node entries carry no read/write figures.
        if (a['query-nodes'] === true) {
          return [...this.nodes.values()].map((n) => ({
            'node-name': n.name,
            stats: { rd_bytes: 0, wr_bytes: 0, rd_operations: 0, wr_operations: 0, flush_operations: 0 },
          }));
        }
        return [...this.devices.values()]
          .filter((d) => d.drive !== undefined)
          .map((d) => ({
            device: '',
            qdev: d.type === 'scsi-hd' ? d.id : `/machine/peripheral/${d.id}/virtio-backend`,
            'node-name': d.drive,
            stats: {
              rd_bytes: 4096,
              wr_bytes: 8192,
              rd_operations: 1,
              wr_operations: 2,
              flush_operations: 0,
            },
          }));
      }
      case 'object-add': {
        const id = String(a.id);
        if (this.objects.has(id))
          this.#err(command, `attempt to add duplicate property '${id}' to object (type 'container')`);
        this.objects.set(id, { type: String(a['qom-type']), data: String(a.data) });
        return {};
      }
      case 'object-del': {
        const id = String(a.id);
        if (!this.objects.has(id)) this.#err(command, `object '${id}' not found`);
        this.objects.delete(id);
        return {};
      }
      case 'blockdev-add':
        return this.#blockdevAdd(a);
      case 'blockdev-del': {
        const name = String(a['node-name']);
        if (!this.nodes.has(name)) this.#err(command, `Failed to find node with node-name='${name}'`);
        if ([...this.devices.values()].some((d) => d.drive === name) || this.heldNodes.has(name))
          this.#err(command, `Node ${name} is in use`);
        this.nodes.delete(name);
        return {};
      }
      case 'device_add':
        return this.#deviceAdd(a);
      case 'query-pci':
        return this.#queryPci();
      case 'human-monitor-command':
        return this.#infoNetwork();
      case 'netdev_add': {
        const id = String(a.id);
        if (this.netdevs.has(id)) this.#err(command, `Duplicate ID '${id}'`);
        this.netdevs.set(id, { ifname: String(a.ifname) });
        return {};
      }
      case 'netdev_del': {
        const id = String(a.id);
        if (!this.netdevs.delete(id)) this.#err(command, `Device '${id}' not found`, 'DeviceNotFound');
        return {};
      }
      case 'device_del':
        return this.#deviceDel(String(a.id));
      case 'block_resize': {
        const name = String(a['node-name']);
        const node = this.nodes.get(name);
        if (node === undefined) this.#err(command, `Cannot find device='' nor node-name='${name}'`);
        if (![...this.devices.values()].some((d) => d.drive === name)) {
          this.dead = true;
          throw new QmpClosedError(command);
        }
        node.size = Number(a.size);
        return {};
      }
      default:
        this.#err(command, `The command ${command} has not been found`, 'CommandNotFound');
    }
  }

  #qomList(path: string): unknown {
    const typeProp = { name: 'type', type: 'string' };
    if (path === '/machine/peripheral') {
      return [typeProp, ...[...this.devices.values()].map((d) => ({ name: d.id, type: `child<${d.type}>` }))];
    }
    if (path === '/objects') {
      return [typeProp, ...[...this.objects].map(([id, o]) => ({ name: id, type: `child<${o.type}>` }))];
    }
    const m = /^\/machine\/peripheral\/([^/]+)$/.exec(path);
    if (m?.[1] !== undefined && this.devices.has(m[1])) {
      return [typeProp, { name: 'parent_bus', type: 'link<bus>' }, { name: 'scsi-id', type: 'uint32' }];
    }
    this.#err('qom-list', `Device '${path}' not found`, 'DeviceNotFound');
  }

  #qomGet(path: string, property: string): unknown {
    const m = /^\/machine\/peripheral\/([^/]+)$/.exec(path);
    const d = m?.[1] !== undefined ? this.devices.get(m[1]) : undefined;
    if (d === undefined) this.#err('qom-get', `Device '${path}' not found`, 'DeviceNotFound');
    if (property === 'parent_bus') {
      if (d.bus === 'vmplug-scsi0.0') return '/machine/peripheral/vmplug-scsi0/virtio-backend/vmplug-scsi0.0';
      if (d.bus === 'pcie.0') return '/machine/q35/pcie.0';
      return `/machine/peripheral/${d.bus}/${d.bus}`;
    }
    if (property === 'scsi-id' && d.scsiId !== undefined) return d.scsiId;
    this.#err('qom-get', `Property '${d.type}.${property}' not found`);
  }

  #blockdevAdd(a: Record<string, unknown>): unknown {
    const name = String(a['node-name']);
    if (this.nodes.has(name)) this.#err('blockdev-add', `Duplicate nodes with node-name='${name}'`);
    if (a.driver === 'rbd') {
      const conf = a.conf;
      if (typeof conf === 'string' && !existsSync(conf)) {
        this.#err('blockdev-add', `error reading conf file ${conf}: No such file or directory`);
      }
      const secret = a['key-secret'];
      if (typeof secret === 'string' && this.objects.get(secret)?.type !== 'secret') {
        this.#err('blockdev-add', `No secret with id '${secret}'`);
      }
      if (this.opts.ceph === 'down') this.#err('blockdev-add', 'error connecting: Connection timed out');
    }
    const filename =
      a.driver === 'rbd' ? `json:{"driver":"rbd","image":"${String(a.image)}"}` : String(a.filename);
    this.nodes.set(name, {
      name,
      driver: String(a.driver),
      filename,
      readOnly: a['read-only'] === true,
      size: this.opts.defaultSize,
      args: structuredClone(a),
    });
    return {};
  }

  #deviceAdd(a: Record<string, unknown>): unknown {
    const id = String(a.id);
    const driver = String(a.driver);
    if (this.devices.has(id)) this.#err('device_add', `Duplicate device ID '${id}'`);
    const bus = String(a.bus);
    const drive = String(a.drive);
    if (driver === 'scsi-hd') {
      if (bus !== 'vmplug-scsi0.0' && bus !== 'scsi0.0') this.#err('device_add', `Bus '${bus}' not found`);
      const scsiId = Number(a['scsi-id']);
      if (scsiId > 255) this.#err('device_add', `bad scsi device id: ${scsiId}`);
      if (!this.nodes.has(drive))
        this.#err('device_add', `Property 'scsi-hd.drive' can't find value '${drive}'`);
      const holder = [...this.devices.values()].find((d) => d.bus === bus && d.scsiId === scsiId);
      if (holder) this.#err('device_add', `lun already used by '${holder.id}'`);
      this.#checkDriveFree(drive);
      this.devices.set(id, { id, type: driver, bus, scsiId, drive, serial: String(a.serial) });
      return {};
    }
    if (driver === 'virtio-blk-pci') {
      const port = this.devices.get(bus);
      if (port?.type !== 'pcie-root-port') this.#err('device_add', `Bus '${bus}' not found`);
      if (!this.nodes.has(drive))
        this.#err('device_add', `Property 'virtio-blk-pci.drive' can't find value '${drive}'`);
      const holder = [...this.devices.values()].find((d) => d.bus === bus);
      if (holder && a.addr === '0') {
        this.#err(
          'device_add',
          `PCI: slot 0 function 0 not available for virtio-blk-pci, in use by virtio-blk-pci,id=${holder.id}`,
        );
      }
      this.#checkDriveFree(drive);
      this.devices.set(id, { id, type: driver, bus, drive, serial: String(a.serial) });
      return {};
    }
    if (driver === 'virtio-net-pci') {
      if (this.devices.get(bus)?.type !== 'pcie-root-port') this.#err('device_add', `Bus '${bus}' not found`);
      const holder = [...this.devices.values()].find((d) => d.bus === bus);
      if (holder !== undefined || this.raced.has(bus)) {
        this.#err(
          'device_add',
          `PCI: slot 0 function 0 not available for virtio-net-pci, in use by ${holder?.type ?? 'virtio-blk-pci'},id=${holder?.id ?? 'vmpd-0000000000000000'}`,
        );
      }
      if (!this.netdevs.has(String(a.netdev))) {
        this.#err('device_add', `Property 'virtio-net-pci.netdev' can't find value '${a.netdev}'`);
      }
      this.devices.set(id, { id, type: driver, bus, netdev: String(a.netdev) });
      return {};
    }
    this.#err('device_add', `'${driver}' is not a valid device model name`);
  }

  /** The root ports and what sits on each, as query-pci shows them. */
  #queryPci(): unknown {
    const ports = [...this.devices.values()].filter((d) => d.type === 'pcie-root-port');
    return [
      {
        bus: 0,
        devices: ports.map((p, i) => ({
          bus: 0,
          slot: 3 + i,
          function: 0,
          qdev_id: p.id,
          pci_bridge: {
            bus: { number: i + 1 },
            devices: [...this.devices.values()]
              .filter((d) => d.bus === p.id)
              .map((d) => ({ bus: i + 1, slot: 0, function: 0, qdev_id: d.id })),
          },
        })),
      },
    ];
  }

  /** HMP `info network`: NICs with their netdev, then netdevs no NIC uses. */
  #infoNetwork(): string {
    let out = '';
    for (const d of this.devices.values()) {
      if (d.netdev === undefined) continue;
      out += `${d.id}: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\r\n \\ ${d.netdev}: index=0,type=tap,ifname=${this.netdevs.get(d.netdev)?.ifname},script=no,downscript=no\r\n`;
    }
    for (const [id, n] of this.netdevs) {
      if (![...this.devices.values()].some((d) => d.netdev === id))
        out += `${id}: index=0,type=tap,ifname=${n.ifname}\r\n`;
    }
    return out;
  }

  #checkDriveFree(drive: string): void {
    const user = [...this.devices.values()].find((d) => d.drive === drive);
    if (user) {
      this.#err(
        'device_add',
        `Permission conflict on node '${drive}': permissions 'write' are both required by block device '${user.id}' (uses node '${drive}' as 'root' child) and unshared by block device`,
      );
    }
  }

  #deviceDel(id: string): unknown {
    const d = this.devices.get(id);
    if (d === undefined) this.#err('device_del', `Device '${id}' not found`, 'DeviceNotFound');
    if (d.type === 'scsi-hd') {
      this.devices.delete(id);
      this.emit('DEVICE_DELETED', { device: id, path: `/machine/peripheral/${id}` });
      return {};
    }
    if (this.unplugging.has(id)) this.#err('device_del', `Device ${id} is already in the process of unplug`);
    this.unplugging.add(id);
    const plan = this.opts.guestUnplug;
    if (plan !== 'never') setTimeout(() => this.guestReleases(id), plan.ms);
    return {};
  }

  /** The guest acknowledges a pending PCI unplug (e.g. after it was resumed). */
  guestReleases(id: string): void {
    if (this.#stalled !== undefined) {
      this.#stalled.push(() => this.guestReleases(id));
      return;
    }
    if (!this.unplugging.delete(id)) return;
    this.emit('DEVICE_DELETED', { path: `/machine/peripheral/${id}/virtio-backend` });
    this.devices.delete(id);
    this.emit('DEVICE_DELETED', { device: id, path: `/machine/peripheral/${id}` });
  }
}
