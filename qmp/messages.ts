// Shapes of what QEMU sends on a QMP socket, and a classifier that does the minimum checking
// needed to route a message (it runs for every message, so it looks at keys only).

export interface QmpVersion {
  qemu: { major: number; minor: number; micro: number };
  package: string;
}

export interface QmpGreeting {
  QMP: { version: QmpVersion; capabilities: string[] };
}

export interface QmpTimestamp {
  seconds: number;
  microseconds: number;
}

export interface QmpEvent<D = Record<string, unknown>> {
  event: string;
  /** Absent for events without data (STOP, RESUME). */
  data?: D;
  timestamp: QmpTimestamp;
}

export type QmpId = number | string;

export interface QmpReturn {
  return: unknown;
  id?: QmpId;
}

export interface QmpErrorReply {
  error: { class: string; desc: string };
  id?: QmpId;
}

export type QmpIncoming =
  | { kind: 'greeting'; message: QmpGreeting }
  | { kind: 'event'; message: QmpEvent }
  | { kind: 'return'; message: QmpReturn }
  | { kind: 'error'; message: QmpErrorReply }
  | { kind: 'unknown'; message: unknown };

export function classify(message: unknown): QmpIncoming {
  if (typeof message !== 'object' || message === null || Array.isArray(message)) {
    return { kind: 'unknown', message };
  }
  if ('return' in message) return { kind: 'return', message: message as QmpReturn };
  if ('error' in message) {
    const e = (message as { error: unknown }).error;
    if (typeof e === 'object' && e !== null) return { kind: 'error', message: message as QmpErrorReply };
    return { kind: 'unknown', message };
  }
  if ('event' in message && typeof message.event === 'string') {
    return { kind: 'event', message: message as QmpEvent };
  }
  if ('QMP' in message) return { kind: 'greeting', message: message as QmpGreeting };
  return { kind: 'unknown', message };
}
