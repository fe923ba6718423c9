/**
 * What vmplug-csi adds to a CSI call, on unix sockets on this machine:
 *   - NodePublishVolume straight to a test node plugin (kubelet -> plugin);
 *   - the same through vmplug-csi (a forwarded volume: raw bytes, one more hop);
 *   - a direct-mode NodePublishVolume through vmplug-csi to a fake vmplugd pod API (HTTP PUT);
 *     vmplugd's own work (record, storage daemon) is not in it.
 * Prints min / median / p99 / max and the forwarding ratio; asserts nothing.
 *
 *   npm run bench:csi-proxy [-- <calls>]   (default 2000)
 */
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import { encode } from '../csi/messages.js';
import { startBed, targetPath } from '../test/unit/csi/harness.js';
import { hostContext, printTable, summarize } from './figures.js';

const calls = Number(process.argv[2] ?? 2000);
const warmUp = 200;
const identity = (b: Buffer): Buffer => b;

function caller(socket: string) {
  const client = new grpc.Client(`unix:${socket}`, grpc.credentials.createInsecure());
  const call = (req: Buffer) =>
    new Promise<void>((resolve, reject) =>
      client.makeUnaryRequest('/csi.v1.Node/NodePublishVolume', identity, identity, req, (err) =>
        err ? reject(err) : resolve(),
      ),
    );
  return { call, close: () => client.close() };
}

async function measure(call: (i: number) => Promise<void>): Promise<number[]> {
  for (let i = 0; i < warmUp; i++) await call(i);
  const out: number[] = [];
  for (let i = 0; i < calls; i++) {
    const t = performance.now();
    await call(i);
    out.push(performance.now() - t);
  }
  return out;
}

async function main(): Promise<void> {
  process.stdout.write(`${hostContext()}\n`);
  const bed = await startBed();
  try {
    const cap = { mount: { fsType: 'ext4' }, accessMode: { mode: 1 } };
    const forwarded = encode('csi.v1.NodePublishVolumeRequest', {
      volumeId: 'vol-fwd',
      targetPath: targetPath('pv-fwd'),
      stagingTargetPath: '/s',
      volumeCapability: cap,
      volumeContext: { clusterID: 'ceph1', pool: 'rbd', imageName: 'img' },
    });
    const ctx = { 'vmplug.io/direct-mode': 'rbd', clusterID: 'ceph1', pool: 'rbd', imageName: 'img' };
    const direct = encode('csi.v1.NodePublishVolumeRequest', {
      volumeId: 'vol-dir',
      targetPath: targetPath('pv-dir'),
      stagingTargetPath: '/s',
      volumeCapability: cap,
      volumeContext: ctx,
    });
    await bed.call(
      'NodeStageVolume',
      encode('csi.v1.NodeStageVolumeRequest', {
        volumeId: 'vol-dir',
        stagingTargetPath: '/s',
        volumeCapability: cap,
        secrets: { userID: 'u', userKey: 'a2V5' },
        volumeContext: ctx,
      }),
    );
    const plugin = caller(join(bed.dir, 'upstream.sock'));
    const proxy = caller(join(bed.dir, 'csi.sock'));
    try {
      const straight = summarize(await measure(() => plugin.call(forwarded)));
      const through = summarize(await measure(() => proxy.call(forwarded)));
      const toVmplugd = summarize(await measure(() => proxy.call(direct)));
      printTable(`NodePublishVolume, ${calls} calls one at a time`, [
        ['to the plugin', straight],
        ['through vmplug-csi (forwarded)', through],
        ['through vmplug-csi (direct -> vmplugd PUT)', toVmplugd],
      ]);
      process.stdout.write(
        `\nforwarding ratio (median through / straight): ${(through.median / straight.median).toFixed(2)}\n`,
      );
    } finally {
      plugin.close();
      proxy.close();
    }
  } finally {
    await bed.close();
  }
}

await main();
