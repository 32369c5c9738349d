// Builds the Engine a debug session hosts from its configuration: the proxy, a capture replay, or (once core/backend exists) a built-in back-end.
import { Proxy } from '../core/proxy/proxy';
import { ReplayEngine } from '../core/proxy/replayEngine';
import type { Engine } from '../core/engine';
import type { SessionConfig } from './config';

export class EngineUnavailable extends Error {}

export type BackendConfig = Extract<SessionConfig, { mode: 'backend' }>;

/**
 * The built-in back-end engines (vhost-user-blk on an image file, vhost-user-net on a tap or in loopback).
 * They are being built in core/backend/; plug them in here: this function is the only place that changes.
 */
export function backendEngine(cfg: BackendConfig): Engine {
  throw new EngineUnavailable(
    `the built-in ${cfg.backendDevice} back-end is not available in this build yet (core/backend/ has no engine): ` +
    'use "request": "attach" to debug a session between QEMU and an existing back-end, or "mode": "replay" for a capture',
  );
}

export function createEngine(cfg: SessionConfig): Engine {
  switch (cfg.mode) {
    case 'proxy':
      return new Proxy({
        frontend: cfg.frontend, backend: cfg.backend, device: cfg.device, capture: cfg.capture, notifiers: cfg.notifiers,
        socketMode: cfg.socketMode, socketGroup: cfg.socketGroup, maxSessions: cfg.maxSessions || undefined,
      });
    case 'replay':
      return new ReplayEngine({ capture: cfg.capture, device: cfg.device });
    case 'backend':
      return backendEngine(cfg);
  }
}
