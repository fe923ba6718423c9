import { describe, expect, it } from 'vitest';
import { ID_MAX_LENGTH, ID_PATTERN } from '../../../api/index.js';
import { ID_MAX_LENGTH as CORE_ID_MAX_LENGTH, idProblem } from '../../../core/ids.js';

// api/ is a leaf and cannot import core/, so the id bound is written in both; these pin them equal
// and the schema's pattern to core's parser.

describe('api id rule', () => {
  it('has the same length bound as core/ids.ts', () => {
    expect(ID_MAX_LENGTH).toBe(CORE_ID_MAX_LENGTH);
  });

  it.each([
    'a',
    'a'.repeat(ID_MAX_LENGTH),
    'a'.repeat(ID_MAX_LENGTH + 1),
    'pvc-8f0c7a3e-3c1d-4a8e-9d0b-1d2e3f4a5b6c',
    'web.example_domain-1',
    '.hidden',
    '-dash',
    'a..b',
    'a/b',
    '',
  ])('the schema pattern and core agree on %s', (id) => {
    expect(new RegExp(ID_PATTERN).test(id)).toBe(idProblem(id) === undefined);
  });
});
