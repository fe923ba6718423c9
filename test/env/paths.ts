import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

// Resolved from this file, not the working directory, so tests, the demo and benchmarks agree
// wherever they are started from.
export const repoRoot: string = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const qemuWrapperPath: string = join(repoRoot, 'bin', 'vmplug-qemu');
export const buildGuestPath: string = join(repoRoot, 'test', 'env', 'build-guest');
export const defaultQemuPath = '/usr/bin/qemu-system-x86_64';

// sockaddr_un.sun_path is 108 bytes including the terminating NUL.
export const maxUnixSocketPathBytes = 107;
