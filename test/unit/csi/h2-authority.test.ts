// vmplug-csi's sockets and the `:authority` that gRPC-Go clients before kubelet 1.26 send: the
// socket's path, which Node's HTTP/2 server refuses (PROTOCOL_ERROR) unless it is mended
// (csi/h2-authority.ts). Real gRPC calls over real unix sockets, plus the pure parts.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { bindUnix, rawMethod } from '../../../csi/grpc-proxy.js';
import { AuthorityMender, mendAuthority } from '../../../csi/h2-authority.js';
import { huffmanDecode, huffmanEncode } from '../../../csi/hpack-huffman.js';

const identity = (b: Buffer): Buffer => b;
const bytes = (s: string) => [...Buffer.from(s)];

describe('HPACK Huffman code (RFC 7541 C.4)', () => {
  const examples: [string, string][] = [
    ['www.example.com', 'f1e3c2e5f23a6ba0ab90f4ff'],
    ['no-cache', 'a8eb10649cbf'],
    ['custom-key', '25a849e95ba97d7f'],
    ['custom-value', '25a849e95bb8e8b4bf'],
    ['private', 'aec3771a4b'],
    ['Mon, 21 Oct 2013 20:13:21 GMT', 'd07abe941054d444a8200595040b8166e082a62d1bff'],
    ['https://www.example.com', '9d29ad171863c78f0b97c8e9ae82ae43d3'],
  ];
  it.each(examples)('%s', (text, hex) => {
    expect(huffmanEncode(bytes(text)).toString('hex')).toBe(hex);
    expect(Buffer.from(huffmanDecode(Buffer.from(hex, 'hex')) ?? []).toString()).toBe(text);
  });
  it('refuses bad padding and EOS', () => {
    expect(huffmanDecode(Buffer.from([0x00]))).toBeUndefined();
    expect(huffmanDecode(Buffer.from([0xff, 0xff, 0xff, 0xff]))).toBeUndefined();
  });
});

describe('mendAuthority', () => {
  const path = '/var/lib/kubelet/plugins_registry/rbd.csi.ceph.com-reg.sock';
  const huff = (s: string) => {
    const h = huffmanEncode(bytes(s));
    return Buffer.concat([Buffer.from([0x80 | h.length]), h]);
  };
  it('mends a Huffman literal of :authority (static name index 1), same length, nothing else', () => {
    // :method POST (indexed 3), literal :authority with indexing, literal user-agent.
    const block = Buffer.concat([
      Buffer.from([0x83, 0x41]),
      huff(path),
      Buffer.from([0x7a]),
      huff('grpc-go/1.27'),
    ]);
    const out = mendAuthority(block);
    expect(out.length).toBe(block.length);
    const value = out.subarray(2, 2 + huff(path).length);
    expect(Buffer.from(huffmanDecode(value.subarray(1)) ?? []).toString()).toBe(path.replaceAll('/', '-'));
    expect(out.subarray(2 + huff(path).length).equals(block.subarray(2 + huff(path).length))).toBe(true);
  });
  it('mends a plain literal with a literal name; leaves valid authorities and other headers alone', () => {
    const name = Buffer.from(':authority');
    const block = Buffer.concat([
      Buffer.from([0x00, name.length]),
      name,
      Buffer.from([5]),
      Buffer.from('/a/b.'),
      Buffer.from([0x41, 9]),
      Buffer.from('localhost'),
      Buffer.from([0x44, 3]),
      Buffer.from('/x/'),
    ]);
    const out = mendAuthority(block);
    expect(out.toString('latin1')).toBe(block.toString('latin1').replace('/a/b.', '-a-b.'));
  });
  it('passes what it cannot parse unchanged', () => {
    const junk = Buffer.from([0x41, 0xff]);
    expect(mendAuthority(junk).equals(junk)).toBe(true);
  });
});

