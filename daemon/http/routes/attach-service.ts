// The contract lives in storage/ (the engine implements it; storage may not import daemon/).
export * from '../../../storage/attach-service.js';
