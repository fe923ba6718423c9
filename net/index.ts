export * from './engine.js';
export * from './errors.js';
export { type CallOpts, type HostNetwork, IpHostNetwork, type LinkInfo } from './host.js';
export { isNicAttachState, NicJournal, type NicRecord, type NicState } from './journal.js';
export * from './naming.js';
export type { NicService } from './service.js';
export * from './spec.js';
