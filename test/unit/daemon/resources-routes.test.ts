import { afterEach, describe, expect, it } from 'vitest';
import { parseCommandLine, UsageError } from '../../../cli/args.js';
import { buildServer, type VmplugServer } from '../../../daemon/http/server.js';
import { ResizeError } from '../../../daemon/resize/errors.js';
import { createResourceService, type ResolveResizer } from '../../../daemon/resize/service.js';
import type { GuestResizer, ResourceView } from '../../../daemon/resize/types.js';
import { dimmsToRemove } from '../../../daemon/resize/validate.js';
import { FakeAttachService, memoryLogger } from './helpers.js';

/**
 * Behaves like QmpResizer on a guest started with -smp 1,maxcpus=2 -m 256M,slots=4,maxmem=1024M:
 * CPUs and DIMMs vmplug added can go; `keepDimms` plays a guest that will not release memory.
 */
class FakeResizer implements GuestResizer {
  readonly kind = 'kata' as const;
  vcpus = 1;
  dimms: number[] = [];
  keepDimms = false;
  calls: string[] = [];

  async inspect(): Promise<ResourceView> {
    return {
      vcpus: this.vcpus,
      maxVcpus: 2,
      memoryMiB: 256 + this.dimms.reduce((a, b) => a + b, 0),
      maxMemoryMiB: 1024,
      memoryStepMiB: 128,
      freeMemorySlots: 4 - this.dimms.length,
      minVcpus: 1,
      removableDimmsMiB: [...this.dimms].reverse(),
    };
  }

  async setVcpus(target: number): Promise<void> {
    this.calls.push(`vcpus ${target}`);
    this.vcpus = target;
  }

  async setMemory(target: number, view: ResourceView): Promise<void> {
    this.calls.push(`memory ${target}`);
    if (target > view.memoryMiB) {
      this.dimms.push(target - view.memoryMiB);
      return;
    }
    if (this.keepDimms)
      throw new ResizeError('GUEST_REFUSED_UNPLUG', 'the guest did not release it', 'memoryMiB');
    this.dimms.splice(this.dimms.length - dimmsToRemove(view, target));
  }
}

