// ES module entry: `import skapi, { SkapiRealtime } from '.../skapi-realtime.mjs'`.
// The classic script does the work and defines the globals.
import './skapi-realtime.js';

export const SkapiRealtime = globalThis.SkapiRealtime;
export default globalThis.skapi;
