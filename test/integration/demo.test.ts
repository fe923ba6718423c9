import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

// The README's main command must keep working: `npm run demo` (test/demo.ts) run as a newcomer
// runs it, with its own Ceph, guest and vmplugd. It checks its own data and key leaks and exits 1
// on any failure; here we also check what it prints.

const DEMO = fileURLToPath(new URL('../demo.ts', import.meta.url));
const TSX = fileURLToPath(new URL('../../node_modules/tsx/dist/cli.mjs', import.meta.url));

function runDemo(): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [TSX, DEMO],
      { timeout: 280_000, killSignal: 'SIGTERM', maxBuffer: 16 * 1024 * 1024, encoding: 'utf8' },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

describe('npm run demo', () => {
  it('attaches an RBD image and a loop device through vmplugd, publishes a pod volume Kata plugs, finds the data on the host, and cleans up', async () => {
    const r = await runDemo();
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(r.stdout).toMatch(/discovered sandbox \S+ in .*pod shop\/web-0/);
    expect(r.stdout).toMatch(/vmplugd: 201 Created .* rbd mode on scsi/);
    expect(r.stdout).toMatch(/vmplugd: 201 Created .* block mode on virtio-blk/);
    expect(r.stdout).toMatch(/RBD image \S+ at 1 MiB .* OK/);
    expect(r.stdout).toMatch(/disk\.img at 1 MiB: .* OK/);
    expect(r.stdout).toContain('QEMU now holds 0 vmplug block nodes; vmplugd lists 0 volumes');
    // The Kata pod path: publish by pod UID, Kata's side plugs, the guest mounts and reads.
    expect(r.stdout).toMatch(/PUT \/v1\/pods\/\S+\/volumes\/pvc-pod/);
    expect(r.stdout).toMatch(/vmplugd: 201 Created .*: state Published, device \/dev\/loop\d+/);
    expect(r.stdout).toContain('"volume-type":"directvol"');
    expect(r.stdout).toMatch(/GET: state Consumed, sandboxId \S+/);
    expect(r.stdout).toMatch(/cat hello\.txt {2}-> "written on the host before publish"/);
    expect(r.stdout).toMatch(/DELETE pvc-pod: 204 .*Kata's record removed: yes/);
    expect(r.stdout).toMatch(/\/guest\.txt \(read with debugfs\): "written-in-the-pod" {2}OK/);
    expect(r.stdout).toMatch(/cephx key found in 0 of \d+ vmplugd log lines, 0 of \d+ state files, argv: no/);
    // A cephx key is base64 of 28 bytes starting with "AQ": none may be printed.
    expect(`${r.stdout}${r.stderr}`).not.toMatch(/AQ[A-Za-z0-9+/]{38}==/);
    expect(r.stdout).toMatch(/done in [\d.]+ s/);
  }, 300_000);
});
