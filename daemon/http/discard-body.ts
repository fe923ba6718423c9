import type { IncomingMessage } from 'node:http';

// A body refused as too large must still be read to its end before the answer goes out: a unix
// (or TCP) socket closed with unread bytes in its receive buffer resets the peer, and a client
// still writing its body then sees ECONNRESET / EPIPE instead of the 413. So the rest is read and
// thrown away, bounded in bytes and time (a hostile client could send forever); past either bound
// the connection is cut as before.

export interface DiscardLimits {
  /** Bytes read and discarded at most (beyond the limit already read). */
  maxBytes: number;
  /** How long to keep reading at most. */
  timeoutMs: number;
}

export const DEFAULT_DISCARD_LIMITS: DiscardLimits = { maxBytes: 64 * 1024 * 1024, timeoutMs: 10_000 };

export type DiscardOutcome = 'drained' | 'too-much' | 'timeout' | 'closed';

/** Reads `req` to its end, discarding the bytes; resolves how it stopped. Never rejects. */
export function discardBody(
  req: IncomingMessage,
  limits: DiscardLimits = DEFAULT_DISCARD_LIMITS,
): Promise<DiscardOutcome> {
  if (req.readableEnded || req.complete) return Promise.resolve('drained');
  if (req.destroyed) return Promise.resolve('closed');
  return new Promise((resolve) => {
    let seen = 0;
    const finish = (outcome: DiscardOutcome): void => {
      clearTimeout(timer);
      req.removeListener('data', onData);
      req.removeListener('end', onEnd);
      req.removeListener('error', onClose);
      req.removeListener('close', onClose);
      if (outcome !== 'drained') req.pause();
      resolve(outcome);
    };
    const onData = (chunk: Buffer | string): void => {
      seen += chunk.length;
      if (seen > limits.maxBytes) finish('too-much');
    };
    const onEnd = (): void => finish('drained');
    const onClose = (): void => finish(req.complete ? 'drained' : 'closed');
    const timer = setTimeout(() => finish('timeout'), limits.timeoutMs);
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('error', onClose);
    req.once('close', onClose);
    req.resume();
  });
}
