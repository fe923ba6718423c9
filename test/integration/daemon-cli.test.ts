import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main as cli } from '../../cli/main.js';
import { DetachPendingError } from '../../core/errors.js';
import type { SandboxId } from '../../core/ids.js';
import type { SandboxCatalog, SandboxRecord } from '../../core/sandbox.js';
import { resolveConfig } from '../../daemon/config.js';
import { type Daemon, startDaemon } from '../../daemon/main.js';
import type { Attachment } from '../../storage/attach-service.js';
import { cephxKey, FakeAttachService, memoryLogger } from '../unit/daemon/helpers.js';

// The vmplug CLI against a real vmplugd REST server on a temp unix socket, with an in-memory
// engine: every command, human and --json output, exit codes, and the key read from a file or
// stdin (never argv). One run goes through bin/vmplug.js as a real process.

const VMPLUG = fileURLToPath(new URL('../../bin/vmplug.js', import.meta.url));

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

describe('vmplug CLI against vmplugd', () => {
  let dir: string;
  let socket: string;
  let daemon: Daemon;
  let service: FakeAttachService;
  const log = memoryLogger();

  const records: SandboxRecord[] = [
    {
      id: 'sb1',
      kind: 'kata',
      state: 'running',
      hypervisorStatus: 'running',
      pod: { uid: 'uid-1', name: 'web-0', namespace: 'shop' },
      discoveredAt: new Date().toISOString(),
    },
    { id: 'sb2', kind: 'kata', state: 'paused', discoveredAt: new Date().toISOString() },
  ];
  const catalog: SandboxCatalog = {
    list: () => records,
    get: (id) => records.find((r) => r.id === id),
  };

  async function run(argv: string[], stdinText?: string): Promise<Run> {
    const out: string[] = [];
    const err: string[] = [];
    const sink = (into: string[]) =>
      new Writable({
        write(c, _e, cb) {
          into.push(String(c));
          cb();
        },
      });
    const stdin = new PassThrough();
    if (stdinText !== undefined) stdin.end(stdinText);
    const code = await cli({
      argv: [...argv, '--socket', socket],
      env: {},
      stdin,
      stdout: sink(out),
      stderr: sink(err),
    });
    return { code, stdout: out.join(''), stderr: err.join('') };
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmp-cli-'));
    socket = join(dir, 'vmplug.sock');
    service = new FakeAttachService();
    const { config } = resolveConfig(
      { socket, stateDir: join(dir, 'state'), shutdownTimeoutMs: '2000' },
      {},
      null,
    );
    daemon = await startDaemon({
      config,
      logger: log.logger,
      attachService: service,
      readiness: () => ({ ready: true, checks: {} }),
      nodeFacts: async () => ({
        hostname: 'cli-node',
        cpu: { model: 'Test CPU', cores: 2, threads: 2 },
        virtualization: { cpuFlag: null, kvmDevice: 'missing' },
      }),
      catalog,
      listVolumes: async (id: SandboxId): Promise<Attachment[]> => {
        const out: Attachment[] = [];
        for (const v of ['blk', 'ceph']) {
          try {
            out.push(
              await service.get(id, v as never, { signal: new AbortController().signal, log: log.logger }),
            );
          } catch {
            // not attached
          }
        }
        return out;
      },
    });
    await writeFile(join(dir, 'key'), `${cephxKey(9)}\n`, { mode: 0o600 });
  });

  afterAll(async () => {
    await daemon?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('attach block: created, then idempotent, then conflict (exit 4)', async () => {
    const first = await run(['attach', 'sb1', 'blk', '--device', '/dev/loop7']);
    expect(first).toMatchObject({ code: 0, stderr: '' });
    expect(first.stdout).toMatch(/^attached blk to sb1: block on scsi/);
    const again = await run(['attach', 'sb1', 'blk', '--device', '/dev/loop7']);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/^already attached blk/);
    const conflict = await run(['attach', 'sb1', 'blk', '--device', '/dev/loop8']);
    expect(conflict.code).toBe(4);
    expect(conflict.stderr).toMatch(/SPEC_CONFLICT/);
  });

  it('attach rbd with the key from a file or stdin; the key never shows in output', async () => {
    const rbdArgs = ['--pool', 'rbd', '--image', 'vol1', '--monitors', '127.0.0.1:6789', '--user', 'vmplug'];
    const fromFile = await run([
      'attach',
      'sb1',
      'ceph',
      ...rbdArgs,
      '--key-file',
      join(dir, 'key'),
      '--json',
    ]);
    expect(fromFile.code).toBe(0);
    const a = JSON.parse(fromFile.stdout) as Attachment;
    expect(a).toMatchObject({
      sandboxId: 'sb1',
      volumeId: 'ceph',
      mode: 'rbd',
      source: { type: 'rbd', image: 'vol1' },
    });
    expect(fromFile.stdout).not.toContain(cephxKey(9));
    const fromStdin = await run(['attach', 'sb1', 'ceph', ...rbdArgs, '--key-file', '-'], `${cephxKey(9)}\n`);
    expect(fromStdin.code).toBe(0);
    expect(fromStdin.stdout).toMatch(/already attached ceph/);
    const badKey = await run(['attach', 'sb1', 'ceph2', ...rbdArgs, '--key-file', '-'], 'not-base64!');
    expect(badKey.code).toBe(2);
    expect(badKey.stderr).toMatch(/field source\.key/);
    expect(badKey.stderr).not.toContain('not-base64!');
    expect(log.text()).not.toContain(cephxKey(9));
  });

  it('usage errors and refused input exit 2, with the offending field', async () => {
    expect((await run(['attach', 'sb1', 'x'])).code).toBe(2);
    const badId = await run(['attach', 'sb1', 'a..b', '--device', '/dev/loop1']);
    expect(badId.code).toBe(2);
    expect(badId.stderr).toMatch(/INVALID_ID/);
    const badDev = await run(['attach', 'sb1', 'v', '--device', '/etc/passwd', '--json']);
    expect(badDev.code).toBe(2);
    expect(JSON.parse(badDev.stderr)).toMatchObject({ status: 422, field: 'source.path', retryable: false });
  });

  it('ls, show sandbox, show volume: human and JSON', async () => {
    const ls = await run(['ls']);
    expect(ls.code).toBe(0);
    expect(ls.stdout.split('\n')[0]).toMatch(/^SANDBOX\s+KIND\s+STATE\s+POD\s+VOLUMES$/);
    expect(ls.stdout).toMatch(/sb1\s+kata\s+running\s+shop\/web-0\s+blk\(Attached\),ceph\(Attached\)/);
    expect(ls.stdout).toMatch(/sb2\s+kata\s+paused\s+-\s+-/);
    const lsJson = await run(['ls', '--pod-uid', 'uid-1', '--json']);
    expect((JSON.parse(lsJson.stdout) as { id: string }[]).map((s) => s.id)).toEqual(['sb1']);
    const show = await run(['show', 'sb1']);
    expect(show.stdout).toMatch(/pod:\s+shop\/web-0/);
    expect(show.stdout).toMatch(/blk\s+block\s+scsi\s+Attached/);
    const vol = await run(['show', 'sb1', 'blk']);
    expect(vol.code).toBe(0);
    expect(vol.stdout).toMatch(/source:\s+\/dev\/loop7/);
    expect(vol.stdout).toMatch(/Attached/);
    expect((await run(['show', 'nope'])).code).toBe(3);
    expect((await run(['show', 'sb1', 'nope'])).code).toBe(3);
  });

  it('resize, node, detach and retryable failures', async () => {
    const resize = await run(['resize', 'sb1', 'blk', '2G']);
    expect(resize).toMatchObject({ code: 0 });
    expect(resize.stdout).toMatch(/resized blk in sb1 to 2147483648 bytes/);
    const node = await run(['node']);
    expect(node.code).toBe(0);
    expect(node.stdout).toMatch(/hostname:\s+cli-node/);
    expect(node.stdout).toMatch(/"kvmDevice":"missing"/);
    service.fail = new DetachPendingError('vmpd-x', 10_000);
    const pending = await run(['detach', 'sb1', 'blk']);
    service.fail = undefined;
    expect(pending.code).toBe(5);
    expect(pending.stderr).toMatch(/DETACH_PENDING/);
    const detach = await run(['detach', 'sb1', 'blk']);
    expect(detach).toMatchObject({ code: 0, stdout: 'detached blk from sb1\n' });
    expect((await run(['detach', 'sb1', 'blk'])).code).toBe(0);
    const down = await cli({
      argv: ['ls', '--socket', join(dir, 'absent.sock')],
      env: {},
      stdin: new PassThrough(),
      stdout: new PassThrough(),
      stderr: new PassThrough(),
    });
    expect(down).toBe(5);
  });

  it('doctor checks the node and the daemon', async () => {
    const doctor = await run(['doctor']);
    expect(doctor.stdout.split('\n')[0]).toMatch(/^CHECK\s+STATUS\s+DETAIL$/);
    expect(doctor.stdout).toMatch(/socket\s+ok\s+.*mode 0660/);
    expect(doctor.stdout).toMatch(/vmplugd\s+ok\s+ready/);
    expect(doctor.stdout).toMatch(/qemu\s+ok\s+.*QEMU emulator version/);
    expect(doctor.code).toBe(0);
    const json = await run(['doctor', '--json']);
    expect((JSON.parse(json.stdout) as { name: string }[]).map((c) => c.name)).toContain('qemu rbd driver');
  });

  it('bin/vmplug.js as a process: exit code, stdout, key from stdin', async () => {
    const result = await new Promise<Run>((resolve) => {
      const child = execFile(
        process.execPath,
        [
          VMPLUG,
          'attach',
          'sb2',
          'ceph',
          '--pool',
          'rbd',
          '--image',
          'img2',
          '--monitors',
          '127.0.0.1:6789',
          '--user',
          'vmplug',
          '--key-file',
          '-',
          '--socket',
          socket,
          '--json',
        ],
        { timeout: 60_000 },
        (err, stdout, stderr) =>
          resolve({ code: err === null ? 0 : ((err as { code?: number }).code ?? 1), stdout, stderr }),
      );
      child.stdin?.end(`${cephxKey(9)}\n`);
    });
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({
      sandboxId: 'sb2',
      volumeId: 'ceph',
      state: 'Attached',
    });
    const missing = await new Promise<number>((resolve) => {
      execFile(process.execPath, [VMPLUG, 'show', 'sb9', '--socket', socket], { timeout: 60_000 }, (err) =>
        resolve(err === null ? 0 : ((err as { code?: number }).code ?? 1)),
      );
    });
    expect(missing).toBe(3);
  });
});
