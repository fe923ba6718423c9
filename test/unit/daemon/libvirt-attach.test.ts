/**
 * LibvirtAttachService over a fake libvirt that behaves as libvirtd 9.0 did in
 * test/integration/libvirt-attach (and libvirt-binding): attachDeviceFlags(LIVE) adds the disk to
 * the live XML at once; detachDeviceAlias returns once the unplug is requested and the disk leaves
 * the XML when deviceRemoved is emitted (a guest may hold it: no event); a repeated request during
 * a pending unplug fails with LIBVIRT_OPERATION_FAILED; an unknown alias is
 * LIBVIRT_DEVICE_MISSING; an unknown domain LIBVIRT_NO_DOMAIN; a second secret of the same usage
 * is refused. The real thing is exercised by the integration test; here: the paths it cannot
 * force (a guest that will not let go, a failing attach, records left by a crash).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BackendError, ConflictError, DetachPendingError } from '../../../core/errors.js';
import { parseSandboxId, parseVolumeId } from '../../../core/ids.js';
import type {
  DomainSummary,
  LibvirtConnection,
  LibvirtEvent,
  LibvirtUuid,
  SecretRef,
} from '../../../libvirt/binding.js';
import { LibvirtDomains } from '../../../libvirt/domains.js';
import { LibvirtError } from '../../../libvirt/errors.js';
import type { OperationContext } from '../../../storage/attach-service.js';
import { Journal } from '../../../storage/journal.js';
import { parseDisks } from '../../../storage/libvirt/disk-xml.js';
import { LibvirtAttachService } from '../../../storage/libvirt/engine.js';
import { volumeNames } from '../../../storage/naming.js';
import { parseAttachRequest } from '../../../storage/volume-spec.js';
import { cephxKey, memoryLogger } from './helpers.js';

const DOM = parseSandboxId('web-1');
const DOM_UUID = '00000000-0000-4000-8000-000000000001' as LibvirtUuid;

function lvErr(code: ConstructorParameters<typeof LibvirtError>[0], op: string): LibvirtError {
  return new LibvirtError(code, `${op}: libvirt said no`, { operation: op });
}

class FakeLibvirt {
  running = true;
  disks = new Map<string, string>(); // alias -> disk XML
  secrets = new Map<string, SecretRef & { value?: Buffer }>();
  listeners = new Set<(e: LibvirtEvent) => void>();
  /** The guest releases unplugged disks (emits deviceRemoved) only while true. */
  guestReleases = true;
  pendingUnplug = new Set<string>();
  failAttach = false;
  attachCalls = 0;
  n = 0;

  domain(): DomainSummary {
    return { name: DOM, uuid: DOM_UUID, id: 1, state: 'running', reason: 1 };
  }

  emit(e: LibvirtEvent): void {
    for (const l of [...this.listeners]) l(e);
  }

  release(alias: string): void {
    this.disks.delete(alias);
    this.pendingUnplug.delete(alias);
    this.emit({ kind: 'deviceRemoved', domain: this.domain(), alias, receivedAt: 0 });
  }

  conn(): LibvirtConnection {
    const c = {
      lostReason: undefined,
      onEvent: (l: (e: LibvirtEvent) => void) => {
        this.listeners.add(l);
        return () => this.listeners.delete(l);
      },
      waitForEvent: (match: (e: LibvirtEvent) => boolean, o: { timeoutMs?: number } = {}) =>
        new Promise<LibvirtEvent>((resolve, reject) => {
          const off = c.onEvent((e) => {
            if (match(e)) {
              off();
              clearTimeout(timer);
              resolve(e);
            }
          });
          const timer = setTimeout(() => {
            off();
            reject(lvErr('LIBVIRT_TIMEOUT', 'waitForEvent'));
          }, o.timeoutMs ?? 1000);
        }),
      listDomains: async () => (this.running ? [this.domain()] : []),
      lookupByName: async (name: string) => {
        if (!this.running || name !== DOM) throw lvErr('LIBVIRT_NO_DOMAIN', 'lookupByName');
        return this.domain();
      },
      lookupByUUID: async () => {
        if (!this.running) throw lvErr('LIBVIRT_NO_DOMAIN', 'lookupByUUID');
        return this.domain();
      },
      getXMLDesc: async () => {
        if (!this.running) throw lvErr('LIBVIRT_NO_DOMAIN', 'getXMLDesc');
        return `<domain><devices>${[...this.disks.values()].join('')}</devices></domain>`;
      },
      attachDeviceFlags: async (_u: LibvirtUuid, xml: string) => {
        this.attachCalls++;
        if (this.failAttach) throw lvErr('LIBVIRT_OPERATION_FAILED', 'attachDeviceFlags');
        const d = parseDisks(xml)[0];
        if (d?.alias === undefined) throw lvErr('LIBVIRT_XML', 'attachDeviceFlags');
        if ([...this.disks.values()].some((x) => parseDisks(x)[0]?.targetDev === d.targetDev)) {
          throw lvErr('LIBVIRT_OPERATION_FAILED', 'attachDeviceFlags');
        }
        this.disks.set(d.alias, xml);
      },
      detachDeviceAlias: async (_u: LibvirtUuid, alias: string) => {
        if (!this.disks.has(alias)) throw lvErr('LIBVIRT_DEVICE_MISSING', 'detachDeviceAlias');
        if (this.pendingUnplug.has(alias)) throw lvErr('LIBVIRT_OPERATION_FAILED', 'detachDeviceAlias');
        this.pendingUnplug.add(alias);
        if (this.guestReleases) setTimeout(() => this.release(alias), 5);
      },
      secretDefineXML: async (xml: string) => {
        const usage = /<name>([^<]*)<\/name>/.exec(xml)?.[1] ?? '';
        if ([...this.secrets.values()].some((s) => s.usageId === usage)) {
          throw lvErr('LIBVIRT_OPERATION_FAILED', 'secretDefineXML');
        }
        const uuid = `00000000-0000-4000-9000-${String(++this.n).padStart(12, '0')}` as LibvirtUuid;
        const ref: SecretRef = { uuid, usageType: 'ceph', usageId: usage };
        this.secrets.set(uuid, ref);
        return ref;
      },
      secretSetValue: async (uuid: LibvirtUuid, value: Buffer, o: { wipe?: boolean } = {}) => {
        const s = this.secrets.get(uuid);
        if (s === undefined) throw lvErr('LIBVIRT_NO_SECRET', 'secretSetValue');
        s.value = Buffer.from(value);
        if (o.wipe) value.fill(0);
      },
      secretUndefine: async (uuid: LibvirtUuid) => {
        if (!this.secrets.delete(uuid)) throw lvErr('LIBVIRT_NO_SECRET', 'secretUndefine');
      },
      secretLookupByUsage: async (_t: string, usage: string) => {
        const s = [...this.secrets.values()].find((x) => x.usageId === usage);
        if (s === undefined) throw lvErr('LIBVIRT_NO_SECRET', 'secretLookupByUsage');
        return s;
      },
      listSecrets: async () =>
        [...this.secrets.values()].map(({ uuid, usageType, usageId }) => ({ uuid, usageType, usageId })),
      close: async () => {},
    };
    return c as unknown as LibvirtConnection;
  }
}

