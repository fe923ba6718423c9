// vmplug's libvirt binding: our own Node-API addon (native/) behind a typed, bounded API.
export * from './binding.js';
export * from './errors.js';
