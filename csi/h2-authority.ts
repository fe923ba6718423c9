// Why this exists: gRPC-Go clients before 1.4x (kubelet before 1.26, the node-driver-registrar and
// csi-sanity of those years) dial a unix socket by its path and send that path as the HTTP/2
// `:authority` ("/var/lib/kubelet/plugins_registry/x-reg.sock"). Node's HTTP/2 server (nghttp2)
// checks `:authority` against RFC 3986 and resets every such stream with PROTOCOL_ERROR, so
// kubelet 1.20 could neither register vmplug-csi nor call it (seen on the test node, kubelet
// log: "failed to get plugin info using RPC GetInfo ... RST_STREAM with error code:
// PROTOCOL_ERROR"). Node has no option to relax the check.
//
// The mend, on the bytes a client sends before the HTTP/2 server parses them: in each request
// header block, a literal `:authority` value has every character an authority may not hold
// replaced by one that it may and whose Huffman code has the same length ('/' -> '-'), so the
// encoded string, the frame and the HPACK dynamic table entry keep their sizes and the client's
// and the server's tables stay in step. Nothing else is touched; anything this code does not
// understand passes unchanged (the server then judges it as before). Pure: no I/O here.
import { codeLength, huffmanDecode, huffmanEncode } from './hpack-huffman.js';

const PREFACE_LENGTH = 24; // "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
const FRAME_HEADER = 9;
const HEADERS = 0x1;
const CONTINUATION = 0x9;
const END_HEADERS = 0x4;
const PADDED = 0x8;
const PRIORITY = 0x20;
/** A header block held past this (while waiting for its CONTINUATIONs) is passed on unmended. */
const MAX_HELD = 256 * 1024;

/** nghttp2's authority characters: RFC 3986 unreserved, sub-delims, ':', '@', '[', ']', '%'. */
const ALLOWED = new Set(
  [..."ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@[]%"].map((c) =>
    c.charCodeAt(0),
  ),
);

/** An allowed octet with the same Huffman code length as `symbol` ('-' first), or undefined. */
const SAME_LENGTH = (() => {
  const byLength = new Map<number, number>();
  for (const s of [0x2d, ...ALLOWED]) if (!byLength.has(codeLength(s))) byLength.set(codeLength(s), s);
  return (symbol: number) => byLength.get(codeLength(symbol));
})();

interface Int {
  value: number;
  next: number;
}

/** An HPACK integer with an N-bit prefix at `pos` (RFC 7541 5.1), or undefined past the end. */
function readInt(block: Buffer, pos: number, prefixBits: number): Int | undefined {
  if (pos >= block.length) return undefined;
  const max = (1 << prefixBits) - 1;
  let value = block[pos]! & max;
  let next = pos + 1;
  if (value < max) return { value, next };
  let shift = 0;
  for (;;) {
    if (next >= block.length || shift > 28) return undefined;
    const b = block[next++]!;
    value += (b & 0x7f) * 2 ** shift;
    shift += 7;
    if ((b & 0x80) === 0) return { value, next };
  }
}

interface Str {
  huffman: boolean;
  start: number;
  end: number;
}

function readString(block: Buffer, pos: number): Str | undefined {
  const len = readInt(block, pos, 7);
  if (len === undefined || len.next + len.value > block.length) return undefined;
  return { huffman: (block[pos]! & 0x80) !== 0, start: len.next, end: len.next + len.value };
}

function decodedString(block: Buffer, s: Str): number[] | undefined {
  const raw = block.subarray(s.start, s.end);
  return s.huffman ? huffmanDecode(raw) : [...raw];
}

/** Mends one `:authority` value in place (left as it was when it cannot keep its length). */
function mendValue(block: Buffer, s: Str): void {
  const symbols = decodedString(block, s);
  if (symbols === undefined || symbols.every((c) => ALLOWED.has(c))) return;
  const mended = symbols.map((c) => (ALLOWED.has(c) ? c : (SAME_LENGTH(c) ?? c)));
  const encoded = s.huffman ? huffmanEncode(mended) : Buffer.from(mended);
  if (encoded.length === s.end - s.start) encoded.copy(block, s.start);
}

const AUTHORITY = [...':authority'].map((c) => c.charCodeAt(0));
const STATIC_AUTHORITY_INDEX = 1;

/**
 * The header block with each literal `:authority` value mended, same length. A representation
 * this cannot parse ends the walk: the rest passes as it is.
 */