describe('LibvirtAttachService (fake libvirt)', () => {
  let dir: string;
  let lv: FakeLibvirt;
  let domains: LibvirtDomains;
  let journal: Journal;
  let service: LibvirtAttachService;
  let logs: ReturnType<typeof memoryLogger>;
  let ctx: OperationContext;
  const key = cephxKey(9);
  const vol = parseVolumeId('vol-1');

  const blockSpec = (path = '/dev/loop7') =>
    parseAttachRequest({ mode: 'block', source: { type: 'hostDevice', path } });
  const rbdSpec = () =>
    parseAttachRequest({
      mode: 'rbd',
      source: { type: 'rbd', pool: 'rbd', image: 'img', monitors: ['127.0.0.1:1'], user: 'vmplug', key },
    });

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmp-lva-'));
    lv = new FakeLibvirt();
    logs = memoryLogger('debug');
    domains = LibvirtDomains.start({
      uri: 'qemu:///system',
      logger: logs.logger,
      connect: async () => lv.conn(),
    });
    expect(await domains.connected(1000)).toBe(true);
    journal = new Journal({ stateDir: dir, logger: logs.logger });
    service = new LibvirtAttachService({
      journal,
      domains,
      fingerprintKey: Buffer.alloc(32, 1),
      logger: logs.logger,
      detachTimeoutMs: 100,
      reconcileUnplugWaitMs: 50,
      // rbd attaches probe their monitors over TCP: tests give a local server sending a banner.
      cephProbeTimeoutMs: 200,
      // The fake's device paths (/dev/loop7...) need not exist on the test host.
      checkHostDevice: async (path) => path,
    });
    ctx = { signal: new AbortController().signal, log: logs.logger };
  });

  afterEach(async () => {
    await service.close();
    await domains.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('attaches a block disk live, answers a retry with the same attachment and a different spec with 409, detaches', async () => {
    const first = await service.attach(DOM, vol, blockSpec(), ctx);
    expect(first.created).toBe(true);
    expect(first.attachment).toMatchObject({
      state: 'Attached',
      bus: 'scsi',
      deviceId: `ua-${volumeNames(DOM, vol).device}`,
    });
    expect([...lv.disks.keys()]).toEqual([first.attachment.deviceId]);
    const again = await service.attach(DOM, vol, blockSpec(), ctx);
    expect(again.created).toBe(false);
    expect(lv.attachCalls).toBe(1);
    await expect(service.attach(DOM, vol, blockSpec('/dev/loop8'), ctx)).rejects.toBeInstanceOf(
      ConflictError,
    );
    expect((await service.list(DOM)).map((a) => a.volumeId)).toEqual(['vol-1']);
    await service.detach(DOM, vol, ctx);
    expect(lv.disks.size).toBe(0);
    expect(await journal.load(DOM, vol)).toBeUndefined();
    await service.detach(DOM, vol, ctx);
  });

  it("records the request's pod and shows it; a retry without it is the same attach", async () => {
    const pod = { uid: '5f0c3b1e-9d2a-4c7b-8e6f-1a2b3c4d5e6f', name: 'vm-0', namespace: 'vms' };
    const first = await service.attach(DOM, vol, { ...blockSpec(), pod }, ctx);
    expect(first.attachment.pod).toEqual(pod);
    expect((await journal.load(DOM, vol))?.pod).toEqual(pod);
    const again = await service.attach(DOM, vol, blockSpec(), ctx);
    expect(again).toMatchObject({ created: false, attachment: { pod } });
    expect((await service.list(DOM))[0]?.pod).toEqual(pod);
  });

  it('re-attaches when the disk vanished behind its back', async () => {
    const first = await service.attach(DOM, vol, blockSpec(), ctx);
    lv.disks.clear();
    const again = await service.attach(DOM, vol, blockSpec(), ctx);
    expect(again.created).toBe(true);
    expect(lv.disks.has(first.attachment.deviceId)).toBe(true);
  });

  it('rolls a failed attach back: no record, no secret, and the error names the step', async () => {
    lv.failAttach = true;
    const server = await import('node:net').then(({ createServer }) =>
      createServer((s) => s.end('ceph v027')).listen(0, '127.0.0.1'),
    );
    await new Promise((r) => server.once('listening', r));
    const port = (server.address() as { port: number }).port;
    try {
      const spec = parseAttachRequest({
        mode: 'rbd',
        source: {
          type: 'rbd',
          pool: 'rbd',
          image: 'img',
          monitors: [`127.0.0.1:${port}`],
          user: 'vmplug',
          key,
        },
      });
      const err = await service.attach(DOM, vol, spec, ctx).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(BackendError);
      expect((err as Error).message).toMatch(/LIBVIRT_OPERATION_FAILED/);
      expect(lv.secrets.size).toBe(0);
      expect(await journal.load(DOM, vol)).toBeUndefined();
      // The secret held the decoded key while it existed; the key never reached a log line.
      lv.failAttach = false;
      await service.attach(DOM, vol, spec, ctx);
      const secret = [...lv.secrets.values()][0];
      expect(secret?.value?.toString('base64')).toBe(key);
      expect(secret?.usageId).toBe(`vmplug/${volumeNames(DOM, vol).secret}`);
      expect([...lv.disks.values()][0]).toContain(`uuid='${secret?.uuid}'`);
      expect(logs.text()).not.toContain(key);
      await service.detach(DOM, vol, ctx);
      expect(lv.secrets.size).toBe(0);
    } finally {
      server.close();
    }
  });

  it('refuses an rbd attach when no Ceph monitor answers, leaving nothing behind', async () => {
    await expect(service.attach(DOM, vol, rbdSpec(), ctx)).rejects.toMatchObject({
      code: 'CEPH_UNREACHABLE',
    });
    expect(lv.secrets.size).toBe(0);
    expect(lv.attachCalls).toBe(0);
    expect(await journal.load(DOM, vol)).toBeUndefined();
  });

  it('answers DetachPending while the guest holds the disk, and a retry finishes once it lets go', async () => {
    await service.attach(DOM, vol, blockSpec(), ctx);
    lv.guestReleases = false;
    await expect(service.detach(DOM, vol, ctx)).rejects.toBeInstanceOf(DetachPendingError);
    expect((await journal.load(DOM, vol))?.state).toBe('DetachPending');
    // A retry while still held: libvirt refuses the repeated request; still pending.
    await expect(service.detach(DOM, vol, ctx)).rejects.toBeInstanceOf(DetachPendingError);
    // The guest lets go between retries (the event is missed: nobody was listening).
    lv.release([...lv.disks.keys()][0] as string);
    await service.detach(DOM, vol, ctx);
    expect(await journal.load(DOM, vol)).toBeUndefined();
    await expect(service.attach(DOM, vol, blockSpec(), ctx)).resolves.toMatchObject({ created: true });
  });

  it('reconcile: removes a stray vmplug disk and secret, keeps foreign ones, drops records of a vanished domain', async () => {
    const a = await service.attach(DOM, vol, blockSpec(), ctx);
    lv.disks.set(
      'ua-vmpd-00000000000000aa',
      `<disk type='block'><target dev='sdz' bus='scsi'/><alias name='ua-vmpd-00000000000000aa'/></disk>`,
    );
    lv.disks.set(
      'ua-foreign',
      `<disk type='block'><target dev='sdy' bus='scsi'/><alias name='ua-foreign'/></disk>`,
    );
    await lv
      .conn()
      .secretDefineXML(
        `<secret><usage type='ceph'><name>vmplug/vmps-00000000000000bb</name></usage></secret>`,
      );
    await lv.conn().secretDefineXML(`<secret><usage type='ceph'><name>client.admin</name></usage></secret>`);
    const s = await service.reconcile();
    expect(s.repairs.map((r) => r.action).sort()).toEqual(['removed-stray-device', 'removed-stray-secret']);
    expect([...lv.disks.keys()].sort()).toEqual([a.attachment.deviceId, 'ua-foreign'].sort());
    expect([...lv.secrets.values()].map((x) => x.usageId)).toEqual(['client.admin']);

    lv.running = false;
    const gone = await service.reconcile();
    expect(gone.repairs.map((r) => r.action)).toEqual(['dropped-record']);
    expect(await journal.load(DOM, vol)).toBeUndefined();
  });

  it('reconcile rolls back an attach a crash left half-done', async () => {
    await service.attach(DOM, vol, blockSpec(), ctx);
    const r = await journal.load(DOM, vol);
    if (r === undefined) throw new Error('no record');
    // As if vmplugd died right after attachDeviceFlags, before recording it.
    await journal.save({ ...r, state: 'Pending', timeline: r.timeline.slice(0, 1) });
    const s = await service.reconcile();
    expect(s.repairs.map((x) => x.action)).toEqual(['rolled-back-attach']);
    expect(lv.disks.size).toBe(0);
    expect(await journal.load(DOM, vol)).toBeUndefined();
  });

  it('refuses an RBD namespace (libvirt names pool/image only)', async () => {
    const spec = parseAttachRequest({
      mode: 'rbd',
      source: {
        type: 'rbd',
        pool: 'rbd',
        namespace: 'ns',
        image: 'img',
        monitors: ['127.0.0.1:1'],
        user: 'vmplug',
        key,
      },
    });
    await expect(service.attach(DOM, vol, spec, ctx)).rejects.toMatchObject({
      code: 'INVALID_FIELD',
      field: 'source.namespace',
    });
  });
});
