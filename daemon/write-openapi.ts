import { writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openApiText } from './http/openapi.js';
import { packageVersion } from './main.js';

// `npm run openapi`: regenerates docs/openapi.json from the route schemas.

const target = join(dirname(fileURLToPath(import.meta.url)), '..', 'docs', 'openapi.json');
await writeFile(target, await openApiText(await packageVersion()));
process.stdout.write(`wrote ${target}\n`);
