import { createLogger } from '../logger.js';
import { buildServer } from './server.js';

// The REST API's OpenAPI document, generated from the route schemas (the contract). The same text
// is served at /openapi.json, printed by `vmplugd --print-openapi` and kept in docs/openapi.json
// (`npm run openapi`; a unit test fails when that copy is stale).

export async function openApiDocument(version: string): Promise<Record<string, unknown>> {
  const app = await buildServer({
    logger: createLogger({ level: 'silent' }),
    attachService: {
      attach: unused,
      detach: unused,
      get: unused,
      resize: unused,
    },
    readiness: () => ({ ready: false, checks: {} }),
    version,
  });
  try {
    await app.ready();
    return app.swagger() as unknown as Record<string, unknown>;
  } finally {
    await app.close();
  }
}

/** The document as written to docs/openapi.json: stable key order from the schemas, 2-space JSON. */
export async function openApiText(version: string): Promise<string> {
  return `${JSON.stringify(await openApiDocument(version), null, 2)}\n`;
}

async function unused(): Promise<never> {
  throw new Error('not called: the server is only built for its schemas');
}
