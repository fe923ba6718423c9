// CSI answers errors with gRPC status codes whose meaning the spec fixes per call (kubelet treats
// UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, RESOURCE_EXHAUSTED and CANCELLED as "not final": it keeps
// the operation uncertain and retries; every other code as a final failure of that attempt).
// Messages name the offending field and never carry a secret.
import { status } from '@grpc/grpc-js';
import type { PodApiError } from './pod-api.js';

export class CsiError extends Error {
  override readonly name = 'CsiError';
  constructor(
    readonly grpcCode: status,
    message: string,
  ) {
    super(message);
  }
}

export const invalidArgument = (field: string, why: string): CsiError =>
  new CsiError(status.INVALID_ARGUMENT, `${field}: ${why}`);

export const failedPrecondition = (why: string): CsiError => new CsiError(status.FAILED_PRECONDITION, why);

/**
 * A failure of vmplugd's pod API as the CSI status the spec names for NodePublish and friends.
 * By the problem's stable `code` first (409 SPEC_CONFLICT is the spec's ALREADY_EXISTS: "published
 * at the target path but incompatible"), then by `retryable` (UNAVAILABLE: kubelet retries), then
 * by HTTP status class.
 */
export function fromPodApi(err: PodApiError, call: string): CsiError {
  const msg = `${call}: vmplugd: ${err.message}`;
  switch (err.code) {
    case 'INVALID_ID':
    case 'INVALID_FIELD':
    case 'NOT_PASSTHROUGH':
    case 'MODE_MISMATCH':
      return new CsiError(status.INVALID_ARGUMENT, msg);
    case 'SPEC_CONFLICT':
      return new CsiError(status.ALREADY_EXISTS, msg);
    case 'NOT_FOUND':
      return new CsiError(status.NOT_FOUND, msg);
    case 'LANES_FULL':
      return new CsiError(status.RESOURCE_EXHAUSTED, msg);
    case 'TIMEOUT':
      return new CsiError(status.DEADLINE_EXCEEDED, msg);
    case 'ROUTE_NOT_FOUND':
    case 'HTTP_404':
    case 'HTTP_405':
      // No such route (a vmplugd older than the pod API, or without pod resize): not a missing volume.
      return new CsiError(
        status.FAILED_PRECONDITION,
        `${call}: this vmplugd does not serve the call (${err.message})`,
      );
    case 'PERMISSION_DENIED':
      // Our own deployment is wrong (socket mode/group): retrying as is cannot help.
      return new CsiError(status.FAILED_PRECONDITION, msg);
  }
  if (err.retryable) return new CsiError(status.UNAVAILABLE, msg);
  if (err.status === 400 || err.status === 422) return new CsiError(status.INVALID_ARGUMENT, msg);
  if (err.status === 409) return new CsiError(status.ALREADY_EXISTS, msg);
  if (err.status === 404) return new CsiError(status.NOT_FOUND, msg);
  return new CsiError(status.INTERNAL, msg);
}
