import type { CallOptions } from './deadline.js';
import type { QmpEventSource } from './events.js';

/**
 * What the storage and net engines drive: the one-shot QmpClient and the reconnecting
 * QmpSession both implement it.
 */
export interface QmpExecutor extends QmpEventSource {
  /**
   * Sends `command` and resolves with its `return` value. Rejects with QmpCommandError for a QMP
   * error reply, QmpTimeoutError / QmpAbortedError (the command may still run in QEMU), or
   * QmpClosedError when the connection drops first.
   */
  execute<T = unknown>(command: string, args?: object, opts?: CallOptions): Promise<T>;
}
