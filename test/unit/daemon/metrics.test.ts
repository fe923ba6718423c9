import { describe, expect, it } from 'vitest';
import type { SandboxId, VolumeId } from '../../../core/ids.js';
import { DaemonMetrics, measuredReconcile } from '../../../daemon/report/metrics.js';
import { observeAttachService, type VolumeOperation } from '../../../daemon/report/observed-service.js';
import { QmpBusyError, QmpConnectError } from '../../../qmp/errors.js';
import type { AttachSpec } from '../../../storage/volume-spec.js';
import { FakeAttachService, memoryLogger } from './helpers.js';

const sid = 'sb1' as SandboxId;
const vid = 'vol-1' as VolumeId;
const blockSpec: AttachSpec = {
  mode: 'block',
  source: { type: 'hostDevice', path: '/dev/loop7' },
  readOnly: false,
  bus: 'auto',
};

function ctx() {
  return { signal: new AbortController().signal, log: memoryLogger().logger };
}

describe('DaemonMetrics', () => {
  it('counts attaches and detaches with mode/frontend labels and times the successful ones', async () => {
    const metrics = new DaemonMetrics({ processMetrics: false });
    const fake = new FakeAttachService();
    const ops: VolumeOperation[] = [];
    const service = observeAttachService(fake, {
      onOperation: (op) => {
        ops.push(op);
        metrics.observeOperation(op);
      },
      describe: () => ({ mode: 'block', frontend: 'scsi' }),
    });
    await service.attach(sid, vid, blockSpec, ctx());
    await service.detach(sid, vid, ctx());
    const text = await metrics.text();
    expect(text).toMatch(/^vmplug_attach_total\{mode="block",frontend="scsi",result="ok"\} 1$/m);
    expect(text).toMatch(/^vmplug_detach_total\{mode="block",frontend="scsi",result="ok"\} 1$/m);
    expect(text).toMatch(
      /^vmplug_attach_duration_seconds_bucket\{le="\+Inf",mode="block",frontend="scsi"\} 1$/m,
    );
    expect(text).toMatch(/^vmplug_attach_duration_seconds_count\{mode="block",frontend="scsi"\} 1$/m);
    expect(text).toMatch(/^vmplug_detach_duration_seconds_count\{mode="block",frontend="scsi"\} 1$/m);
    expect(ops.map((o) => `${o.op}:${o.ok}`)).toEqual(['attach:true', 'detach:true']);
  });

  it('counts failures by error code, with the requested mode and bus, and rethrows them', async () => {
    const metrics = new DaemonMetrics({ processMetrics: false });
    const fake = new FakeAttachService();
    fake.fail = Object.assign(new Error('lanes full'), { code: 'LANES_FULL' });
    const service = observeAttachService(fake, { onOperation: (op) => metrics.observeOperation(op) });
    await expect(service.attach(sid, vid, { ...blockSpec, bus: 'virtio-blk' }, ctx())).rejects.toThrow(
      'lanes full',
    );
    fake.fail = new Error('no code');
    await expect(service.detach(sid, vid, ctx())).rejects.toThrow('no code');
    const text = await metrics.text();
    expect(text).toMatch(/^vmplug_attach_total\{mode="block",frontend="virtio-blk",result="error"\} 1$/m);
    expect(text).toMatch(/^vmplug_operation_errors_total\{op="attach",code="LANES_FULL"\} 1$/m);
    expect(text).toMatch(/^vmplug_operation_errors_total\{op="detach",code="INTERNAL"\} 1$/m);
    expect(text).toMatch(/^vmplug_detach_total\{mode="unknown",frontend="unknown",result="error"\} 1$/m);
    expect(text).not.toMatch(/^vmplug_attach_duration_seconds_count\{.*\} [1-9]/m);
  });

  it('an observer that throws does not fail the operation', async () => {
    const service = observeAttachService(new FakeAttachService(), {
      onOperation: () => {
        throw new Error('observer bug');
      },
    });
    await expect(service.attach(sid, vid, blockSpec, ctx())).resolves.toMatchObject({ created: true });
  });

  it('reports sandboxes by kind and state at scrape time', async () => {
    let list = [
      { kind: 'kata', state: 'running' },
      { kind: 'kata', state: 'running' },
      { kind: 'libvirt', state: 'paused' },
    ];
    const metrics = new DaemonMetrics({ processMetrics: false, sandboxes: () => list });
    let text = await metrics.text();
    expect(text).toMatch(/^vmplug_sandboxes\{kind="kata",state="running"\} 2$/m);
    expect(text).toMatch(/^vmplug_sandboxes\{kind="libvirt",state="paused"\} 1$/m);
    list = [{ kind: 'kata', state: 'unreachable' }];
    text = await metrics.text();
    expect(text).not.toMatch(/state="running"/);
    expect(text).toMatch(/^vmplug_sandboxes\{kind="kata",state="unreachable"\} 1$/m);
  });

  it('counts QMP reconnects and busy retries from session state changes', async () => {
    const metrics = new DaemonMetrics({ processMetrics: false });
    metrics.observeQmpState({ state: 'ready', generation: 1 });
    metrics.observeQmpState({
      state: 'connecting',
      generation: 1,
      error: new QmpBusyError('/x/qmp.sock', 1000),
    });
    metrics.observeQmpState({
      state: 'connecting',
      generation: 1,
      error: new QmpBusyError('/x/qmp.sock', 1000),
    });
    metrics.observeQmpState({
      state: 'connecting',
      generation: 1,
      error: new QmpConnectError(
        '/x/qmp.sock',
        Object.assign(new Error('refused'), { code: 'ECONNREFUSED' }),
      ),
    });
    metrics.observeQmpState({ state: 'ready', generation: 2 });
    const text = await metrics.text();
    expect(text).toMatch(/^vmplug_qmp_reconnects_total 1$/m);
    expect(text).toMatch(/^vmplug_qmp_busy_retries_total 2$/m);
    expect(text).toMatch(/^vmplug_qmp_connect_failures_total\{code="QMP_BUSY"\} 2$/m);
    expect(text).toMatch(/^vmplug_qmp_connect_failures_total\{code="QMP_CONNECT_FAILED"\} 1$/m);
  });

  it('counts reconcile runs and repairs by action', async () => {
    const metrics = new DaemonMetrics({ processMetrics: false });
    const run = measuredReconcile(
      async () => ({
        sandboxes: 2,
        repairs: [
          { action: 'finished-attach', sandboxId: sid, volumeId: 'v1' },
          { action: 'removed-stray-device', sandboxId: sid, name: 'vmplug-d-x' },
          { action: 'finished-attach', sandboxId: sid, volumeId: 'v2' },
        ],
        skipped: [],
        pending: [],
        failures: [{ sandboxId: sid, code: 'QMP_TIMEOUT', message: 't' }],
      }),
      metrics,
    );
    await run(new AbortController().signal);
    const failing = measuredReconcile(async () => {
      throw new Error('journal unreadable');
    }, metrics);
    await expect(failing(new AbortController().signal)).rejects.toThrow();
    const text = await metrics.text();
    expect(text).toMatch(/^vmplug_reconcile_repairs_total\{action="finished-attach"\} 2$/m);
    expect(text).toMatch(/^vmplug_reconcile_repairs_total\{action="removed-stray-device"\} 1$/m);
    expect(text).toMatch(/^vmplug_reconcile_repair_failures_total 1$/m);
    expect(text).toMatch(/^vmplug_reconcile_runs_total\{result="ok"\} 1$/m);
    expect(text).toMatch(/^vmplug_reconcile_runs_total\{result="error"\} 1$/m);
  });

  it('each instance has its own registry, with process metrics', async () => {
    const a = new DaemonMetrics();
    const b = new DaemonMetrics();
    a.observeQmpState({ state: 'ready', generation: 3 });
    expect(await a.text()).toMatch(/^vmplug_qmp_reconnects_total 1$/m);
    expect(await b.text()).toMatch(/^vmplug_qmp_reconnects_total 0$/m);
    expect(await b.text()).toMatch(/^process_resident_memory_bytes \d+/m);
    expect(a.contentType).toMatch(/^text\/plain/);
  });
});
