// The pod-volume engine (DESIGN §5b) as the daemon sees it.
export * from './dav.js';
export * from './engine.js';
export * from './journal.js';
export * from './naming.js';
export * from './spec.js';
export * from './view.js';
