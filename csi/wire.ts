// Protocol-buffer wire format at the top level of one message: enough to drop, replace or add a
// field of a message while every other field (including fields of a newer CSI spec than the ones
// written in messages.ts, which protobufjs would drop on decode) is kept byte for byte.

/** One top-level field as it appears on the wire: its number, wire type and exact bytes. */
export interface WireField {
  readonly number: number;
  readonly wireType: number;
  /** The whole field: tag, (length) and value. */
  readonly bytes: Buffer;
  /** The value only (for wire type 2: the payload after the length). */
  readonly value: Buffer;
}

export class WireFormatError extends Error {
  override readonly name = 'WireFormatError';
}

function readVarint(buf: Buffer, pos: number): [value: number, next: number] {
  let value = 0;
  let shift = 0;
  for (let i = pos; i < buf.length && i < pos + 10; i++) {
    const b = buf[i]!;
    // Numbers past 2^53 only occur in int64 values we never read as numbers; lengths and tags are small.
    value += (b & 0x7f) * 2 ** shift;
    shift += 7;
    if ((b & 0x80) === 0) return [value, i + 1];
  }
  throw new WireFormatError(`truncated varint at byte ${pos}`);
}

export function encodeVarint(value: number): Buffer {
  const out: number[] = [];
  let v = value;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return Buffer.from(out);
}

/** Splits a message into its top-level fields, in wire order. */
export function splitFields(buf: Buffer): WireField[] {
  const fields: WireField[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const start = pos;
    const [tag, afterTag] = readVarint(buf, pos);
    const number = Math.floor(tag / 8);
    const wireType = tag % 8;
    if (number === 0) throw new WireFormatError(`field number 0 at byte ${start}`);
    let valueStart = afterTag;
    let end: number;
    switch (wireType) {
      case 0:
        end = readVarint(buf, afterTag)[1];
        break;
      case 1:
        end = afterTag + 8;
        break;
      case 2: {
        const [len, afterLen] = readVarint(buf, afterTag);
        valueStart = afterLen;
        end = afterLen + len;
        break;
      }
      case 5:
        end = afterTag + 4;
        break;
      default:
        // Groups (3, 4) are proto2 only; CSI is proto3.
        throw new WireFormatError(`unsupported wire type ${wireType} at byte ${start}`);
    }
    if (end > buf.length) throw new WireFormatError(`field ${number} runs past the end of the message`);
    fields.push({ number, wireType, bytes: buf.subarray(start, end), value: buf.subarray(valueStart, end) });
    pos = end;
  }
  return fields;
}

/** A length-delimited field (message, string, bytes, map entry). */
export function lengthDelimited(number: number, payload: Buffer): Buffer {
  return Buffer.concat([encodeVarint(number * 8 + 2), encodeVarint(payload.length), payload]);
}

export function joinFields(parts: readonly (WireField | Buffer)[]): Buffer {
  return Buffer.concat(parts.map((p) => (Buffer.isBuffer(p) ? p : p.bytes)));
}
