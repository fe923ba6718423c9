import { open } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { DIRECT_MODE_ANNOTATION } from '../api/index.js';
import {
  type Command,
  type GlobalOptions,
  parseCommandLine,
  type RbdSourceArgs,
  UsageError,
} from './args.js';
import {
  type AttachRequest,
  type AttachSourceRequest,
  type CallOptions,
  DEFAULT_SOCKET,
  type NicRequest,
  VmplugApiError,
  VmplugClient,
  VmplugTransportError,
} from './client.js';
import { doctorFailed, runDoctor } from './doctor.js';
import { EXIT, type ExitCode, exitCodeFor, KeyFileError } from './exit-codes.js';
import {
  attachedLine,
  attachmentDetails,
  nodeDetails,
  sandboxDetails,
  sandboxTable,
  table,
} from './format.js';
import { helpText } from './help.js';

// `vmplug`: the command-line client of vmplugd. Exit codes in exit-codes.ts.

export interface CliIo {
  argv: readonly string[];
  env: Readonly<Record<string, string | undefined>>;
  stdin: Readable;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  /** Shown by --version. */
  version?: string;
}

const KEY_MAX_BYTES = 4096;
const KEY_READ_TIMEOUT_MS = 10_000;

export async function main(io: CliIo): Promise<ExitCode> {
  let global: GlobalOptions = { socket: undefined, json: io.argv.includes('--json'), timeoutMs: undefined };
  try {
    const parsed = parseCommandLine(io.argv);
    global = parsed.global;
    const client = new VmplugClient({
      socketPath: global.socket ?? io.env.VMPLUG_SOCKET ?? DEFAULT_SOCKET,
      ...(global.timeoutMs !== undefined ? { timeoutMs: global.timeoutMs } : {}),
    });
    return await run(parsed.command, client, global, io);
  } catch (err) {
    const code = exitCodeFor(err);
    io.stderr.write(errorText(err, global.json));
    return code;
  }
}

async function run(
  command: Command,
  client: VmplugClient,
  global: GlobalOptions,
  io: CliIo,
): Promise<ExitCode> {
  const out = (text: string): void => {
    io.stdout.write(text);
  };
  const json = (value: unknown): void => out(`${JSON.stringify(value, null, 2)}\n`);
  const call: CallOptions = {};
  switch (command.name) {
    case 'help':
      out(helpText(command.topic));
      return EXIT.OK;
    case 'version':
      out(`${io.version ?? '0.0.0'}\n`);
      return EXIT.OK;
    case 'attach': {
      const body: AttachRequest = { source: await sourceOf(command.source, io), readOnly: command.readOnly };
      // The mode follows from the source unless the PVC annotation is to decide it.
      const annotated = command.annotations?.[DIRECT_MODE_ANNOTATION] !== undefined;
      const mode =
        command.mode ?? (annotated ? undefined : command.source.type === 'hostDevice' ? 'block' : 'rbd');
      if (mode !== undefined) body.mode = mode;
      if (command.bus !== undefined) body.bus = command.bus;
      if (command.annotations !== undefined) body.annotations = command.annotations;
      if (command.pod !== undefined) body.pod = command.pod;
      const { created, attachment } = await client.attach(command.sandboxId, command.volumeId, body, call);
      if (global.json) json(attachment);
      else out(attachedLine(attachment, created));
      return EXIT.OK;
    }
    case 'detach':
      await client.detach(command.sandboxId, command.volumeId, call);
      if (global.json) json({ sandboxId: command.sandboxId, volumeId: command.volumeId, detached: true });
      else out(`detached ${command.volumeId} from ${command.sandboxId}\n`);
      return EXIT.OK;
    case 'nic-attach': {
      const body: NicRequest = {
        hostInterface:
          command.bridge !== undefined
            ? { type: 'tap', bridge: command.bridge }
            : { type: 'tap', name: command.tap as string },
      };
      if (command.mac !== undefined) body.mac = command.mac;
      if (command.mtu !== undefined) body.mtu = command.mtu;
      const { created, nic } = await client.attachNic(command.sandboxId, command.nicId, body, call);
      if (global.json) json(nic);
      else
        out(
          `${created ? 'attached' : 'already attached'} NIC ${nic.nicId} to ${nic.sandboxId}: mac ${nic.mac}, tap ${nic.tap}, device ${nic.deviceId} on ${nic.port ?? '-'}\n`,
        );
      return EXIT.OK;
    }
    case 'nic-detach':
      await client.detachNic(command.sandboxId, command.nicId, call);
      if (global.json) json({ sandboxId: command.sandboxId, nicId: command.nicId, detached: true });
      else out(`detached NIC ${command.nicId} from ${command.sandboxId}\n`);
      return EXIT.OK;
    case 'resize': {
      const a = await client.resize(command.sandboxId, command.volumeId, command.sizeBytes, call);
      if (global.json) json(a);
      else out(`resized ${a.volumeId} in ${a.sandboxId} to ${command.sizeBytes} bytes\n`);
      return EXIT.OK;
    }
    case 'resize-guest': {
      const target = {
        ...(command.vcpus !== undefined ? { vcpus: command.vcpus } : {}),
        ...(command.memoryMiB !== undefined ? { memoryMiB: command.memoryMiB } : {}),
      };
      const r =
        Object.keys(target).length === 0
          ? await client.guestResources(command.sandboxId, call)
          : await client.resizeGuest(command.sandboxId, target, call);
      if (global.json) json(r);
      else
        out(`${command.sandboxId}: ${r.vcpus}/${r.maxVcpus} vCPUs, ${r.memoryMiB}/${r.maxMemoryMiB} MiB\n`);
      return EXIT.OK;
    }
    case 'ls': {
      const list = await client.listSandboxes(
        command.podUid === undefined ? {} : { podUid: command.podUid },
        call,
      );
      if (global.json) json(list);
      else out(sandboxTable(list));
      return EXIT.OK;
    }
    case 'show':
      if (command.volumeId === undefined) {
        const s = await client.getSandbox(command.sandboxId, call);
        if (global.json) json(s);
        else out(sandboxDetails(s));
      } else {
        const a = await client.get(command.sandboxId, command.volumeId, call);
        if (global.json) json(a);
        else out(attachmentDetails(a));
      }
      return EXIT.OK;
    case 'node': {
      let facts: Record<string, unknown>;
      try {
        facts = await client.node(call);
      } catch (err) {
        if (err instanceof VmplugApiError && err.code === 'ROUTE_NOT_FOUND') {
          throw new VmplugApiError({
            status: 404,
            code: 'ROUTE_NOT_FOUND',
            detail: 'this vmplugd does not serve node facts (GET /v1/node) yet; upgrade vmplugd',
          });
        }
        throw err;
      }
      if (global.json) json(facts);
      else out(nodeDetails(facts));
      return EXIT.OK;
    }
    case 'doctor': {
      const checks = await runDoctor({
        client,
        socketPath: client.socketPath,
        qemuPath: io.env.VMPLUG_QEMU ?? '/usr/bin/qemu-system-x86_64',
      });
      if (global.json) json(checks);
      else
        out(
          table(
            ['CHECK', 'STATUS', 'DETAIL'],
            checks.map((c) => [c.name, c.status, c.detail]),
          ),
        );
      return doctorFailed(checks) ? EXIT.OTHER : EXIT.OK;
    }
  }
}

