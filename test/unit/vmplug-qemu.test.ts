import { spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { qemuWrapperPath } from '../env/paths.js';

// Stands in for QEMU: prints its pid and its argv (NUL separated) on stdout, and writes to the
// extra fd 3 it inherits, proving the wrapper exec'd it in place with the fds intact.
const fakeQemu = `#!/bin/sh
printf '%s\\n' "$$"
for a in "$@"; do printf '%s\\0' "$a"; done
printf 'fd3-alive' >&3
`;

interface Run {
  pid: number;
  reportedPid: number;
  args: string[];
  fd3: string;
  code: number | null;
}

let dir: string;
let fake: string;
let monitorDir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmplug-qemu-test-'));
  fake = join(dir, 'fake-qemu');
  monitorDir = join(dir, 'run', 'sandboxes');
  await writeFile(fake, fakeQemu);
  await chmod(fake, 0o755);
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function runWrapper(args: string[], env: Record<string, string> = {}, cwd?: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(qemuWrapperPath, args, {
      ...(cwd === undefined ? {} : { cwd }),
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        VMPLUG_QEMU: fake,
        VMPLUG_MONITOR_DIR: monitorDir,
        ...env,
      },
      stdio: ['ignore', 'pipe', 'inherit', 'pipe'],
    });
    const out: Buffer[] = [];
    const fd3: Buffer[] = [];
    child.stdout?.on('data', (c: Buffer) => out.push(c));
    const extra = child.stdio[3];
    if (extra && 'on' in extra) extra.on('data', (c: Buffer) => fd3.push(c));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error('wrapper did not finish'));
    }, 5_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      const text = Buffer.concat(out).toString('utf8');
      const nl = text.indexOf('\n');
      const argText = text.slice(nl + 1);
      resolve({
        pid: child.pid ?? -1,
        reportedPid: Number(text.slice(0, nl)),
        args: argText === '' ? [] : argText.slice(0, -1).split('\0'),
        fd3: Buffer.concat(fd3).toString('utf8'),
        code,
      });
    });
  });
}

const awkward = ['a b', '', 'x,y=z,,w', 'line1\nline2', '$(touch /tmp/nope)', '*', '-name'];

function lanes(id: string, ports = 4): string[] {
  const out = ['-qmp', `unix:${join(monitorDir, id)}/qmp.sock,server=on,wait=off`];
  for (let n = 0; n < ports; n++) {
    out.push('-device', `pcie-root-port,id=vmplug-rp${n},bus=pcie.0,chassis=${200 + n},slot=0`);
  }
  out.push('-device', 'virtio-scsi-pci,id=vmplug-scsi0');
  return out;
}

