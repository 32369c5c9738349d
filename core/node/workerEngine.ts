// An Engine backed by a pump-worker program (the relay, a built-in device): session tracking, holds, capture, stop.
import { EventEmitter } from 'node:events';
import { PumpHost, hostNative } from './pumpHost';
import { SessionTracker, type EngineEvent } from '../session/tracker';
import { CaptureWriter, type CaptureHeader } from '../proxy/capture';
import type { ProgramName } from './programs';
import type { WorkerEvent } from './workerProtocol';
import type { DeviceType } from '../protocol/features';
import type { Engine } from '../engine';

export interface WorkerEngineOptions {
  device?: DeviceType;
  /** Record every relay event to this capture file. */
  capture?: string;
  captureHeader?: Omit<CaptureHeader, 'format' | 'version' | 'created'>;
  ringCapture?: 'interposed' | 'all';
}

export class WorkerEngine extends EventEmitter<{ event: [EngineEvent] }> implements Engine {
  readonly tracker: SessionTracker;
  readonly host: PumpHost;
  readonly ringCapture?: 'interposed' | 'all';
  private capture?: CaptureWriter;
  private workerFinal?: { ledger: number; violations: string[] };

  constructor(program: ProgramName, programOptions: unknown, o: WorkerEngineOptions) {
    super();
    this.ringCapture = o.ringCapture;
    const native = hostNative();
    this.tracker = new SessionTracker({
      device: o.device,
      adopt: (fd) => native.ledger.track(fd, 'dup', 'guest memory region'),
      closeFd: (fd) => native.close(fd),
    });
    this.tracker.on('event', (e) => this.emit('event', e));
    if (o.capture) this.capture = new CaptureWriter(o.capture, o.captureHeader ?? { tool: 'vhost-lens', device: o.device });
    this.host = new PumpHost(program, programOptions, native);
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

  /** Resolves once the program listens/connects; rejects with its start error (path in use, permission…). */
  start(): Promise<void> { return this.host.ready; }

  /** Hold messages whose `channel:code` key is listed, or all of them (pause). */
  setGate(all: boolean, keys: string[]): void { this.host.send({ type: 'gate', all, keys }); }
  release(holdId: number): void { this.host.send({ type: 'release', holdId }); }

  /** Stop the program, release the sessions' fds; resolves with the worker's final fd ledger. */
  async stop(): Promise<{ ledger: number; violations: string[] }> {
    await this.host.stop();
    this.closeHostSide();
    return this.workerFinal ?? { ledger: -1, violations: [] };
  }

  /** Resolves when the program stops by itself (maxSessions). */
  async finished(): Promise<void> {
    await this.host.exitedPromise();
    this.closeHostSide();
  }

  private closeHostSide(): void {
    this.tracker.closeAll();
    this.capture?.close();
    this.capture = undefined;
  }
}