async function sourceOf(
  source: Extract<Command, { name: 'attach' }>['source'],
  io: CliIo,
): Promise<AttachSourceRequest> {
  if (source.type === 'hostDevice') return source;
  const { keyFile, ...rest }: RbdSourceArgs = source;
  return { ...rest, key: await readKey(keyFile, io.stdin) };
}

/** The cephx key from a file or stdin ("-"); its content never appears in an error message. */
export async function readKey(path: string, stdin: Readable): Promise<string> {
  const text = path === '-' ? await readStdin(stdin) : await readKeyFile(path);
  const key = text.trim();
  if (key.length === 0) throw new KeyFileError(`${path === '-' ? 'stdin' : path}: holds no key`);
  if (/\s/.test(key))
    throw new KeyFileError(`${path === '-' ? 'stdin' : path}: must hold only the base64 key`);
  return key;
}

async function readKeyFile(path: string): Promise<string> {
  let fh: Awaited<ReturnType<typeof open>> | undefined;
  try {
    fh = await open(path, 'r');
    const st = await fh.stat();
    if (!st.isFile()) throw new KeyFileError(`--key-file ${path}: not a regular file`);
    if (st.size > KEY_MAX_BYTES)
      throw new KeyFileError(`--key-file ${path}: larger than ${KEY_MAX_BYTES} bytes`);
    return await fh.readFile({ encoding: 'utf8', signal: AbortSignal.timeout(KEY_READ_TIMEOUT_MS) });
  } catch (err) {
    if (err instanceof KeyFileError) throw err;
    throw new KeyFileError(
      `--key-file ${path}: cannot read (${(err as NodeJS.ErrnoException).code ?? 'error'})`,
    );
  } finally {
    await fh?.close().catch(() => {});
  }
}

function readStdin(stdin: Readable): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(
      () => finish(new KeyFileError(`--key-file -: no key on stdin within ${KEY_READ_TIMEOUT_MS} ms`)),
      KEY_READ_TIMEOUT_MS,
    );
    const onData = (c: Buffer | string): void => {
      const b = typeof c === 'string' ? Buffer.from(c) : c;
      size += b.length;
      if (size > KEY_MAX_BYTES)
        finish(new KeyFileError(`--key-file -: more than ${KEY_MAX_BYTES} bytes on stdin`));
      else chunks.push(b);
    };
    const onEnd = (): void => finish();
    const onError = (): void => finish(new KeyFileError('--key-file -: cannot read stdin'));
    function finish(err?: Error): void {
      clearTimeout(timer);
      stdin.off('data', onData);
      stdin.off('end', onEnd);
      stdin.off('error', onError);
      stdin.pause();
      if (err !== undefined) reject(err);
      else resolve(Buffer.concat(chunks).toString('utf8'));
    }
    stdin.on('data', onData);
    stdin.once('end', onEnd);
    stdin.once('error', onError);
  });
}

function errorText(err: unknown, json: boolean): string {
  if (json) {
    const body: Record<string, unknown> =
      err instanceof VmplugApiError
        ? {
            status: err.status,
            code: err.code,
            detail: err.message,
            field: err.field,
            requestId: err.requestId,
          }
        : err instanceof VmplugTransportError || err instanceof UsageError || err instanceof KeyFileError
          ? { code: err.code, detail: err.message }
          : { code: 'INTERNAL', detail: (err as Error)?.message ?? String(err) };
    body.retryable = exitCodeFor(err) === EXIT.RETRY;
    return `${JSON.stringify(body)}\n`;
  }
  if (err instanceof VmplugApiError) {
    const extra = [
      err.code,
      err.field !== undefined ? `field ${err.field}` : undefined,
      err.requestId && `request ${err.requestId}`,
    ]
      .filter((x) => x !== undefined)
      .join(', ');
    return `vmplug: ${err.message} (${extra})\n`;
  }
  if (err instanceof UsageError || err instanceof KeyFileError || err instanceof VmplugTransportError) {
    return `vmplug: ${err.message}\n`;
  }
  return `vmplug: internal error: ${(err as Error)?.stack ?? String(err)}\n`;
}
