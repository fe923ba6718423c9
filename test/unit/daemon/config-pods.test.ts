import { describe, expect, it } from 'vitest';
import { ConfigError, parseCommandLine, resolveConfig } from '../../../daemon/config.js';

// The pod-volume settings (DESIGN §5b): flag > environment > file > default, absolute paths only.

describe('pod volume settings', () => {
  it('defaults to kubelet and Kata paths', () => {
    expect(resolveConfig({}, {}, null).config).toMatchObject({
      kubeletRoot: '/var/lib/kubelet',
      kataDirectVolumeRoot: '/run/kata-containers/shared/direct-volumes',
      kataVhostUserStore: '/var/run/kata-containers/vhost-user',
    });
  });

  it('takes flag over environment over file, normalized', () => {
    const { flags } = parseCommandLine([
      '--kubelet-root',
      '/data/kubelet/',
      '--kata-direct-volume-root',
      '/x/dv',
    ]);
    const { config, sources } = resolveConfig(
      flags,
      { VMPLUG_KUBELET_ROOT: '/env/kubelet', VMPLUG_KATA_VHOST_USER_STORE: '/env/store' },
      {
        path: '/etc/vmplug/config.json',
        content: { kataVhostUserStore: '/file/store', kubeletRoot: '/file/k' },
      },
    );
    expect(config.kubeletRoot).toBe('/data/kubelet');
    expect(config.kataDirectVolumeRoot).toBe('/x/dv');
    expect(config.kataVhostUserStore).toBe('/env/store');
    expect(sources.kubeletRoot).toEqual({ kind: 'flag', name: 'kubelet-root' });
  });

  it('refuses a relative path naming the source', () => {
    expect(() => resolveConfig({}, { VMPLUG_KUBELET_ROOT: 'var/lib/kubelet' }, null)).toThrow(ConfigError);
    expect(() => resolveConfig({}, { VMPLUG_KUBELET_ROOT: 'var/lib/kubelet' }, null)).toThrow(
      /VMPLUG_KUBELET_ROOT/,
    );
  });
});
