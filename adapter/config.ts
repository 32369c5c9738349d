// Validates launch/attach arguments into one typed session configuration, with errors a user can act on; no DAP or engine code.
import * as fs from 'node:fs';
import type { Endpoint, EndpointMode } from '../core/node/workerProtocol';
import type { DeviceType } from '../core/protocol/features';
import { parseIpv4, parseMac } from '../core/backend/packets';

export class ConfigError extends Error {}

export interface CommonOptions {
  rings: boolean;
  pollHz: number;
  ringCpu: number;
  notifiers: boolean;
  stopOnEntry: boolean;
  autoContinueSeconds: number;
  device?: DeviceType;
  trace: boolean;
}

export type SessionConfig = CommonOptions & (
  | { mode: 'proxy'; frontend: Endpoint; backend: Endpoint; capture?: string; maxSessions: number; socketMode?: number; socketGroup?: string }
  | {
    mode: 'backend'; backendDevice: 'blk' | 'net'; socket: string; connect: boolean; image?: string; readOnly: boolean; serial?: string;
    tap?: string; loopback: boolean; ip?: string; mac?: string; queues?: number; maxSessions: number; socketMode?: number; socketGroup?: string;
  }
  | { mode: 'replay'; capture: string }
);

type Args = Record<string, unknown>;

const str = (a: Args, k: string, what = k): string | undefined => {
  const v = a[k];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string' || !v.trim()) throw new ConfigError(`"${what}" must be a non-empty string`);
  return v;
};
const bool = (a: Args, k: string): boolean => {
  const v = a[k];
  if (v === undefined || v === null) return false;
  if (typeof v !== 'boolean') throw new ConfigError(`"${k}" must be true or false`);
  return v;
};
const num = (a: Args, k: string, def: number, min: number, max: number): number => {
  const v = a[k];
  if (v === undefined || v === null) return def;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) throw new ConfigError(`"${k}" must be a number from ${min} to ${max}`);
  return v;
};

/** `[listen:|connect:]PATH`, as in the CLI. */
export function parseEndpoint(spec: string, def: EndpointMode, what: string): Endpoint {
  const m = /^(listen|connect):(.+)$/.exec(spec);
  if (m) return { mode: m[1] as EndpointMode, path: m[2] };
  if (/^[a-z]+:/.test(spec) && !spec.startsWith('/')) throw new ConfigError(`"${what}": unknown endpoint kind in "${spec}" (use listen:PATH or connect:PATH)`);
  return { mode: def, path: spec };
}

function checkConnectSide(ep: Endpoint, what: string): void {
  if (ep.mode !== 'connect') return;
  let st: fs.Stats;
  try { st = fs.statSync(ep.path); } catch {
    throw new ConfigError(`${what} socket ${ep.path} does not exist: start the ${what} first, or set "wait": true`);
  }
  if (!st.isSocket()) throw new ConfigError(`${what} path ${ep.path} is not a socket`);
}

function common(a: Args): CommonOptions {
  const device = str(a, 'device');
  if (device !== undefined && !['net', 'blk', 'fs'].includes(device)) throw new ConfigError(`"device" must be net, blk or fs, got "${device}"`);
  return {
    rings: bool(a, 'rings'),
    pollHz: num(a, 'pollHz', 100, 1, 10000),
    ringCpu: num(a, 'ringCpu', 2, 0.1, 100),
    notifiers: bool(a, 'notifiers'),
    stopOnEntry: bool(a, 'stopOnEntry'),
    autoContinueSeconds: num(a, 'autoContinueSeconds', 0, 0, 86400),
    device: device as DeviceType | undefined,
    trace: bool(a, 'trace'),
  };
}

/** The configuration of an `attach` request (proxy mode). */
export function attachConfig(a: Args): SessionConfig {
  const fe = str(a, 'frontend'), be = str(a, 'backend');
  if (!fe || !be) throw new ConfigError('an attach configuration needs "frontend" and "backend" ([listen:|connect:]PATH)');
  const frontend = parseEndpoint(fe, 'listen', 'frontend');
  const backend = parseEndpoint(be, 'connect', 'backend');
  if (frontend.mode === 'listen' && backend.mode === 'listen' && frontend.path === backend.path) throw new ConfigError('"frontend" and "backend" cannot listen on the same path');
  if (!bool(a, 'wait')) { checkConnectSide(frontend, 'front-end'); checkConnectSide(backend, 'back-end'); }
  const modeText = str(a, 'socketMode');
  if (modeText !== undefined && !/^[0-7]{3,4}$/.test(modeText)) throw new ConfigError(`"socketMode" must be octal like "600" or "660", got "${modeText}"`);
  return {
    ...common(a), mode: 'proxy', frontend, backend, capture: str(a, 'capture'), maxSessions: num(a, 'maxSessions', 1, 0, 1e9),
    socketMode: modeText === undefined ? undefined : parseInt(modeText, 8), socketGroup: str(a, 'socketGroup'),
  };
}