describe('bin/vmplug-qemu', () => {
  it('execs QEMU in place (same pid, fd 3 inherited) with every argument intact plus the lanes', async () => {
    const args = [
      '-machine',
      'q35,accel=tcg',
      'first',
      ...awkward.slice(0, -1),
      '-name',
      'sandbox-abc_1.x-2',
    ];
    const r = await runWrapper(args);
    expect(r.code).toBe(0);
    expect(r.reportedPid).toBe(r.pid);
    expect(r.fd3).toBe('fd3-alive');
    expect(r.args).toEqual([...args, ...lanes('abc_1.x-2')]);
    const st = await stat(join(monitorDir, 'abc_1.x-2'));
    expect(st.isDirectory()).toBe(true);
    expect(st.mode & 0o777).toBe(0o750);
  });

  it('reads the id from the guest= form and keeps the other -name options', async () => {
    const args = ['-M', 'pc-q35-7.2', '-name', 'process=x,guest=sandbox-f00d,debug-threads=on'];
    const r = await runWrapper(args);
    expect(r.args).toEqual([...args, ...lanes('f00d')]);
  });

  it('uses the last -name and honours VMPLUG_ROOT_PORTS', async () => {
    const args = ['-machine', 'type=q35', '-name', 'sandbox-old', '-name', 'sandbox-new'];
    const r = await runWrapper(args, { VMPLUG_ROOT_PORTS: '2' });
    expect(r.args).toEqual([...args, ...lanes('new', 2)]);
    expect(await readdir(monitorDir)).toEqual(['new']);
  });

  it('adds no root ports on a machine without PCIe', async () => {
    const args = ['-machine', 'pc,accel=tcg', '-name', 'sandbox-pc1'];
    const r = await runWrapper(args);
    expect(r.args).toEqual([
      ...args,
      '-qmp',
      `unix:${join(monitorDir, 'pc1')}/qmp.sock,server=on,wait=off`,
      '-device',
      'virtio-scsi-pci,id=vmplug-scsi0',
    ]);
  });

  const badNames: [string, string[]][] = [
    ['no -name at all', ['-machine', 'q35']],
    ['-name as the last argument', ['-machine', 'q35', '-name']],
    ['a path', ['-name', 'sandbox-../x']],
    ['a bare ..', ['-name', '../x']],
    ['a slash', ['-name', 'sandbox-a/b']],
    ['an empty id', ['-name', 'sandbox-']],
    ['an empty -name', ['-name', '']],
    ['200 characters', ['-name', `sandbox-${'a'.repeat(200)}`]],
    ['129 characters', ['-name', `sandbox-${'a'.repeat(129)}`]],
    ['a leading dot', ['-name', 'sandbox-.hidden']],
    ['.. inside', ['-name', 'sandbox-a..b']],
    ['an escaped comma', ['-name', 'sandbox-a,,b']],
    ['a newline', ['-name', 'sandbox-a\nb']],
    ['a space', ['-name', 'sandbox-a b']],
    ['not a sandbox', ['-name', 'myvm']],
    ['a glob', ['-name', 'sandbox-*']],
  ];
  for (const [what, args] of badNames) {
    it(`runs QEMU unchanged and creates nothing for ${what}`, async () => {
      const all = [...args, ...awkward];
      const r = await runWrapper(all);
      expect(r.reportedPid).toBe(r.pid);
      expect(r.fd3).toBe('fd3-alive');
      expect(r.args).toEqual(all);
      expect(await readdir(dir)).toEqual(['fake-qemu']);
    });
  }

  it('accepts a long id while its socket path fits in sun_path', async () => {
    // A 128-character id (the id alphabet's limit) never fits: '/' + 128 + '/qmp.sock' > 107
    // bytes. Kata's ids are 64 hex characters: /run/vmplug/sandboxes/<64>/qmp.sock is 95.
    const shortRoot = await mkdtemp('/tmp/q');
    const id = `A${'b'.repeat(106 - shortRoot.length - '//qmp.sock'.length)}`;
    try {
      const r = await runWrapper(['-name', `sandbox-${id}`], { VMPLUG_MONITOR_DIR: shortRoot });
      const socket = `${shortRoot}/${id}/qmp.sock`;
      expect(Buffer.byteLength(socket)).toBe(107);
      expect(r.args).toContain(`unix:${socket},server=on,wait=off`);
    } finally {
      await rm(shortRoot, { recursive: true, force: true });
    }
  });

  it('runs QEMU unchanged when the monitor socket path would be too long for QEMU', async () => {
    const id = `A${'b'.repeat(127)}`;
    const args = ['-machine', 'q35', '-name', `sandbox-${id}`];
    const r = await runWrapper(args);
    expect(r.args).toEqual(args);
    expect(await readdir(dir)).toEqual(['fake-qemu']);
  });

  it('runs QEMU unchanged when the monitor directory has a comma (QEMU option separator)', async () => {
    const args = ['-machine', 'q35', '-name', 'sandbox-ok'];
    const r = await runWrapper(args, { VMPLUG_MONITOR_DIR: join(dir, 'a,b') });
    expect(r.args).toEqual(args);
    expect(await readdir(dir)).toEqual(['fake-qemu']);
  });

  it('does not follow a symlink planted where the sandbox directory goes', async () => {
    const target = join(dir, 'elsewhere');
    await mkdir(target);
    await mkdir(monitorDir, { recursive: true });
    await symlink(target, join(monitorDir, 'evil'));
    const args = ['-machine', 'q35', '-name', 'sandbox-evil'];
    const r = await runWrapper(args);
    expect(r.args).toEqual(args);
  });

  it('runs QEMU unchanged when the monitor directory cannot be made', async () => {
    const blocker = join(dir, 'file');
    await writeFile(blocker, '');
    const args = ['-machine', 'q35', '-name', 'sandbox-ok'];
    const r = await runWrapper(args, { VMPLUG_MONITOR_DIR: join(blocker, 'sandboxes') });
    expect(r.args).toEqual(args);
  });

  describe('pod.json from the sandbox bundle in the working directory', () => {
    const uid = '0f6c1a2e-8d3b-4c5a-9e7f-1a2b3c4d5e6f';
    let bundle: string;
    beforeEach(async () => {
      bundle = join(dir, 'bundle');
      await mkdir(bundle);
    });

    function config(annotations: Record<string, string>, pretty = false): string {
      const doc = { ociVersion: '1.1.0', process: { args: ['/pause'] }, annotations };
      return pretty ? JSON.stringify(doc, null, 2) : JSON.stringify(doc);
    }

    async function podJson(id: string): Promise<unknown> {
      const text = await readFile(join(monitorDir, id, 'pod.json'), 'utf8').catch(() => undefined);
      return text === undefined ? undefined : JSON.parse(text);
    }

    for (const pretty of [false, true]) {
      it(`records uid, name and namespace (${pretty ? 'indented' : 'one-line'} config.json)`, async () => {
        await writeFile(
          join(bundle, 'config.json'),
          config(
            {
              'io.kubernetes.cri.sandbox-name': 'web-0',
              'io.kubernetes.cri.sandbox-uid': uid,
              'io.kubernetes.cri.sandbox-namespace': 'shop',
              'io.kubernetes.cri.container-type': 'sandbox',
            },
            pretty,
          ),
        );
        const args = ['-machine', 'q35', '-name', 'sandbox-p1'];
        const r = await runWrapper(args, {}, bundle);
        expect(r.args).toEqual([...args, ...lanes('p1')]);
        expect(await podJson('p1')).toEqual({ uid, name: 'web-0', namespace: 'shop' });
        // Only the record and no temporary file beside it.
        expect(await readdir(join(monitorDir, 'p1'))).toEqual(['pod.json']);
      });
    }

    const bad: [string, Record<string, string>, unknown][] = [
      ['a uid that is not a UUID', { 'io.kubernetes.cri.sandbox-uid': 'not-a-uuid' }, undefined],
      ['a uid with a quote', { 'io.kubernetes.cri.sandbox-uid': `${uid}"x` }, undefined],
      ['no uid', { 'io.kubernetes.cri.sandbox-name': 'web-0' }, undefined],
      [
        'a name and namespace that are not DNS names',
        {
          'io.kubernetes.cri.sandbox-uid': uid,
          'io.kubernetes.cri.sandbox-name': 'Web_0',
          'io.kubernetes.cri.sandbox-namespace': 'a.b',
        },
        { uid },
      ],
      [
        'a name that would break the JSON',
        { 'io.kubernetes.cri.sandbox-uid': uid, 'io.kubernetes.cri.sandbox-name': 'a","uid":"x' },
        { uid },
      ],
    ];
    for (const [what, annotations, expected] of bad) {
      it(`runs QEMU with its lanes and records only what is valid for ${what}`, async () => {
        await writeFile(join(bundle, 'config.json'), config(annotations));
        const args = ['-machine', 'q35', '-name', 'sandbox-p2'];
        const r = await runWrapper(args, {}, bundle);
        expect(r.args).toEqual([...args, ...lanes('p2')]);
        expect(await podJson('p2')).toEqual(expected);
      });
    }

    it('records nothing without a config.json, for one that is not a file, or not JSON', async () => {
      const args = ['-machine', 'q35', '-name', 'sandbox-p3'];
      expect((await runWrapper(args, {}, bundle)).args).toEqual([...args, ...lanes('p3')]);
      expect(await podJson('p3')).toBeUndefined();
      await mkdir(join(bundle, 'config.json'));
      expect((await runWrapper(args, {}, bundle)).args).toEqual([...args, ...lanes('p3')]);
      expect(await podJson('p3')).toBeUndefined();
      await rm(join(bundle, 'config.json'), { recursive: true });
      await writeFile(join(bundle, 'config.json'), Buffer.from([0xff, 0x00, 0x22, 0x0a]));
      expect((await runWrapper(args, {}, bundle)).args).toEqual([...args, ...lanes('p3')]);
      expect(await podJson('p3')).toBeUndefined();
    });

    it('replaces a pod.json left by an earlier start', async () => {
      await mkdir(join(monitorDir, 'p4'), { recursive: true });
      await writeFile(join(monitorDir, 'p4', 'pod.json'), JSON.stringify({ uid }));
      const args = ['-machine', 'q35', '-name', 'sandbox-p4'];
      await runWrapper(args, {}, bundle);
      expect(await podJson('p4')).toBeUndefined();
    });

    it('does not write through a symlinked config.json', async () => {
      const outside = join(dir, 'outside.json');
      await writeFile(outside, config({ 'io.kubernetes.cri.sandbox-uid': uid }));
      await symlink(outside, join(bundle, 'config.json'));
      const args = ['-machine', 'q35', '-name', 'sandbox-p5'];
      expect((await runWrapper(args, {}, bundle)).args).toEqual([...args, ...lanes('p5')]);
      expect(await podJson('p5')).toBeUndefined();
    });
  });
});