describe('resources routes', () => {
  let app: VmplugServer | undefined;
  afterEach(async () => {
    await app?.close();
    app = undefined;
  });

  async function server(resizer: FakeResizer): Promise<VmplugServer> {
    const resolve: ResolveResizer = (id) =>
      id === 'sb1'
        ? { state: 'present', resizer }
        : id === 'sb2'
          ? { state: 'unreachable', reason: 'QMP busy' }
          : { state: 'gone' };
    app = await buildServer({
      logger: memoryLogger().logger,
      attachService: new FakeAttachService(),
      readiness: () => ({ ready: true, checks: {} }),
      resources: createResourceService({ resolve }),
    });
    return app;
  }

  const patch = (a: VmplugServer, id: string, payload: unknown) =>
    a.inject({ method: 'PATCH', url: `/v1/sandboxes/${id}/resources`, payload: payload as object });

  it('resizes and answers the new resources', async () => {
    const fake = new FakeResizer();
    const a = await server(fake);
    const res = await patch(a, 'sb1', { vcpus: 2, memoryMiB: 512 });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toEqual({ vcpus: 2, maxVcpus: 2, memoryMiB: 512, maxMemoryMiB: 1024 });
    expect(fake.calls).toEqual(['vcpus 2', 'memory 512']);
    const got = await a.inject({ method: 'GET', url: '/v1/sandboxes/sb1/resources' });
    expect(got.json()).toMatchObject({ vcpus: 2, memoryMiB: 512 });
  });

  it.each([
    [{ vcpus: 'two' }, 400, 'INVALID_REQUEST', 'vcpus'],
    [{ vcpus: 0 }, 400, 'INVALID_REQUEST', 'vcpus'],
    [{ memoryMiB: 1.5 }, 400, 'INVALID_REQUEST', 'memoryMiB'],
    [{ cpus: 2 }, 400, 'INVALID_REQUEST', undefined],
    [{}, 400, 'INVALID_REQUEST', undefined],
    [{ vcpus: 3 }, 422, 'RESOURCE_OUT_OF_RANGE', 'vcpus'],
    [{ memoryMiB: 2048 }, 422, 'RESOURCE_OUT_OF_RANGE', 'memoryMiB'],
    [{ memoryMiB: 300 }, 422, 'MEMORY_MISALIGNED', 'memoryMiB'],
    [{ memoryMiB: 128 }, 422, 'SHRINK_UNSUPPORTED', 'memoryMiB'],
  ])('%j -> %i %s', async (body, status, code, field) => {
    const fake = new FakeResizer();
    const res = await patch(await server(fake), 'sb1', body);
    expect(res.statusCode).toBe(status);
    expect(res.headers['content-type']).toContain('application/problem+json');
    expect(res.json()).toMatchObject({ code, ...(field ? { field } : {}) });
    expect(fake.calls).toEqual([]);
  });

  it('a guest that keeps its memory gets 409 (not retryable) and the state is what it was', async () => {
    const fake = new FakeResizer();
    const a = await server(fake);
    expect((await patch(a, 'sb1', { memoryMiB: 384 })).statusCode).toBe(200);
    fake.keepDimms = true;
    const res = await patch(a, 'sb1', { memoryMiB: 256 });
    expect(res.statusCode).toBe(409);
    expect(res.json()).toMatchObject({ code: 'GUEST_REFUSED_UNPLUG', field: 'memoryMiB', retryable: false });
    expect((await a.inject({ method: 'GET', url: '/v1/sandboxes/sb1/resources' })).json()).toMatchObject({
      memoryMiB: 384,
    });
  });

  it('unknown and unreachable sandboxes', async () => {
    const a = await server(new FakeResizer());
    expect((await patch(a, 'nope', { vcpus: 2 })).statusCode).toBe(404);
    const busy = await patch(a, 'sb2', { vcpus: 2 });
    expect(busy.statusCode).toBe(503);
    expect(busy.json()).toMatchObject({ code: 'SANDBOX_UNAVAILABLE' });
    expect((await patch(a, 'a..b', { vcpus: 2 })).statusCode).toBe(400);
  });

  it('serializes resizes of one sandbox', async () => {
    const fake = new FakeResizer();
    let inFlight = 0;
    let most = 0;
    const slow = fake.setMemory.bind(fake);
    fake.setMemory = async (t, v) => {
      inFlight++;
      most = Math.max(most, inFlight);
      await new Promise((r) => setTimeout(r, 20));
      await slow(t, v);
      inFlight--;
    };
    const a = await server(fake);
    const [r1, r2] = await Promise.all([
      patch(a, 'sb1', { memoryMiB: 384 }),
      patch(a, 'sb1', { memoryMiB: 512 }),
    ]);
    expect([r1.statusCode, r2.statusCode]).toEqual([200, 200]);
    expect(most).toBe(1);
    // The second saw the first's DIMM and added only the difference.
    expect(fake.dimms).toEqual([128, 128]);
  });
});

describe('vmplug resize-guest', () => {
  it('parses the target', () => {
    expect(parseCommandLine(['resize-guest', 'sb', '--vcpus', '2', '--memory-mib', '512', '--json'])).toEqual(
      {
        global: expect.objectContaining({ json: true }),
        command: { name: 'resize-guest', sandboxId: 'sb', vcpus: 2, memoryMiB: 512 },
      },
    );
    expect(parseCommandLine(['--vcpus', '2', 'resize-guest', 'sb']).command).toEqual({
      name: 'resize-guest',
      sandboxId: 'sb',
      vcpus: 2,
    });
    expect(parseCommandLine(['resize-guest', 'sb']).command).toEqual({
      name: 'resize-guest',
      sandboxId: 'sb',
    });
  });

  it('refuses what is not a positive whole number', () => {
    for (const bad of ['0', '-1', '1.5', 'two', '']) {
      expect(() => parseCommandLine(['resize-guest', 'sb', '--vcpus', bad])).toThrow(UsageError);
    }
    expect(() => parseCommandLine(['resize-guest'])).toThrow(UsageError);
  });
});