describe('AuthorityMender', () => {
  it('gives the same bytes however the stream is chunked', () => {
    const preface = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
    const h = huffmanEncode(bytes('/tmp/x.sock'));
    const block = Buffer.concat([Buffer.from([0x83, 0x41, 0x80 | h.length]), h]);
    // HEADERS without END_HEADERS (padded), then a CONTINUATION that ends it, then DATA.
    const split = 3;
    const headers = Buffer.concat([
      Buffer.from([0, 0, 1 + split + 2, 0x1, 0x8, 0, 0, 0, 1, 2]),
      block.subarray(0, split),
      Buffer.alloc(2),
    ]);
    const cont = Buffer.concat([
      Buffer.from([0, 0, block.length - split, 0x9, 0x4, 0, 0, 0, 1]),
      block.subarray(split),
    ]);
    const data = Buffer.from([0, 0, 2, 0x0, 0x1, 0, 0, 0, 1, 7, 7]);
    const stream = Buffer.concat([preface, headers, cont, data]);
    const whole = Buffer.concat(new AuthorityMender().push(stream));
    const m = new AuthorityMender();
    const byByte = Buffer.concat([...stream].flatMap((b) => m.push(Buffer.from([b]))));
    expect(byByte.equals(whole)).toBe(true);
    expect(whole.length).toBe(stream.length);
    expect(whole.includes(Buffer.from([7, 7]))).toBe(true);
    const mended = Buffer.concat([
      whole.subarray(34, 34 + split),
      whole.subarray(34 + split + 2 + 9, 34 + split + 2 + 9 + block.length - split),
    ]);
    expect(Buffer.from(huffmanDecode(mended.subarray(3)) ?? []).toString()).toBe('-tmp-x.sock');
  });
});

describe('a gRPC server on bindUnix', () => {
  let dir = '';
  afterEach(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const echoServer = () => {
    const server = new grpc.Server();
    server.addService(
      { Echo: rawMethod('/t.T/Echo') },
      {
        Echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) =>
          cb(null, call.request),
      },
    );
    return server;
  };
  // What gRPC-Go does when dialing a unix socket by path with the passthrough resolver.
  const pathAuthorityClient = (sock: string) =>
    new grpc.Client(`unix:${sock}`, grpc.credentials.createInsecure(), { 'grpc.default_authority': sock });
  const echo = (client: grpc.Client, i: number, md = new grpc.Metadata()) =>
    new Promise<Buffer>((resolve, reject) =>
      client.makeUnaryRequest('/t.T/Echo', identity, identity, Buffer.from([i % 256]), md, (err, res) =>
        err ? reject(err) : resolve(res!),
      ),
    );

  it("is needed: grpc-js's own binding resets such a client's calls", async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmplug-h2-'));
    const sock = join(dir, 'plain.sock');
    const server = echoServer();
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix:${sock}`, grpc.ServerCredentials.createInsecure(), (err) =>
        err ? reject(err) : resolve(),
      ),
    );
    const client = pathAuthorityClient(sock);
    try {
      const err = (await echo(client, 1).catch((e: grpc.ServiceError) => e)) as grpc.ServiceError;
      expect(err.code).toBe(grpc.status.INTERNAL);
      expect(err.details).toContain('RST_STREAM with code 1'); // 1 = PROTOCOL_ERROR
    } finally {
      client.close();
      server.forceShutdown();
    }
  });

  it("answers a client that sends the socket's path as :authority, call after call", async () => {
    dir = await mkdtemp(join(tmpdir(), 'vmplug-h2-'));
    const sock = join(dir, 'plugin-reg.sock');
    const server = echoServer();
    const listener = await bindUnix(server, sock);
    const client = pathAuthorityClient(sock);
    try {
      // Enough calls with changing metadata to churn the HPACK dynamic table past evictions.
      for (let i = 0; i < 300; i++) {
        const md = new grpc.Metadata();
        md.set('x-call', `${i}-${'v'.repeat(i % 40)}`);
        expect((await echo(client, i, md))[0]).toBe(i % 256);
      }
    } finally {
      client.close();
      server.forceShutdown();
      await listener.close();
    }
  });
});
