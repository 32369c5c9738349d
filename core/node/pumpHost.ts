// Host-thread handle on a pump worker: spawns it, sends typed commands (ringing its doorbell), relays its events.
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker, MessageChannel, type MessagePort } from 'node:worker_threads';
import { FfiNative } from './ffi';
import type { ProgramName } from './programs';
import type { WorkerCommand, WorkerEvent, WorkerPost } from './workerProtocol';

let host: FfiNative | undefined;
/** The host thread's native layer (one ledger for every fd the host thread owns). */
export function hostNative(): FfiNative {
  return (host ??= new FfiNative());
}

export interface PumpHostEvents { event: [WorkerEvent]; exit: [number] }

export class PumpHost extends EventEmitter<PumpHostEvents> {
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly doorbell: number;
  private readonly one = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);
  private exited = false;
  private stopped?: Promise<{ ledger: number; violations: string[] }>;
  private nextRequest = 1;
  readonly ready: Promise<void>;

  constructor(program: ProgramName, options: unknown, readonly native: FfiNative = hostNative()) {
    super();
    // The host thread must load the ffi-rs addon before any worker does: when a worker is the first to load it,
    // the process segfaults as that worker exits (measured with ffi-rs 1.3.7 on Node 20). `native` is built here.
    this.doorbell = native.eventfd(0, `pump doorbell (${program})`);
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    this.worker = new Worker(path.join(__dirname, 'pumpWorker.js'), {
      workerData: { program, options, doorbell: this.doorbell, commands: port2 },
      transferList: [port2],
    });
    this.ready = new Promise((resolve, reject) => {
      const onEv = (e: WorkerEvent): void => {
        if (e.kind === 'ready') { this.off('event', onEv); resolve(); }
        else if (e.kind === 'error' && e.where === 'start') { this.off('event', onEv); reject(new Error(e.message)); }
      };
      this.on('event', onEv);
    });
    this.ready.catch(() => undefined);
    this.worker.on('message', (p: WorkerPost) => {
      if (p.kind === 'batch') for (const e of p.events) this.emit('event', e);
      else this.emit('event', p);
    });
    this.worker.on('error', (err) => this.emit('event', { kind: 'error', where: 'worker', message: err.stack ?? String(err) }));
    this.worker.on('exit', (code) => {
      this.exited = true;
      this.port.close();
      this.native.close(this.doorbell);
      this.emit('exit', code);
    });
  }

  send(c: WorkerCommand): void {
    if (this.exited) return;
    this.port.postMessage(c);
    fs.writeSync(this.doorbell, this.one, 0, 8);
  }

  /** The worker's fd ledger (count, by kind, violations). */
  stats(): Promise<Extract<WorkerEvent, { kind: 'stats' }>> {
    const requestId = this.nextRequest++;
    return new Promise((resolve) => {
      const onEv = (e: WorkerEvent): void => {
        if (e.kind === 'stats' && e.requestId === requestId) { this.off('event', onEv); resolve(e); }
      };
      this.on('event', onEv);
      this.send({ type: 'stats', requestId });
    });
  }

  /** Stop the program and the worker; resolves with the worker's final fd ledger. */
  stop(): Promise<{ ledger: number; violations: string[] }> {
    this.stopped ??= new Promise((resolve) => {
      let final = { ledger: -1, violations: [] as string[] };
      this.on('event', (e) => { if (e.kind === 'stopped') final = { ledger: e.ledger, violations: e.violations }; });
      if (this.exited) { resolve(final); return; }
      this.once('exit', () => resolve(final));
      this.send({ type: 'stop' });
    });
    return this.stopped;
  }

  /** Resolves when the worker has exited on its own (e.g. maxSessions reached). */
  exitedPromise(): Promise<void> {
    return this.exited ? Promise.resolve() : new Promise((r) => this.once('exit', () => r()));
  }
}