/** The configuration of a `launch` request (built-in back-end or replay). */
export function launchConfig(a: Args): SessionConfig {
  const mode = a.mode;
  if (mode === 'replay') {
    const capture = str(a, 'capture');
    if (!capture) throw new ConfigError('a replay configuration needs "capture": the file recorded by `vhost-lens proxy --capture FILE`');
    return { ...common(a), mode: 'replay', capture };
  }
  if (mode === 'backend') {
    const device = a.device;
    if (device !== 'blk' && device !== 'net') throw new ConfigError(`a back-end configuration needs "device": "blk" or "net"${device === undefined ? '' : `, got ${JSON.stringify(device)}`}`);
    const socket = str(a, 'socket');
    if (!socket) throw new ConfigError('a back-end configuration needs "socket": the UNIX socket path QEMU connects to');
    const image = str(a, 'image'), tap = str(a, 'tap');
    const loopback = bool(a, 'loopback');
    if (device === 'blk' && !image) throw new ConfigError('a blk back-end needs "image": a raw image file');
    if (device === 'blk' && (tap || loopback)) throw new ConfigError('"tap" and "loopback" apply to a net back-end');
    if (device === 'net' && !tap && !loopback) throw new ConfigError('a net back-end needs "tap": INTERFACE or "loopback": true');
    if (device === 'net' && tap && loopback) throw new ConfigError('a net back-end takes "tap" or "loopback", not both');
    if (device === 'net' && image) throw new ConfigError('"image" applies to a blk back-end');
    if (image) {
      let st: fs.Stats;
      try { st = fs.statSync(image); } catch { throw new ConfigError(`image ${image} does not exist`); }
      if (!st.isFile()) throw new ConfigError(`image ${image} is not a regular file`);
      if (st.size < 512) throw new ConfigError(`image ${image} is smaller than one 512-byte sector`);
    }
    const ip = str(a, 'ip'), mac = str(a, 'mac');
    if (device === 'blk' && (ip || mac)) throw new ConfigError('"ip" and "mac" apply to a net back-end in loopback');
    if (tap && (ip || mac)) throw new ConfigError('"ip" and "mac" set the loopback responder (not used with "tap")');
    try { if (ip) parseIpv4(ip); if (mac) parseMac(mac); } catch (e) { throw new ConfigError(`"${ip && !mac ? 'ip' : 'ip"/"mac'}": ${(e as Error).message}`); }
    const queues = a.queues === undefined ? undefined : num(a, 'queues', 1, 1, 64);
    if (queues !== undefined && !Number.isInteger(queues)) throw new ConfigError('"queues" must be a whole number');
    if (tap && queues !== undefined && queues !== 1) throw new ConfigError('a "tap" back-end serves one queue pair');
    const modeText = str(a, 'socketMode');
    if (modeText !== undefined && !/^[0-7]{3,4}$/.test(modeText)) throw new ConfigError(`"socketMode" must be octal like "600" or "660", got "${modeText}"`);
    const { device: _d, ...rest } = common({ ...a, device: undefined });
    return {
      ...rest, device, mode: 'backend', backendDevice: device, socket, connect: bool(a, 'connect'), image, readOnly: bool(a, 'readOnly'), serial: str(a, 'serial'),
      tap, loopback, ip, mac, queues, maxSessions: num(a, 'maxSessions', 1, 0, 1e9),
      socketMode: modeText === undefined ? undefined : parseInt(modeText, 8), socketGroup: str(a, 'socketGroup'),
    };
  }
  throw new ConfigError(`a launch configuration needs "mode": "backend" or "replay"${mode === undefined ? '' : `, got ${JSON.stringify(mode)}`} (use "request": "attach" for the proxy)`);
}
