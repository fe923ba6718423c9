import { describe, expect, it } from 'vitest';
import { clientErrorResponse } from '../../../daemon/http/client-error.js';

// Requests node's HTTP parser refuses get problem+json too (found by the API fuzz: an OPTIONS
// with a chunked body got fastify's plain-JSON "Client Error").

describe('HTTP parse errors', () => {
  it.each([
    ['HPE_INVALID_METHOD', 400],
    ['HPE_HEADER_OVERFLOW', 431],
    ['ERR_HTTP_REQUEST_TIMEOUT', 408],
  ])('%s gets a %i problem+json and closes the connection', (code, status) => {
    const raw = clientErrorResponse(Object.assign(new Error('x'), { code }));
    const [head, body] = raw.split('\r\n\r\n') as [string, string];
    expect(head).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
    expect(head).toContain('Content-Type: application/problem+json');
    expect(head).toContain('Connection: close');
    expect(head).toContain(`Content-Length: ${Buffer.byteLength(body)}`);
    expect(JSON.parse(body)).toMatchObject({ status, code: 'INVALID_REQUEST' });
  });

  it('sends no body to a HEAD request', () => {
    const err = Object.assign(new Error('x'), {
      code: 'HPE_INVALID_CHARACTER',
      rawPacket: Buffer.from('HEAD /\xe9 HTTP/1.1\r\n'),
    });
    expect(clientErrorResponse(err).endsWith('\r\n\r\n')).toBe(true);
  });
});
