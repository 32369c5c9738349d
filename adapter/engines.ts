// Builds the Engine a debug session hosts from its configuration: the proxy, a built-in back-end, or a capture replay.
import { Proxy } from '../core/proxy/proxy';
import { ReplayEngine } from '../core/proxy/replayEngine';
import { Backend } from '../core/backend/backend';
import type { Engine } from '../core/engine';
import type { SessionConfig } from './config';

export type BackendConfig = Extract<SessionConfig, { mode: 'backend' }>;

/** The built-in back-end engines (core/backend): vhost-user-blk on a raw image, vhost-user-net on a TAP device or in loopback. */
export function backendEngine(cfg: BackendConfig): Engine {
  const common = {
    endpoint: { mode: cfg.connect ? 'connect' as const : 'listen' as const, path: cfg.socket },
    socketMode: cfg.socketMode, socketGroup: cfg.socketGroup, maxSessions: cfg.maxSessions || undefined, notifiers: cfg.notifiers,
    // The device sees every kick and completion: with rings, it captures split rings exactly at those moments.
    ringCapture: cfg.rings,
  };
  if (cfg.backendDevice === 'blk') {
    return new Backend({ ...common, device: 'blk', blk: { image: cfg.image!, readonly: cfg.readOnly, numQueues: cfg.queues, serial: cfg.serial } });
  }
  return new Backend({ ...common, device: 'net', net: { mode: cfg.tap ? 'tap' : 'loopback', tap: cfg.tap, ip: cfg.ip, mac: cfg.mac, queuePairs: cfg.queues } });
}

export function createEngine(cfg: SessionConfig): Engine {
  switch (cfg.mode) {
    case 'proxy':
      return new Proxy({
        frontend: cfg.frontend, backend: cfg.backend, device: cfg.device, capture: cfg.capture, notifiers: cfg.notifiers,
        socketMode: cfg.socketMode, socketGroup: cfg.socketGroup, maxSessions: cfg.maxSessions || undefined,
        // With both, the relay walks split rings at each kick and call before relaying it (exact ring events).
        ringCapture: cfg.rings && cfg.notifiers,
      });
    case 'replay':
      return new ReplayEngine({ capture: cfg.capture, device: cfg.device });
    case 'backend':
      return backendEngine(cfg);
  }
}
