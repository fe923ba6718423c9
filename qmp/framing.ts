import { QmpProtocolError } from './errors.js';

const LF = 0x0a;

/**
 * Splits the QMP byte stream into JSON messages. QEMU ends every message with "\r\n" and never
 * puts a raw newline inside one (JSON escapes it), so a newline is a message boundary.
 *
 * Cost stays linear in the bytes received: each byte is scanned for a newline once (bytes kept
 * from earlier chunks hold no newline by construction), and a message spread over many chunks
 * is joined with one Buffer.concat when its end arrives, then decoded once (so a UTF-8 sequence
 * split between chunks decodes correctly).
 */
export class MessageSplitter {
  private parts: Buffer[] = [];
  private partsBytes = 0;

  constructor(
    private readonly onMessage: (message: unknown) => void,
    private readonly maxMessageBytes: number = 64 * 1024 * 1024,
  ) {}

  /** Feeds one chunk; throws QmpProtocolError on malformed JSON or an oversized message. */
  push(chunk: Buffer): void {
    let start = 0;
    let nl = chunk.indexOf(LF, start);
    while (nl !== -1) {
      if (this.parts.length === 0) {
        this.emit(chunk.toString('utf8', start, nl));
      } else {
        this.parts.push(chunk.subarray(start, nl));
        const whole = Buffer.concat(this.parts, this.partsBytes + nl - start);
        this.parts = [];
        this.partsBytes = 0;
        this.emit(whole.toString('utf8'));
      }
      start = nl + 1;
      nl = chunk.indexOf(LF, start);
    }
    if (start < chunk.length) {
      this.partsBytes += chunk.length - start;
      if (this.partsBytes > this.maxMessageBytes) {
        throw new QmpProtocolError(`QMP message larger than ${this.maxMessageBytes} bytes`);
      }
      this.parts.push(start === 0 ? chunk : chunk.subarray(start));
    }
  }

  /** Bytes of an unfinished message held back. */
  get pendingBytes(): number {
    return this.partsBytes;
  }

  private emit(text: string): void {
    // Blank lines carry nothing ("\r" alone after a split "\r\n" boundary, or keep-alive noise).
    if (isBlank(text)) return;
    let message: unknown;
    try {
      message = JSON.parse(text);
    } catch {
      // The parser's message quotes the text; keep peer bytes out of errors and logs.
      throw new QmpProtocolError(`QMP peer sent a line of ${text.length} characters that is not JSON`);
    }
    this.onMessage(message);
  }
}

function isBlank(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c !== 0x20 && c !== 0x0d && c !== 0x09) return false;
  }
  return true;
}
