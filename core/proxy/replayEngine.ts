// An Engine over a capture file (no worker, no fds): replays the recorded events in order, holding gated messages until released, so stepping works offline.
import { EventEmitter } from 'node:events';
import { readCapture, type CaptureHeader } from './capture';
import { SessionTracker, type EngineEvent } from '../session/tracker';
import { gateKey, type WorkerEvent } from '../node/workerProtocol';
import type { DeviceType } from '../protocol/features';
import type { Engine } from '../engine';

export interface ReplayOptions {
  capture: string;
  /** Device type for decoding (default: the capture header's, else inferred). */
  device?: DeviceType;
  /** Events replayed per turn of the event loop before yielding (default 64). */
  chunk?: number;
}

export class ReplayEngine extends EventEmitter<{ event: [EngineEvent] }> implements Engine {
  readonly tracker: SessionTracker;
  header?: CaptureHeader;
  private events: WorkerEvent[] = [];
  private pos = 0;
  private gateAll = false;
  private gateKeys = new Set<string>();
  /** The message waiting at the gate: events[pos], not yet handed to the tracker. */
  private held?: number;
  private nextHold = 1;
  private started = false;
  private stopped = false;
  private scheduled = false;
  private done = false;
  private resolveFinished!: () => void;
  private readonly finishedP = new Promise<void>((r) => { this.resolveFinished = r; });

  private loadError?: Error;

  /** Reads the capture now (so the tracker knows its device type); a read error is reported by start(). */
  constructor(readonly opts: ReplayOptions) {
    super();
    try {
      const cap = readCapture(opts.capture);
      this.header = cap.header;
      this.events = cap.events;
    } catch (e) {
      this.loadError = e as Error;
    }
    const recorded = this.header?.device;
    const device = opts.device ?? (recorded === 'net' || recorded === 'blk' || recorded === 'fs' ? recorded : undefined);
    this.tracker = new SessionTracker({ device, keepEnded: true });
    this.tracker.on('event', (e) => this.emit('event', e));
  }

  /** Number of recorded events and how many have been replayed. */
  get progress(): { replayed: number; total: number } { return { replayed: this.pos, total: this.events.length }; }

  /** Rejects with the capture's read error (CaptureError, ENOENT…); else starts replaying on the next turn. */
  async start(): Promise<void> {
    if (this.loadError) throw this.loadError;
    if (this.started) return;
    this.started = true;
    this.schedule();
  }

  setGate(all: boolean, keys: string[]): void {
    this.gateAll = all;
    this.gateKeys = new Set(keys);
  }

  release(holdId: number): void {
    if (this.held === undefined || this.held !== holdId) return;
    this.held = undefined;
    this.tracker.handle(this.events[this.pos++]);
    this.schedule();
  }

  async stop(): Promise<{ ledger: number; violations: string[] }> {
    if (!this.stopped) {
      this.stopped = true;
      this.held = undefined;
      this.tracker.closeAll();
      this.finish();
    }
    return { ledger: -1, violations: [] };
  }

  finished(): Promise<void> { return this.finishedP; }

  private finish(): void {
    if (this.done) return;
    this.done = true;
    this.emit('event', { kind: 'stopped' });
    this.resolveFinished();
  }

  private schedule(): void {
    if (this.scheduled || this.stopped || !this.started) return;
    this.scheduled = true;
    setImmediate(() => { this.scheduled = false; this.run(); });
  }

  private run(): void {
    const chunk = this.opts.chunk ?? 64;
    for (let n = 0; n < chunk; n++) {
      if (this.stopped || this.held !== undefined) return;
      if (this.pos >= this.events.length) { this.finish(); return; }
      const e = this.events[this.pos];
      if (e.kind === 'message' && (this.gateAll || (this.gateKeys.size && this.gateKeys.has(gateKey(e.rec.channel, requestCode(e.rec.bytes)))))) {
        this.held = this.nextHold++;
        this.tracker.handle({ kind: 'held', rec: { ...e.rec, held: this.held } });
        return;
      }
      this.pos++;
      this.tracker.handle(e);
    }
    this.schedule();
  }
}

/** The header's request code (u32 LE at 0), -1 for a truncated header. */
const requestCode = (b: Uint8Array): number => (b.byteLength < 4 ? -1 : (b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)) >>> 0);
