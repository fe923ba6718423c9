// The logging every component of vmplugd takes: pino's leveled shape without depending on pino
// (a pino Logger, fastify's request.log and the tests' recorders all fit).

/** The levels a background component (discovery, the Kubernetes reporter, systemd notify) uses. */
export interface LeveledLog {
  debug(obj: Record<string, unknown>, msg: string): void;
  info(obj: Record<string, unknown>, msg: string): void;
  warn(obj: Record<string, unknown>, msg: string): void;
}
