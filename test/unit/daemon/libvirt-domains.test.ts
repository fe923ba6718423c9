/**
 * LibvirtDomains over a fake connection that behaves like the binding against libvirtd 9.0: a
 * refused connect rejects with LIBVIRT_CONNECT_FAILED, lifecycle events carry the domain's name
 * and UUID, a transient domain that stopped is gone (lookup: LIBVIRT_NO_DOMAIN), and a dropped
 * connection emits `closed`.
 */
import { describe, expect, it } from 'vitest';
import type {
  DomainState,
  DomainSummary,
  LibvirtConnection,
  LibvirtEvent,
  LibvirtUuid,
} from '../../../libvirt/binding.js';
import { type Connect, LibvirtDomains } from '../../../libvirt/domains.js';
import { LibvirtError } from '../../../libvirt/errors.js';

const quiet = { debug: () => {}, info: () => {}, warn: () => {} };
const uuid = (n: number): LibvirtUuid => `00000000-0000-4000-8000-00000000000${n}` as LibvirtUuid;

class FakeLibvirt {
  domains = new Map<string, DomainSummary>();
  listeners = new Set<(e: LibvirtEvent) => void>();
  up = true;
  connects = 0;

  add(name: string, n: number, state: DomainState): void {
    this.domains.set(name, { name, uuid: uuid(n), id: state === 'shutoff' ? null : n, state, reason: 0 });
  }

  emit(e: LibvirtEvent): void {
    for (const l of [...this.listeners]) l(e);
  }

  lifecycle(name: string, event: 'started' | 'suspended' | 'resumed' | 'stopped'): void {
    const d = this.domains.get(name);
    if (d === undefined) throw new Error(name);
    this.emit({ kind: 'lifecycle', domain: d, event, detail: 0, receivedAt: 0 });
  }

  connect: Connect = async () => {
    this.connects++;
    if (!this.up) {
      throw new LibvirtError('LIBVIRT_CONNECT_FAILED', 'Failed to connect socket', { operation: 'connect' });
    }
    const listeners = this.listeners;
    const fake = {
      lostReason: undefined,
      onEvent: (l: (e: LibvirtEvent) => void) => {
        listeners.add(l);
        return () => listeners.delete(l);
      },
      listDomains: async () => [...this.domains.values()].map((d) => ({ ...d })),
      lookupByUUID: async (u: LibvirtUuid) => {
        const d = [...this.domains.values()].find((x) => x.uuid === u);
        if (d === undefined) {
          throw new LibvirtError('LIBVIRT_NO_DOMAIN', 'Domain not found', { operation: 'lookupByUUID' });
        }
        return { ...d };
      },
      close: async () => {},
    };
    return fake as unknown as LibvirtConnection;
  };
}

async function until(check: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 5));
  expect(check()).toBe(true);
}

describe('LibvirtDomains', () => {
  it('lists domains in the API shape and follows lifecycle events without polling', async () => {
    const lv = new FakeLibvirt();
    lv.add('web-1', 1, 'running');
    lv.add('db-1', 2, 'shutoff');
    lv.add('bad name', 3, 'running');
    const d = LibvirtDomains.start({ uri: 'qemu:///system', logger: quiet, connect: lv.connect });
    expect(await d.connected(1000)).toBe(true);
    const cat = d.catalog();
    expect(cat.list().map((r) => [r.id, r.kind, r.state])).toEqual([
      ['web-1', 'libvirt', 'running'],
      ['db-1', 'libvirt', 'shutoff'],
    ]);
    (lv.domains.get('web-1') as DomainSummary).state = 'paused';
    lv.lifecycle('web-1', 'suspended');
    expect(cat.get('web-1' as never)?.state).toBe('paused');
    (lv.domains.get('web-1') as DomainSummary).state = 'running';
    lv.lifecycle('web-1', 'resumed');
    await until(() => cat.get('web-1' as never)?.state === 'running');
    // A transient domain that stops is gone.
    lv.lifecycle('web-1', 'stopped');
    lv.domains.delete('web-1');
    await until(() => cat.get('web-1' as never) === undefined);
    // A new domain appears on its 'started' event.
    lv.add('new-1', 4, 'running');
    lv.lifecycle('new-1', 'started');
    await until(() => cat.get('new-1' as never)?.state === 'running');
    await d.close();
  });

  it('starts without libvirtd, says so, and connects once it comes', async () => {
    const lv = new FakeLibvirt();
    lv.up = false;
    lv.add('web-1', 1, 'running');
    const d = LibvirtDomains.start({
      uri: 'qemu:///system',
      logger: quiet,
      connect: lv.connect,
      initialBackoffMs: 10,
      maxBackoffMs: 20,
    });
    expect(await d.connected(50)).toBe(false);
    expect(d.health().ok).toBe(false);
    expect(d.health().detail).toMatch(/not reachable/);
    lv.up = true;
    expect(await d.connected(2000)).toBe(true);
    expect(d.health().ok).toBe(true);
    expect(d.list().map((x) => x.name)).toEqual(['web-1']);
    await d.close();
  });

  it('reconnects after the connection closed and resyncs what changed meanwhile', async () => {
    const lv = new FakeLibvirt();
    lv.add('web-1', 1, 'running');
    const d = LibvirtDomains.start({
      uri: 'qemu:///system',
      logger: quiet,
      connect: lv.connect,
      initialBackoffMs: 10,
    });
    expect(await d.connected(1000)).toBe(true);
    const changes: string[] = [];
    d.onChange((c) => changes.push(c.kind === 'connection' ? `conn:${c.connected}` : c.kind));
    lv.emit({ kind: 'closed', reason: 'eof', receivedAt: 0 });
    expect(d.connection).toBeUndefined();
    expect(d.catalog().get('web-1' as never)?.state).toBe('unreachable');
    // While away: web-1 went, db-1 came.
    lv.domains.delete('web-1');
    lv.add('db-1', 2, 'paused');
    await until(() => d.connection !== undefined);
    expect(
      d
        .catalog()
        .list()
        .map((r) => [r.id, r.state]),
    ).toEqual([['db-1', 'paused']]);
    expect(changes).toContain('conn:false');
    expect(changes).toContain('conn:true');
    expect(changes).toContain('removed');
    expect(lv.connects).toBe(2);
    await d.close();
  });
});
