// Turns relay events into engine events: one Session per connection pair, decoded messages, state changes, holds.
import { EventEmitter } from 'node:events';
import { Session, type SessionMessage, type SessionState, type StateChange } from './session';
import type { DeviceType } from '../protocol/features';
import type { WorkerEvent, WireRecord } from '../node/workerProtocol';
import type { Side } from '../protocol/table';
import type { RingCapture } from '../proxy/notifyCapture';

export type EngineEvent =
  | { kind: 'listening'; side: Side; path: string }
  | { kind: 'connection'; session: number; side: Side; event: string; detail?: string }
  | { kind: 'session'; session: number; event: 'start' | 'end'; reason?: string; summary?: SessionSummary }
  | { kind: 'message'; msg: SessionMessage; changes: StateChange[]; state: SessionState }
  | { kind: 'held'; holdId: number; msg: SessionMessage }
  | { kind: 'channel'; session: number; event: 'open' | 'closed'; reason?: string }
  | { kind: 'notify'; session: number; vring: number; what: 'kick' | 'call' | 'err'; signals: number; count: number; first: number; last: number }
  | { kind: 'ringcapture'; session: number; cap: RingCapture }
  | { kind: 'error'; session?: number; where: string; message: string }
  | { kind: 'stopped' };

export interface SessionSummary {
  messages: number;
  fromFrontend: number;
  fromBackend: number;
  problems: number;
  missingReplies: string[];
}

export interface TrackerOptions {
  device?: DeviceType;
  /** Take ownership of a kept fd arriving from the worker (host ledger). */
  adopt?: (fd: number) => void;
  closeFd?: (fd: number) => void;
  /** Keep sessions' memory fds open after they end (the ring view of a finished session). Default false. */
  keepEnded?: boolean;
}

export class SessionTracker extends EventEmitter<{ event: [EngineEvent] }> {
  readonly sessions = new Map<number, Session>();
  current?: Session;
  private readonly closeFd: (fd: number) => void;

  constructor(private readonly opts: TrackerOptions = {}) {
    super();
    this.closeFd = opts.closeFd ?? (() => undefined);
  }

  private session(id: number): Session {
    let s = this.sessions.get(id);
    if (!s) {
      s = new Session(id, { closeFd: this.closeFd }, this.opts.device ?? 'unknown');
      this.sessions.set(id, s);
      this.current = s;
    }
    return s;
  }

  /**
   * Emit to listeners; a listener's fault (a printer, a view) is reported as an error event and never reaches the
   * relay's message handler: the session being watched must not die of it.
   */
  private send(e: EngineEvent): void {
    try {
      this.emit('event', e);
    } catch (err) {
      if (e.kind === 'error') return;
      try { this.emit('event', { kind: 'error', where: `${e.kind} listener`, message: (err as Error).stack ?? String(err) }); } catch { /* give up quietly */ }
    }
  }

  /** Decode a held message for display and breakpoint conditions, without changing any state. */
  preview(rec: WireRecord): SessionMessage {
    const s = this.session(rec.session);
    const d = s.peek(rec.channel, rec.from, rec.bytes, rec.fds.length);
    return { ...d, session: rec.session, seq: rec.seq, time: rec.time, bytes: rec.bytes, fdInfo: rec.fds, category: d.spec?.category };
  }

  handle(e: WorkerEvent): void {
    try {
      this.dispatch(e);
    } catch (err) {
      // State tracking must never take the process (and the session it relays) down.
      this.send({ kind: 'error', where: 'session tracking', message: (err as Error).stack ?? String(err) });
    }
  }

  private dispatch(e: WorkerEvent): void {
    switch (e.kind) {
      case 'listening': case 'connection': case 'notify': case 'error': case 'ringcapture':
        this.send(e);
        return;
      case 'session': {
        if (e.event === 'start') {
          this.session(e.session);
          this.send({ kind: 'session', session: e.session, event: 'start' });
          return;
        }
        const s = this.sessions.get(e.session);
        const summary = s ? this.summary(s) : undefined;
        if (s && !this.opts.keepEnded) s.close();
        this.send({ kind: 'session', session: e.session, event: 'end', reason: e.reason, summary });
        return;
      }
      case 'channel': {
        const s = this.sessions.get(e.session);
        if (s && e.event === 'closed') s.markBackendChannelClosed();
        this.send(e);
        return;
      }
      case 'message': {
        for (const fd of e.rec.kept ?? []) this.opts.adopt?.(fd);
        const s = this.session(e.rec.session);
        const { msg, changes } = s.ingest(e.rec);
        this.send({ kind: 'message', msg, changes, state: s.state });
        return;
      }
      case 'held':
        this.send({ kind: 'held', holdId: e.rec.held!, msg: this.preview(e.rec) });
        return;
      case 'stopped':
        this.send({ kind: 'stopped' });
        return;
      default:
        return;
    }
  }

  summary(s: Session): SessionSummary {
    const msgs = s.messages;
    return {
      messages: msgs.length,
      fromFrontend: msgs.filter((m) => m.from === 'frontend').length,
      fromBackend: msgs.filter((m) => m.from === 'backend').length,
      problems: msgs.reduce((n, m) => n + m.problems.length, 0),
      missingReplies: s.missingReplies().map((m) => `#${m.seq} ${m.name}`),
    };
  }

  closeAll(): void {
    for (const s of this.sessions.values()) s.close();
  }
}
