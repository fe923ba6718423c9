// The CSI and kubelet plugin-registration messages vmplug-csi reads or writes, written here with
// the field numbers of the CSI spec (csi.v1; checked against the descriptor embedded in the spec's
// Go package, test/unit/csi/spec-fields.test.ts) and of kubelet's pluginregistration v1 API.
// Only these are decoded: every other call is forwarded as raw bytes, and a message vmplug-csi
// changes on its way through is edited at the wire level (wire.ts), so fields of a newer spec
// than these survive.
import protobuf from 'protobufjs';

const mapOfStrings = (id: number) => ({ keyType: 'string', type: 'string', id });

const root = protobuf.Root.fromJSON({
  nested: {
    csi: {
      nested: {
        v1: {
          nested: {
            StringEntry: { fields: { key: { type: 'string', id: 1 }, value: { type: 'string', id: 2 } } },
            VolumeCapability: {
              oneofs: { accessType: { oneof: ['block', 'mount'] } },
              fields: {
                block: { type: 'BlockVolume', id: 1 },
                mount: { type: 'MountVolume', id: 2 },
                accessMode: { type: 'AccessMode', id: 3 },
              },
              nested: {
                BlockVolume: { fields: {} },
                MountVolume: {
                  fields: {
                    fsType: { type: 'string', id: 1 },
                    mountFlags: { rule: 'repeated', type: 'string', id: 2 },
                    volumeMountGroup: { type: 'string', id: 3 },
                  },
                },
                AccessMode: { fields: { mode: { type: 'int32', id: 1 } } },
              },
            },
            CapacityRange: {
              fields: { requiredBytes: { type: 'int64', id: 1 }, limitBytes: { type: 'int64', id: 2 } },
            },
            NodeStageVolumeRequest: {
              fields: {
                volumeId: { type: 'string', id: 1 },
                publishContext: mapOfStrings(2),
                stagingTargetPath: { type: 'string', id: 3 },
                volumeCapability: { type: 'VolumeCapability', id: 4 },
                secrets: mapOfStrings(5),
                volumeContext: mapOfStrings(6),
              },
            },
            NodeUnstageVolumeRequest: {
              fields: { volumeId: { type: 'string', id: 1 }, stagingTargetPath: { type: 'string', id: 2 } },
            },
            NodePublishVolumeRequest: {
              fields: {
                volumeId: { type: 'string', id: 1 },
                publishContext: mapOfStrings(2),
                stagingTargetPath: { type: 'string', id: 3 },
                targetPath: { type: 'string', id: 4 },
                volumeCapability: { type: 'VolumeCapability', id: 5 },
                readonly: { type: 'bool', id: 6 },
                secrets: mapOfStrings(7),
                volumeContext: mapOfStrings(8),
              },
            },
            NodeUnpublishVolumeRequest: {
              fields: { volumeId: { type: 'string', id: 1 }, targetPath: { type: 'string', id: 2 } },
            },
            NodeGetVolumeStatsRequest: {
              fields: {
                volumeId: { type: 'string', id: 1 },
                volumePath: { type: 'string', id: 2 },
                stagingTargetPath: { type: 'string', id: 3 },
              },
            },
            VolumeUsage: {
              fields: {
                available: { type: 'int64', id: 1 },
                total: { type: 'int64', id: 2 },
                used: { type: 'int64', id: 3 },
                unit: { type: 'int32', id: 4 },
              },
            },
            VolumeCondition: {
              fields: { abnormal: { type: 'bool', id: 1 }, message: { type: 'string', id: 2 } },
            },
            NodeGetVolumeStatsResponse: {
              fields: {
                usage: { rule: 'repeated', type: 'VolumeUsage', id: 1 },
                volumeCondition: { type: 'VolumeCondition', id: 2 },
              },
            },
            NodeExpandVolumeRequest: {
              fields: {
                volumeId: { type: 'string', id: 1 },
                volumePath: { type: 'string', id: 2 },
                capacityRange: { type: 'CapacityRange', id: 3 },
                stagingTargetPath: { type: 'string', id: 4 },
                volumeCapability: { type: 'VolumeCapability', id: 5 },
                secrets: mapOfStrings(6),
              },
            },
            NodeExpandVolumeResponse: { fields: { capacityBytes: { type: 'int64', id: 1 } } },
            NodeServiceCapability: {
              oneofs: { type: { oneof: ['rpc'] } },
              fields: { rpc: { type: 'RPC', id: 1 } },
              nested: { RPC: { fields: { type: { type: 'int32', id: 1 } } } },
            },
          },
        },
      },
    },
    pluginregistration: {
      nested: {
        PluginInfo: {
          fields: {
            type: { type: 'string', id: 1 },
            name: { type: 'string', id: 2 },
            endpoint: { type: 'string', id: 3 },
            supportedVersions: { rule: 'repeated', type: 'string', id: 4 },
          },
        },
        RegistrationStatus: {
          fields: { pluginRegistered: { type: 'bool', id: 1 }, error: { type: 'string', id: 2 } },
        },
      },
    },
  },
});