export function mendAuthority(block: Buffer): Buffer {
  const out = Buffer.from(block);
  let pos = 0;
  while (pos < out.length) {
    const b = out[pos]!;
    let index: Int | undefined;
    if (b & 0x80) {
      // Indexed field: refers to a table entry (mended when it was added).
      index = readInt(out, pos, 7);
      if (index === undefined) break;
      pos = index.next;
      continue;
    }
    if ((b & 0xe0) === 0x20) {
      // Dynamic table size update.
      index = readInt(out, pos, 5);
      if (index === undefined) break;
      pos = index.next;
      continue;
    }
    // Literal, with incremental indexing (01) or without / never indexed (0000 / 0001).
    index = readInt(out, pos, (b & 0xc0) === 0x40 ? 6 : 4);
    if (index === undefined) break;
    pos = index.next;
    let isAuthority = index.value === STATIC_AUTHORITY_INDEX;
    if (index.value === 0) {
      const name = readString(out, pos);
      if (name === undefined) break;
      const n = decodedString(out, name);
      isAuthority = n !== undefined && n.length === AUTHORITY.length && n.every((c, i) => c === AUTHORITY[i]);
      pos = name.end;
    }
    const value = readString(out, pos);
    if (value === undefined) break;
    if (isAuthority) mendValue(out, value);
    pos = value.end;
  }
  return out;
}

/**
 * The client-to-server byte stream of one HTTP/2 connection, mended: `push` takes bytes as they
 * arrive and answers the bytes to hand to the server (whole frames; a header block once its last
 * CONTINUATION is in).
 */
export class AuthorityMender {
  #pending: Buffer = Buffer.alloc(0);
  #prefaceLeft = PREFACE_LENGTH;
  /** Frames of a header block whose END_HEADERS has not come yet. */
  #held: Buffer[] = [];
  #heldBytes = 0;
  /** Past something this does not follow: everything passes unchanged from here on. */
  #passThrough = false;

  push(chunk: Buffer): Buffer[] {
    if (this.#passThrough) return [chunk];
    const out: Buffer[] = [];
    let data = this.#pending.length > 0 ? Buffer.concat([this.#pending, chunk]) : chunk;
    if (this.#prefaceLeft > 0) {
      const n = Math.min(this.#prefaceLeft, data.length);
      out.push(data.subarray(0, n));
      this.#prefaceLeft -= n;
      data = data.subarray(n);
    }
    while (data.length >= FRAME_HEADER) {
      const size = FRAME_HEADER + data.readUIntBE(0, 3);
      if (data.length < size) break;
      out.push(...this.#frame(Buffer.from(data.subarray(0, size))));
      data = data.subarray(size);
    }
    this.#pending = Buffer.from(data);
    return out.filter((b) => b.length > 0);
  }

  #frame(frame: Buffer): Buffer[] {
    const type = frame[3];
    const flags = frame[4]!;
    if (type === HEADERS || (type === CONTINUATION && this.#held.length > 0)) {
      this.#held.push(frame);
      this.#heldBytes += frame.length;
      if (flags & END_HEADERS) return this.#release(true);
      if (this.#heldBytes > MAX_HELD) return this.#release(false);
      return [];
    }
    if (this.#held.length > 0) {
      // Not a CONTINUATION after an unfinished block: a protocol error the server will see.
      this.#passThrough = true;
      return [...this.#release(false), frame];
    }
    return [frame];
  }

  /** The held frames, their header block mended when `mend`, each frame keeping its size. */
  #release(mend: boolean): Buffer[] {
    const frames = this.#held;
    this.#held = [];
    this.#heldBytes = 0;
    if (!mend) return frames;
    const spans = frames.map((f) => fragmentSpan(f));
    if (spans.some((s) => s === undefined)) return frames;
    const block = mendAuthority(
      Buffer.concat(frames.map((f, i) => f.subarray(spans[i]!.start, spans[i]!.end))),
    );
    let at = 0;
    frames.forEach((f, i) => {
      const { start, end } = spans[i]!;
      block.copy(f, start, at, at + (end - start));
      at += end - start;
    });
    return frames;
  }
}

/** Where a HEADERS or CONTINUATION frame's header block fragment lies (padding and priority aside). */
function fragmentSpan(frame: Buffer): { start: number; end: number } | undefined {
  let start = FRAME_HEADER;
  let end = frame.length;
  if (frame[3] === HEADERS) {
    const flags = frame[4]!;
    if (flags & PADDED) {
      if (frame.length <= start) return undefined;
      end -= frame[start]!;
      start += 1;
    }
    if (flags & PRIORITY) start += 5;
  }
  return start <= end ? { start, end } : undefined;
}
