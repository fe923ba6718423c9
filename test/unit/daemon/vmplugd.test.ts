import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { VmplugClient } from '../../../cli/client.js';
import { type DaemonConfig, resolveConfig } from '../../../daemon/config.js';
import { startVmplugd, type Vmplugd } from '../../../daemon/main.js';
import type { EngineHandle } from '../../../daemon/volumes/attach-engine.js';
import { FakeQemu } from '../fakes/qmp-server.js';
import { FakeAttachService, memoryLogger } from './helpers.js';

// The whole daemon wired together (journal, discovery, engine handle, reconcile loop, REST server)
// with a stub engine and a fake QEMU monitor under a temp --monitor-dir.

describe('startVmplugd', () => {
  let dir: string;
  let config: DaemonConfig;
  const started: Vmplugd[] = [];
  const fakes: FakeQemu[] = [];

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmp-d-'));
    config = resolveConfig(
      {
        socket: join(dir, 'vmplug.sock'),
        stateDir: join(dir, 'state'),
        monitorDir: join(dir, 'mon'),
        kataVmRoot: join(dir, 'vc', 'vm'),
        libvirtUri: '',
        reconcileIntervalMs: '100',
        discoveryRescanMs: '100',
        shutdownTimeoutMs: '2000',
      },
      {},
      null,
    ).config;
  });

  afterEach(async () => {
    await Promise.allSettled(started.splice(0).map((d) => d.stop()));
    await Promise.allSettled(fakes.splice(0).map((f) => f.stopListening()));
    await rm(dir, { recursive: true, force: true });
  });

  function stubEngine(calls: string[]): () => Promise<EngineHandle> {
    const service = new FakeAttachService();
    return async () => ({
      service,
      listVolumes: async () => [],
      reconcile: async (signal) => {
        calls.push(signal.aborted ? 'reconcile-aborted' : 'reconcile');
        return { repairs: [] };
      },
      readiness: () => ({ ok: true, detail: 'stub' }),
      close: async () => {
        calls.push('close');
      },
    });
  }

  it('serves discovered sandboxes, reconciles periodically, becomes ready, and stops in order', async () => {
    await mkdir(join(config.monitorDir, 'sb-1'), { recursive: true });
    fakes.push(await FakeQemu.startAt(join(config.monitorDir, 'sb-1', 'qmp.sock')));
    const calls: string[] = [];
    const { logger } = memoryLogger();
    const d = await startVmplugd({
      config,
      logger,
      createEngine: stubEngine(calls),
      discovery: { session: { backoff: { initialMs: 20, maxMs: 100 } } },
    });
    started.push(d);
    const client = new VmplugClient({ socketPath: config.socket, timeoutMs: 5_000 });
    const deadline = performance.now() + 8_000;
    let checks: Record<string, { ok: boolean }> | undefined;
    while (checks === undefined && performance.now() < deadline) {
      checks = await client.ready().catch(() => undefined);
      if (checks === undefined) await new Promise((r) => setTimeout(r, 50));
    }
    expect(checks).toMatchObject({
      journal: { ok: true },
      discovery: { ok: true },
      attachEngine: { ok: true },
      reconcile: { ok: true },
    });
    const list = await client.listSandboxes();
    expect(list.map((s) => s.id)).toEqual(['sb-1']);
    while (calls.filter((c) => c === 'reconcile').length < 2 && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(calls.filter((c) => c === 'reconcile').length).toBeGreaterThanOrEqual(2);
    await d.stop();
    expect(calls.at(-1)).toBe('close');
    expect(existsSync(config.socket)).toBe(false);
    // Discovery let go of the monitor; nothing on disk was touched.
    expect(existsSync(join(config.monitorDir, 'sb-1', 'qmp.sock'))).toBe(true);
  });

  it('a second vmplugd on the same socket fails to start and cleans up after itself', async () => {
    const { logger } = memoryLogger();
    const first = await startVmplugd({ config, logger, createEngine: stubEngine([]) });
    started.push(first);
    const calls: string[] = [];
    await expect(startVmplugd({ config, logger, createEngine: stubEngine(calls) })).rejects.toMatchObject({
      code: 'ALREADY_RUNNING',
    });
    expect(calls).toEqual(['close']);
    await expect(new VmplugClient({ socketPath: config.socket }).listSandboxes()).resolves.toEqual([]);
  });

  it('refuses a state directory it cannot use', async () => {
    const { logger } = memoryLogger();
    await writeFile(join(dir, 'file'), '');
    const bad = { ...config, stateDir: join(dir, 'file', 'state') };
    await expect(startVmplugd({ config: bad, logger, createEngine: stubEngine([]) })).rejects.toThrow(
      /state directory/,
    );
  });
});
