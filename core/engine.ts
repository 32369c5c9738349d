// The engine contract every session source implements (proxy, built-in back-end, capture replay): events, holds, stop.
import type { EventEmitter } from 'node:events';
import type { SessionTracker, EngineEvent } from './session/tracker';

export interface Engine extends EventEmitter<{ event: [EngineEvent] }> {
  /** Decoded sessions and their negotiated state. */
  readonly tracker: SessionTracker;
  /**
   * How the engine captures split rings exactly at notification time, if it does: 'interposed' for rings whose
   * kicks the proxy interposes, 'all' when the engine is the device itself. Ring views then do not poll those rings.
   */
  readonly ringCapture?: 'interposed' | 'all';
  /** Resolves when the engine listens/connects (or has loaded its input); rejects with a clear start error. */
  start(): Promise<void>;
  /** Hold messages whose `channel:code` key is listed (`main:12`), or every message when `all` (pause). */
  setGate(all: boolean, keys: string[]): void;
  /** Let a held message go on (relay it, or let the device handle it). */
  release(holdId: number): void;
  /** Stop and release every fd; resolves with the worker's final fd ledger (-1 when there is no worker). */
  stop(): Promise<{ ledger: number; violations: string[] }>;
  /** Resolves when the engine ends by itself (maxSessions reached, replay finished). */
  finished(): Promise<void>;
}
