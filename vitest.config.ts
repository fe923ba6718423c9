import { defineConfig } from 'vitest/config';

// Two projects: unit tests run in parallel and need nothing from the host; integration tests
// drive real QEMU guests, Ceph and libvirt, so they run one file at a time (2-core machines,
// TCG guests) and get long timeouts. They share the Ceph cluster started by the global setup.
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          testTimeout: 10_000,
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          globalSetup: ['test/env/global-setup.ts'],
          fileParallelism: false,
          testTimeout: 120_000,
          hookTimeout: 180_000,
        },
      },
    ],
  },
});
