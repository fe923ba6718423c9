import { type DestinationStream, type Logger, type LoggerOptions, pino } from 'pino';

export type { Logger } from 'pino';

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

// A cephx key must never reach a log line. The attach engine carries keys as a redacting Secret,
// and request bodies are never logged; these paths are a second line of defence should a body or
// source object be logged by mistake.
const REDACT_PATHS = [
  'key',
  '*.key',
  'source.key',
  '*.source.key',
  'body.source.key',
  'req.body',
  'req.headers.authorization',
  'req.headers.cookie',
];

export interface LoggerSettings {
  level: LogLevel;
  /** Where JSON lines go; stdout when absent (the daemon's contract, DESIGN section 6). */
  destination?: DestinationStream;
  /** Fields on every line (e.g. the node name). */
  base?: Record<string, unknown>;
}

export function createLogger(settings: LoggerSettings): Logger {
  const options: LoggerOptions = {
    level: settings.level,
    base: { pid: process.pid, ...settings.base },
    timestamp: pino.stdTimeFunctions.isoTime,
    // Level names, not numbers: operators grep and alert on them.
    formatters: { level: (label) => ({ level: label }) },
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
  };
  return settings.destination === undefined ? pino(options) : pino(options, settings.destination);
}
