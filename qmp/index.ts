export { type BackoffOptions, backoffDelay } from './backoff.js';
export {
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_GREETING_TIMEOUT_MS,
  QmpClient,
  type QmpConnectOptions,
} from './client.js';
export * from './commands.js';
export { type CallOptions, untilAborted } from './deadline.js';
export * from './errors.js';
export {
  deviceIs,
  type EventData,
  EventHub,
  type EventListener,
  type QmpEventMap,
  type QmpEventSource,
  type QmpEventWaiter,
  type ShutdownCause,
  type Unsubscribe,
  type WaitForOptions,
} from './events.js';
export type { QmpExecutor } from './executor.js';
export { MessageSplitter } from './framing.js';
export {
  type InDoubt,
  type LateAnswer,
  lateAnswerOf,
  MAX_LATE_ANSWERS,
  withLateAnswer,
} from './late-answers.js';
export type {
  QmpErrorReply,
  QmpEvent,
  QmpGreeting,
  QmpId,
  QmpReturn,
  QmpTimestamp,
  QmpVersion,
} from './messages.js';
export { QmpProtocol, type QmpProtocolOptions } from './protocol.js';
export {
  QmpSession,
  type QmpSessionOptions,
  type QmpSessionState,
  type QmpSessionStateChange,
} from './session.js';
export type * from './types.js';
