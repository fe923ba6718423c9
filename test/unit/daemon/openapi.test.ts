import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { openApiText } from '../../../daemon/http/openapi.js';
import { packageVersion } from '../../../daemon/main.js';

describe('docs/openapi.json', () => {
  it('matches the route schemas (run `npm run openapi` after changing a route)', async () => {
    const committed = await readFile(new URL('../../../docs/openapi.json', import.meta.url), 'utf8');
    const generated = await openApiText(await packageVersion());
    expect(committed, 'docs/openapi.json is stale: run `npm run openapi`').toBe(generated);
  });
});
