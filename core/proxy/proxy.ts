// The proxy engine for callers (CLI, debug adapter): a relay worker plus session tracking, holds and capture.
import { EventEmitter } from 'node:events';
import { PumpHost, hostNative } from '../node/pumpHost';
import { SessionTracker, type EngineEvent } from '../session/tracker';
import { CaptureWriter } from './capture';
import type { RelayOptions, WorkerEvent } from '../node/workerProtocol';
import type { DeviceType } from '../protocol/features';
import type { Engine } from '../engine';

export interface ProxyOptions extends RelayOptions {
  device?: DeviceType;
  capture?: string;
}

export class Proxy extends EventEmitter<{ event: [EngineEvent] }> implements Engine {
  readonly tracker: SessionTracker;
  readonly host: PumpHost;
  private capture?: CaptureWriter;
  private workerFinal?: { ledger: number; violations: string[] };

  constructor(readonly opts: ProxyOptions) {
    super();
    const native = hostNative();
    this.tracker = new SessionTracker({
      device: opts.device,
      adopt: (fd) => native.ledger.track(fd, 'dup', 'guest memory region'),
      closeFd: (fd) => native.close(fd),
    });
    this.tracker.on('event', (e) => this.emit('event', e));
    if (opts.capture) {
      this.capture = new CaptureWriter(opts.capture, {
        tool: 'vhost-lens', frontend: `${opts.frontend.mode}:${opts.frontend.path}`, backend: `${opts.backend.mode}:${opts.backend.path}`, device: opts.device,
      });
    }
    const { device: _d, capture: _c, ...relay } = opts;
    this.host = new PumpHost('relay', relay, native);
    this.host.on('event', (e: WorkerEvent) => {
      if (e.kind === 'stopped') this.workerFinal = { ledger: e.ledger, violations: e.violations };
      if (this.capture) {
        try { this.capture.write(e); } catch (err) {
          // A full disk stops the capture, never the session.
          this.capture = undefined;
          this.tracker.handle({ kind: 'error', where: 'capture', message: `capture stopped: ${(err as Error).message}` });
        }
      }
      this.tracker.handle(e);
    });
  }

  /** Resolves once the relay listens/connects; rejects with the start error (path in use, permission…). */
  start(): Promise<void> { return this.host.ready; }

  /** Hold messages whose `channel:code` key is listed, or all of them (pause). */
  setGate(all: boolean, keys: string[]): void { this.host.send({ type: 'gate', all, keys }); }
  release(holdId: number): void { this.host.send({ type: 'release', holdId }); }

  /** Stop relaying, release sessions' fds; resolves with the worker's final fd ledger. */
  async stop(): Promise<{ ledger: number; violations: string[] }> {
    await this.host.stop();
    this.tracker.closeAll();
    this.capture?.close();
    this.capture = undefined;
    return this.workerFinal ?? { ledger: -1, violations: [] };
  }

  /** Resolves when the relay stops by itself (maxSessions). */
  async finished(): Promise<void> {
    await this.host.exitedPromise();
    this.tracker.closeAll();
    this.capture?.close();
    this.capture = undefined;
  }
}
