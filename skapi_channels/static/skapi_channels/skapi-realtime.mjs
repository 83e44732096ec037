// ES module entry:
//   import skapi, { Skapi, SkapiRealtime, SkapiError } from '.../skapi-realtime.mjs';
// The classic script does the work and defines the globals.
import './skapi-realtime.js';

export const SkapiRealtime = globalThis.SkapiRealtime;
export const SkapiError = SkapiRealtime.SkapiError;
export const Skapi = globalThis.Skapi;
export default globalThis.skapi;
