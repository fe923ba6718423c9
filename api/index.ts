// vmplugd's REST API contract, written once: the route JSON schemas (the source of /openapi.json)
// and the wire types derived from or checked against them. A leaf: imports nothing of vmplug's,
// so the CLI and the typed client use it without pulling in server code.

export * from './common.js';
export * from './nics.js';
export * from './pods.js';
export * from './resources.js';
export * from './sandboxes.js';
export type { FromSchema } from './schema-type.js';
export * from './volumes.js';
