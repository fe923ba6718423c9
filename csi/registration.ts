// kubelet's plugin registration (pluginregistration v1), served by vmplug-csi itself so no
// node-driver-registrar sidecar is needed: kubelet watches its plugins_registry directory, finds
// `<driver>-reg.sock`, asks GetInfo, then calls the CSI endpoint named there (NodeGetInfo) and
// reports the outcome through NotifyRegistrationStatus. Deploy either this or the sidecar for a
// driver, never both (docs/csi.md).
import type * as grpc from '@grpc/grpc-js';
import { rawMethod } from './grpc-proxy.js';
import { decode, encode } from './messages.js';

/** CSI versions kubelet may speak to the endpoint. */
export const CSI_SUPPORTED_VERSIONS = ['1.0.0'];

export interface RegistrationOptions {
  driver: string;
  /** The CSI socket as kubelet sees it on the host (vmplug-csi's own listening socket). */
  endpoint: string;
  onStatus?: (registered: boolean, error: string) => void;
}

export function addRegistrationService(server: grpc.Server, o: RegistrationOptions): void {
  const method = (name: string) => rawMethod(`/pluginregistration.Registration/${name}`);
  server.addService(
    { GetInfo: method('GetInfo'), NotifyRegistrationStatus: method('NotifyRegistrationStatus') },
    {
      GetInfo: (_call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) =>
        cb(
          null,
          encode('pluginregistration.PluginInfo', {
            type: 'CSIPlugin',
            name: o.driver,
            endpoint: o.endpoint,
            supportedVersions: CSI_SUPPORTED_VERSIONS,
          }),
        ),
      NotifyRegistrationStatus: (
        call: grpc.ServerUnaryCall<Buffer, Buffer>,
        cb: grpc.sendUnaryData<Buffer>,
      ) => {
        const s = decode('pluginregistration.RegistrationStatus', call.request);
        o.onStatus?.(s.pluginRegistered ?? false, s.error ?? '');
        cb(null, Buffer.alloc(0));
      },
    },
  );
}