/** Field numbers vmplug-csi edits at the wire level. */
export const FIELD = {
  GetPluginInfoResponse: { manifest: 3 },
  NodeGetCapabilitiesResponse: { capabilities: 1 },
  NodeStageVolumeRequest: { volumeCapability: 4 },
  VolumeCapability: { block: 1, mount: 2 },
} as const;

/** csi.v1.NodeServiceCapability.RPC.Type */
export const NodeRpc = {
  STAGE_UNSTAGE_VOLUME: 1,
  GET_VOLUME_STATS: 2,
  EXPAND_VOLUME: 3,
  VOLUME_CONDITION: 4,
} as const;

/** csi.v1.VolumeCapability.AccessMode.Mode values that only read. */
export const READ_ONLY_ACCESS_MODES: ReadonlySet<number> = new Set([
  2, // SINGLE_NODE_READER_ONLY
  3, // MULTI_NODE_READER_ONLY
]);

export const VolumeUsageUnit = { BYTES: 1 } as const;

export interface VolumeCapability {
  block?: Record<string, never>;
  mount?: { fsType?: string; mountFlags?: string[]; volumeMountGroup?: string };
  accessMode?: { mode?: number };
}

export interface NodeStageVolumeRequest {
  volumeId?: string;
  publishContext?: Record<string, string>;
  stagingTargetPath?: string;
  volumeCapability?: VolumeCapability;
  secrets?: Record<string, string>;
  volumeContext?: Record<string, string>;
}

export interface NodeUnstageVolumeRequest {
  volumeId?: string;
  stagingTargetPath?: string;
}

export interface NodePublishVolumeRequest {
  volumeId?: string;
  publishContext?: Record<string, string>;
  stagingTargetPath?: string;
  targetPath?: string;
  volumeCapability?: VolumeCapability;
  readonly?: boolean;
  secrets?: Record<string, string>;
  volumeContext?: Record<string, string>;
}

export interface NodeUnpublishVolumeRequest {
  volumeId?: string;
  targetPath?: string;
}

export interface NodeGetVolumeStatsRequest {
  volumeId?: string;
  volumePath?: string;
  stagingTargetPath?: string;
}

export interface NodeGetVolumeStatsResponse {
  usage: { available?: number; total?: number; used?: number; unit: number }[];
  volumeCondition?: { abnormal: boolean; message: string };
}

export interface NodeExpandVolumeRequest {
  volumeId?: string;
  volumePath?: string;
  capacityRange?: { requiredBytes?: number; limitBytes?: number };
  stagingTargetPath?: string;
}

export interface NodeExpandVolumeResponse {
  capacityBytes: number;
}

export interface PluginInfo {
  type: string;
  name: string;
  endpoint: string;
  supportedVersions: string[];
}

export interface RegistrationStatus {
  pluginRegistered?: boolean;
  error?: string;
}

interface Messages {
  'csi.v1.NodeStageVolumeRequest': NodeStageVolumeRequest;
  'csi.v1.NodeUnstageVolumeRequest': NodeUnstageVolumeRequest;
  'csi.v1.NodePublishVolumeRequest': NodePublishVolumeRequest;
  'csi.v1.NodeUnpublishVolumeRequest': NodeUnpublishVolumeRequest;
  'csi.v1.NodeGetVolumeStatsRequest': NodeGetVolumeStatsRequest;
  'csi.v1.NodeGetVolumeStatsResponse': NodeGetVolumeStatsResponse;
  'csi.v1.NodeExpandVolumeRequest': NodeExpandVolumeRequest;
  'csi.v1.NodeExpandVolumeResponse': NodeExpandVolumeResponse;
  'csi.v1.NodeServiceCapability': { rpc: { type: number } };
  'csi.v1.StringEntry': { key: string; value: string };
  'csi.v1.VolumeCapability': VolumeCapability;
  'pluginregistration.PluginInfo': PluginInfo;
  'pluginregistration.RegistrationStatus': RegistrationStatus;
}

export type MessageName = keyof Messages;
export type MessageOf<N extends MessageName> = Messages[N];

const types = new Map<string, protobuf.Type>();
function type(name: MessageName): protobuf.Type {
  let t = types.get(name);
  if (t === undefined) {
    t = root.lookupType(name);
    types.set(name, t);
  }
  return t;
}

/** Decodes bytes into a plain object: absent fields are absent, int64 are numbers, enums numbers. */
export function decode<N extends MessageName>(name: N, bytes: Buffer): Messages[N] {
  const t = type(name);
  return t.toObject(t.decode(bytes), { longs: Number, enums: Number, defaults: false }) as Messages[N];
}

export function encode<N extends MessageName>(name: N, value: Messages[N]): Buffer {
  const t = type(name);
  return Buffer.from(t.encode(t.fromObject(value as Record<string, unknown>)).finish());
}

/** The root, for the spec check test only. */
export const csiRoot = root;
