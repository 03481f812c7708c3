export * from './plan.interface.js';
export * from './options.interface.js';
export * from './frame.interface.js';
export * from './event.interface.js';
