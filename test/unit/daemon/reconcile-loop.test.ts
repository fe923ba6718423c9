import { describe, expect, it } from 'vitest';
import { kataSbsRootOf, resolveConfig } from '../../../daemon/config.js';
import { ReconcileLoop } from '../../../daemon/reconcile-loop.js';
import { memoryLogger } from './helpers.js';

describe('ReconcileLoop', () => {
  it('runs at start-up, then periodically, one run at a time, and stops', async () => {
    const { logger, text } = memoryLogger();
    let running = 0;
    let maxRunning = 0;
    let runs = 0;
    const loop = new ReconcileLoop({
      intervalMs: 20,
      logger,
      reconcile: async () => {
        running++;
        maxRunning = Math.max(maxRunning, running);
        runs++;
        await new Promise((r) => setTimeout(r, 10));
        running--;
        if (runs === 2) throw new Error('qemu said no');
        return { repaired: 0 };
      },
    });
    expect(loop.readiness().ok).toBe(false);
    loop.start();
    await loop.firstRun();
    expect(loop.readiness()).toMatchObject({ ok: true });
    while (runs < 4) await new Promise((r) => setTimeout(r, 10));
    await loop.stop();
    const after = runs;
    await new Promise((r) => setTimeout(r, 60));
    expect(runs).toBe(after);
    expect(maxRunning).toBe(1);
    expect(text()).toContain('start-up reconcile done');
    expect(text()).toContain('qemu said no');
  });

  it('kick() runs again at once, and once more after a run in progress, never two at a time', async () => {
    const { logger } = memoryLogger();
    let runs = 0;
    let running = 0;
    let maxRunning = 0;
    let release: (() => void) | undefined;
    const loop = new ReconcileLoop({
      intervalMs: 0,
      logger,
      reconcile: async () => {
        running++;
        maxRunning = Math.max(maxRunning, running);
        runs++;
        if (runs === 2) await new Promise<void>((r) => (release = r));
        running--;
        return {};
      },
    });
    loop.start();
    await loop.firstRun();
    expect(runs).toBe(1);
    loop.kick();
    while (release === undefined) await new Promise((r) => setTimeout(r, 5));
    loop.kick(); // during run 2: one more run after it
    loop.kick();
    release();
    while (runs < 3) await new Promise((r) => setTimeout(r, 5));
    await new Promise((r) => setTimeout(r, 50));
    expect(runs).toBe(3);
    expect(maxRunning).toBe(1);
    await loop.stop();
  });

  it('interval 0 runs once; stop aborts a run in progress', async () => {
    const { logger } = memoryLogger();
    let runs = 0;
    const once = new ReconcileLoop({ intervalMs: 0, logger, reconcile: async () => void runs++ });
    once.start();
    await once.firstRun();
    await once.stop();
    expect(runs).toBe(1);

    let aborted = false;
    const slow = new ReconcileLoop({
      intervalMs: 1_000,
      logger,
      reconcile: (signal) =>
        new Promise((_, reject) =>
          signal.addEventListener('abort', () => {
            aborted = true;
            reject(signal.reason);
          }),
        ),
    });
    slow.start();
    await slow.stop();
    expect(aborted).toBe(true);
  });
});

describe('config additions', () => {
  it('derives the Kata persist root from the vm root unless given', () => {
    const { config } = resolveConfig({ kataVmRoot: '/x/vc/vm' }, {}, null);
    expect(config.kataSbsRoot).toBeNull();
    expect(kataSbsRootOf(config)).toBe('/x/vc/sbs');
    expect(kataSbsRootOf(resolveConfig({ kataSbsRoot: '/y/sbs' }, {}, null).config)).toBe('/y/sbs');
  });

  it('validates the discovery and reconcile periods', () => {
    const { config } = resolveConfig({}, {}, null);
    expect(config).toMatchObject({
      reconcileIntervalMs: 60_000,
      discoveryRescanMs: 5_000,
      sandboxGoneGraceMs: 15_000,
    });
    expect(resolveConfig({}, { VMPLUG_RECONCILE_INTERVAL_MS: '0' }, null).config.reconcileIntervalMs).toBe(0);
    expect(() => resolveConfig({ reconcileIntervalMs: '5' }, {}, null)).toThrow(/reconcile-interval-ms/);
    expect(() => resolveConfig({ discoveryRescanMs: '1' }, {}, null)).toThrow(/discovery-rescan-ms/);
  });
});
