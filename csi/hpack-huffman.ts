// HPACK's Huffman code (RFC 7541 Appendix B), for the one header vmplug-csi must mend
// (h2-authority.ts). The code is canonical (codes assigned in order of length, then symbol), so
// the table is stated as its code lengths only and the codes are derived from them; unit tests pin
// it with the RFC's own examples (Appendix C.4). Pure, no I/O.

/** Code length in bits of symbols 0..255 and of EOS (256), RFC 7541 Appendix B. */
const LENGTHS = [
  13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28,
  28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7,
  8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19,
  13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13,
  28, 20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21,
  22, 23, 22, 23, 23, 24, 22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23,
  22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
  19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25,
  25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
] as const;

const EOS = 256;

/** Symbol -> code, by canonical assignment over (length, symbol). */
const CODES: number[] = (() => {
  const order = LENGTHS.map((_, s) => s).sort((a, b) => LENGTHS[a]! - LENGTHS[b]! || a - b);
  const codes = new Array<number>(LENGTHS.length).fill(0);
  let code = 0;
  let prev = LENGTHS[order[0]!]!;
  order.forEach((s, i) => {
    const len = LENGTHS[s]!;
    if (i > 0) code = (code + 1) * 2 ** (len - prev);
    prev = len;
    codes[s] = code;
  });
  return codes;
})();

/** (length << 32 | code) -> symbol, for decoding bit by bit. */
const BY_CODE = new Map<number, number>(CODES.map((c, s) => [LENGTHS[s]! * 2 ** 32 + c, s]));

export function codeLength(symbol: number): number {
  return LENGTHS[symbol] ?? 0;
}

/** The octets a Huffman string decodes to, or undefined when it is not a valid encoding. */
export function huffmanDecode(input: Buffer): number[] | undefined {
  const out: number[] = [];
  let code = 0;
  let len = 0;
  for (const byte of input) {
    for (let bit = 7; bit >= 0; bit--) {
      code = code * 2 + ((byte >> bit) & 1);
      len++;
      const symbol = BY_CODE.get(len * 2 ** 32 + code);
      if (symbol !== undefined) {
        if (symbol === EOS) return undefined;
        out.push(symbol);
        code = 0;
        len = 0;
      } else if (len > 30) {
        return undefined;
      }
    }
  }
  // Padding: fewer than 8 bits, all ones (the EOS prefix).
  if (len > 7 || code !== 2 ** len - 1) return undefined;
  return out;
}

export function huffmanEncode(symbols: readonly number[]): Buffer {
  const bytes: number[] = [];
  let acc = 0;
  let bits = 0;
  for (const s of symbols) {
    const len = LENGTHS[s]!;
    const code = CODES[s]!;
    for (let i = len - 1; i >= 0; i--) {
      acc = (acc << 1) | (Math.floor(code / 2 ** i) & 1);
      if (++bits === 8) {
        bytes.push(acc);
        acc = 0;
        bits = 0;
      }
    }
  }
  if (bits > 0) bytes.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) & 0xff);
  return Buffer.from(bytes);
}
