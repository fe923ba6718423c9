import { describe, expect, it } from 'vitest';
import { QmpProtocolError } from '../../../qmp/errors.js';
import { MessageSplitter } from '../../../qmp/framing.js';
import { QEMU_72_GREETING } from '../fakes/qmp-server.js';

// Bytes as captured from QEMU 7.2 (greeting, a reply, an error, an event), "\r\n" included.
const CAPTURED = Buffer.from(
  `${QEMU_72_GREETING}{"return": {}, "id": 1}\r\n` +
    '{"id": 3, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}\r\n' +
    '{"timestamp": {"seconds": 1795375233, "microseconds": 361800}, "event": "STOP"}\r\n',
);

function collect(): { out: unknown[]; splitter: MessageSplitter } {
  const out: unknown[] = [];
  return { out, splitter: new MessageSplitter((m) => out.push(m)) };
}

describe('MessageSplitter', () => {
  it('splits many messages in one chunk', () => {
    const { out, splitter } = collect();
    splitter.push(CAPTURED);
    expect(out).toHaveLength(4);
    expect(out[1]).toEqual({ return: {}, id: 1 });
    expect(out[3]).toMatchObject({ event: 'STOP' });
    expect(splitter.pendingBytes).toBe(0);
  });

  it('gives the same messages at every split point and byte by byte', () => {
    const { out: expected, splitter: whole } = collect();
    whole.push(CAPTURED);
    for (let cut = 1; cut < CAPTURED.length; cut++) {
      const { out, splitter } = collect();
      splitter.push(CAPTURED.subarray(0, cut));
      splitter.push(CAPTURED.subarray(cut));
      expect(out).toEqual(expected);
    }
    const { out, splitter } = collect();
    for (let i = 0; i < CAPTURED.length; i++) splitter.push(CAPTURED.subarray(i, i + 1));
    expect(out).toEqual(expected);
  });

  it('decodes a UTF-8 character split across chunks', () => {
    const bytes = Buffer.from('{"return": "vmplug \u00e9\u2603\ud83d\ude00", "id": 2}\r\n');
    for (let cut = 1; cut < bytes.length; cut++) {
      const { out, splitter } = collect();
      splitter.push(bytes.subarray(0, cut));
      splitter.push(bytes.subarray(cut));
      expect(out).toEqual([{ return: 'vmplug \u00e9\u2603\ud83d\ude00', id: 2 }]);
    }
  });

  it('joins a multi-MB reply that arrives in 64 KiB chunks', () => {
    const big = {
      return: Array.from({ length: 60_000 }, (_, i) => ({
        name: `type-${i}-xxxxxxxxxxxx`,
        'meta-type': 'object',
        members: [],
      })),
      id: 9,
    };
    const bytes = Buffer.from(`${JSON.stringify(big)}\r\n{"return": {}, "id": 10}\r\n`);
    expect(bytes.length).toBeGreaterThan(2 * 1024 * 1024);
    const { out, splitter } = collect();
    const started = performance.now();
    for (let i = 0; i < bytes.length; i += 65_536) splitter.push(bytes.subarray(i, i + 65_536));
    const ms = performance.now() - started;
    expect(out).toHaveLength(2);
    expect((out[0] as typeof big).return).toHaveLength(60_000);
    expect(out[1]).toEqual({ return: {}, id: 10 });
    // Linear work: a quadratic join of ~40 chunks would still pass, but not by this margin.
    expect(ms).toBeLessThan(1_000);
  });

  it('skips blank lines', () => {
    const { out, splitter } = collect();
    splitter.push(Buffer.from('\r\n\n  \r\n{"return": {}, "id": 1}\r\n'));
    expect(out).toEqual([{ return: {}, id: 1 }]);
  });

  it('rejects a line that is not JSON without quoting it', () => {
    const { splitter } = collect();
    const err = (() => {
      try {
        splitter.push(Buffer.from('not json secret-ish\r\n'));
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(QmpProtocolError);
    expect((err as QmpProtocolError).code).toBe('QMP_PROTOCOL');
    expect((err as Error).message).not.toContain('secret');
  });

  it('bounds an unterminated message', () => {
    const splitter = new MessageSplitter(() => {}, 1024);
    splitter.push(Buffer.alloc(1000, 0x20));
    expect(() => splitter.push(Buffer.alloc(100, 0x20))).toThrow(QmpProtocolError);
  });
});
