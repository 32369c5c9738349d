// The built-in back-end engine for callers (CLI, debug adapter): a device worker plus the same session tracking as the proxy.
import { EventEmitter } from 'node:events';
import { PumpHost, hostNative } from '../node/pumpHost';
import { SessionTracker, type EngineEvent } from '../session/tracker';
import type { WorkerEvent } from '../node/workerProtocol';
import type { Engine } from '../engine';
import { CaptureWriter } from '../proxy/capture';
import type { BackendOptions as ProgramOptions } from './program';

export interface BackendOptions extends ProgramOptions {
  /** Record the session for `vhost-lens replay` (the proxy's capture format). */
  capture?: string;
}

/**
 * Serves a front-end with a built-in vhost-user device (blk on a raw image, net on a TAP device or in loopback).
 * Every request and every reply is reported as a wire record, so the tracker derives the same state as in proxy mode.
 */
export class Backend extends EventEmitter<{ event: [EngineEvent] }> implements Engine {
  readonly tracker: SessionTracker;
  readonly host: PumpHost;
  private capture?: CaptureWriter;
  private workerFinal?: { ledger: number; violations: string[] };

  constructor(readonly opts: BackendOptions) {
    super();
    const native = hostNative();
    this.tracker = new SessionTracker({
      device: opts.device,
      adopt: (fd) => native.ledger.track(fd, 'dup', 'guest memory region'),
      closeFd: (fd) => native.close(fd),
    });
    this.tracker.on('event', (e) => this.emit('event', e));
    if (opts.capture) {
      const dev = opts.device === 'blk' ? `blk:${opts.blk?.image}` : `net:${opts.net?.mode}${opts.net?.tap ? `:${opts.net.tap}` : ''}`;
      this.capture = new CaptureWriter(opts.capture, { tool: 'vhost-lens backend', frontend: `${opts.endpoint.mode}:${opts.endpoint.path}`, backend: `built-in ${dev}`, device: opts.device });
    }
    const { capture: _c, ...program } = opts;
    this.host = new PumpHost('backend', program, native);
    this.host.on('event', (e: WorkerEvent) => {
      if (e.kind === 'stopped') this.workerFinal = { ledger: e.ledger, violations: e.violations };
      this.capture?.write(e);
      this.tracker.handle(e);
    });
  }

  /** Resolves once the device is open and the socket listens (or connecting has begun); rejects with the reason. */
  start(): Promise<void> { return this.host.ready; }

  setGate(all: boolean, keys: string[]): void { this.host.send({ type: 'gate', all, keys }); }
  release(holdId: number): void { this.host.send({ type: 'release', holdId }); }

  async stop(): Promise<{ ledger: number; violations: string[] }> {
    await this.host.stop();
    this.tracker.closeAll();
    this.capture?.close();
    this.capture = undefined;
    return this.workerFinal ?? { ledger: -1, violations: [] };
  }

  async finished(): Promise<void> {
    await this.host.exitedPromise();
    this.tracker.closeAll();
    this.capture?.close();
    this.capture = undefined;
  }
}
