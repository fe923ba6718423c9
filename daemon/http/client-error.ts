import type { Socket } from 'node:net';
import { PROBLEM_CONTENT_TYPE, problem } from './problem.js';

// Requests node's HTTP parser refuses before fastify sees them (a malformed request line or
// header, a body on a method whose framing the parser rejects, headers too large, a request
// too slow) are answered here: as problem+json like every other error, instead of fastify's
// default plain-JSON "Client Error". The connection is closed afterwards: its framing is unknown.

const STATUS_TEXT: Record<number, string> = {
  400: 'Bad Request',
  408: 'Request Timeout',
  431: 'Request Header Fields Too Large',
};

/** node's parse error: the bytes it failed on, when it has them. */
type ParseError = Error & { code?: string; rawPacket?: unknown };

/** The answer to an HTTP parse error, as raw bytes for the socket (no body to a HEAD). */
export function clientErrorResponse(err: ParseError): string {
  const [status, detail] =
    err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
      ? [408, 'the request was not received in time']
      : err.code === 'HPE_HEADER_OVERFLOW'
        ? [431, 'the request headers are too large']
        : [400, 'the request is not valid HTTP/1.1'];
  const body = JSON.stringify(problem('INVALID_REQUEST', detail, { status }));
  const head = Buffer.isBuffer(err.rawPacket) && err.rawPacket.subarray(0, 5).toString('latin1') === 'HEAD ';
  return (
    `HTTP/1.1 ${status} ${STATUS_TEXT[status]}\r\nContent-Type: ${PROBLEM_CONTENT_TYPE}\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${head ? '' : body}`
  );
}

/** fastify's clientErrorHandler. */
export function handleClientError(err: ParseError, socket: Socket): void {
  // A reset connection has nobody to answer.
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  if (socket.writable) socket.write(clientErrorResponse(err));
  socket.destroy();
}
