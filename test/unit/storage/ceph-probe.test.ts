import { describe, expect, it } from 'vitest';
import { CephUnreachableError } from '../../../core/errors.js';
import { probeMonitors } from '../../../storage/ceph-probe.js';
import { parseMonitor } from '../../../storage/volume-spec.js';
import { closedPort, fakeMonitor } from './engine-helpers.js';

const mon = (s: string) => parseMonitor(s, 'm');

describe('probeMonitors', () => {
  it('takes the first monitor that sends a Ceph banner (msgr2 or msgr1)', async () => {
    const v2 = await fakeMonitor('ceph v2\n');
    const v1 = await fakeMonitor('ceph v027');
    try {
      const dead = await closedPort();
      expect((await probeMonitors([mon(dead), mon(v2.address)])).monitor).toBe(v2.address);
      expect((await probeMonitors([mon(v1.address)])).monitor).toBe(v1.address);
    } finally {
      await v2.close();
      await v1.close();
    }
  });

  it('refuses a service that is not Ceph, a silent port and a closed one', async () => {
    const http = await fakeMonitor('HTTP/1.1 400 Bad Request\r\n');
    const silent = await fakeMonitor('');
    try {
      const dead = await closedPort();
      const err = await probeMonitors([mon(http.address), mon(silent.address), mon(dead)], {
        timeoutMs: 300,
      }).catch((e) => e);
      expect(err).toBeInstanceOf(CephUnreachableError);
      expect(err.message).toContain(dead);
      expect(err.waitedMs).toBeGreaterThanOrEqual(250);
    } finally {
      await http.close();
      await silent.close();
    }
  });

  it("stops at once when the operation's signal aborts", async () => {
    const silent = await fakeMonitor('');
    try {
      const ac = new AbortController();
      const p = probeMonitors([mon(silent.address)], { timeoutMs: 10_000, signal: ac.signal });
      setTimeout(() => ac.abort(new Error('shutdown')), 20);
      await expect(p).rejects.toThrow('shutdown');
    } finally {
      await silent.close();
    }
  });
});
