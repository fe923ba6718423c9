import { describe, expect, it } from 'vitest';
import {
  BackendError,
  CephUnreachableError,
  ConflictError,
  DetachPendingError,
  ERROR_CODES,
  LanesFullError,
  NotFoundError,
  ValidationError,
  VmplugError,
} from '../../../core/errors.js';
import { Secret } from '../../../storage/volume-spec.js';

const KEY = 'AQDuSQNrSIzGGhAAA42jGo01/mILR5NFi7XNYA==';

describe('errors', () => {
  it('carry stable codes, statuses and fields', () => {
    const cases: [VmplugError, string, number][] = [
      [new ValidationError('source.pool', 'must not be empty'), 'INVALID_FIELD', 422],
      [new ValidationError('volumeId', 'bad', 'INVALID_ID'), 'INVALID_ID', 400],
      [new ConflictError('different spec'), 'SPEC_CONFLICT', 409],
      [new NotFoundError('sandbox', 'abc'), 'NOT_FOUND', 404],
      [new LanesFullError('virtio-blk', 4), 'LANES_FULL', 409],
      [new CephUnreachableError(['127.0.0.1:1'], 3000), 'CEPH_UNREACHABLE', 503],
      [new BackendError('blockdev-add', 'boom'), 'BACKEND_FAILED', 502],
      [new DetachPendingError('vmpd-0123456789abcdef', 5000), 'DETACH_PENDING', 503],
    ];
    for (const [err, code, status] of cases) {
      expect(err).toBeInstanceOf(VmplugError);
      expect(err.code).toBe(code);
      expect(err.status).toBe(status);
      expect(err.name).toBe(err.constructor.name);
      expect(err.toProblem()).toMatchObject({
        code,
        status,
        title: ERROR_CODES[err.code].title,
        detail: err.message,
      });
    }
    expect(new ValidationError('source.monitors[1]', 'has an invalid port').toProblem()).toMatchObject({
      field: 'source.monitors[1]',
      detail: 'source.monitors[1]: has an invalid port',
    });
    expect(new ConflictError('x').toProblem()).not.toHaveProperty('field');
    expect(new CephUnreachableError([], 1).retryable).toBe(true);
    expect(new DetachPendingError('d', 1).retryable).toBe(true);
    expect(new ConflictError('x').retryable).toBe(false);
  });

  it('take status, title and retryability from the one code table, overridable per instance', () => {
    for (const [code, info] of Object.entries(ERROR_CODES)) {
      expect(info.status, code).toBeGreaterThanOrEqual(400);
      expect(info.status, code).toBeLessThan(600);
      expect(info.title.length, code).toBeGreaterThan(0);
    }
    const err = new VmplugError('NOT_READY', 'not yet');
    expect(err).toMatchObject({ status: 503, retryable: true, name: 'VmplugError' });
    expect(err.toProblem()).toEqual({
      type: 'urn:vmplug:error:not-ready',
      title: 'Not ready',
      status: 503,
      detail: 'not yet',
      code: 'NOT_READY',
    });
    expect(new BackendError('x', 'y', { retryable: true })).toMatchObject({ status: 502, retryable: true });
    expect(new VmplugError('BACKEND_FAILED', 'z', { status: 503 }).status).toBe(503);
  });

  it('BackendError cuts secrets out of backend text', () => {
    const err = new BackendError('object-add', `Invalid secret ${KEY} given`, {
      secrets: [new Secret(KEY)],
      cause: new Error('qmp'),
    });
    expect(err.message).toBe('object-add failed: Invalid secret [redacted] given');
    expect(JSON.stringify(err.toProblem())).not.toContain(KEY);
    expect(err.cause).toBeInstanceOf(Error);
  });
});
