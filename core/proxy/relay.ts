// Proxy program run by the pump worker: pairs front-end and back-end connections and relays every message and fd.
// It reads only headers (code, flags, vring index) to decide fd substitutions; all decoding happens on the host thread.
import * as fs from 'node:fs';
import type { EventPump } from '../node/pump';
import { FrameReader, Outbox, type Frame } from '../node/wire';
import { EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLLHUP, EPOLLERR, NativeError, type Native } from '../sys/native';
import { specFor, otherSide, type Channel, type Side } from '../protocol/table';
import { type RelayOptions, type WorkerEvent, type WorkerCommand, type WireRecord, nowMicros } from '../node/workerProtocol';
import { Gate, ledgerStats } from '../node/gate';
import { NotifyCapture } from './notifyCapture';

const RETRYABLE = new Set(['ENOENT', 'ECONNREFUSED', 'EAGAIN']);

class Conn {
  readonly reader: FrameReader;
  readonly out: Outbox;
  peer!: Conn;
  raw = false;
  reading = true;
  wantOut = false;
  constructor(readonly native: Native, readonly fd: number, readonly owned: boolean,
    readonly channel: Channel, readonly from: Side, private readonly update: (c: Conn) => void) {
    this.reader = new FrameReader(native, fd, owned);
    this.out = new Outbox(native, fd, owned, (on) => { this.wantOut = on; this.update(this); });
  }
  get events(): number { return (this.reading ? EPOLLIN : 0) | EPOLLRDHUP | (this.wantOut ? EPOLLOUT : 0); }
}

type What = 'kick' | 'call' | 'err';
interface Interposer {
  vring: number; what: What;
  /** The front-end's eventfd (kept) and ours (the back-end got a dup of it). */
  orig: number; ours: number;
  signals: number; count: number; first: number; last: number; reported: number;
}

interface Session {
  id: number;
  seq: number;
  main: Conn[];
  channel: Conn[];
  interposers: Map<string, Interposer>;
  notifyTimer?: number;
  /** Exact ring capture at kick/call time (opt-in). */
  capture?: NotifyCapture;
}

interface Hold { conn: Conn; frame: Frame; seq: number; time: number; name: string }

export class Relay {
  private readonly listeners: Partial<Record<Side, number>> = {};
  private readonly pending: Partial<Record<Side, number>> = {};
  private session?: Session;
  private nextSession = 1;
  private endedSessions = 0;
  private readonly gate = new Gate<Hold>();
  private stopping = false;
  private readonly ev8 = Buffer.alloc(8);

  constructor(private readonly pump: EventPump, private readonly native: Native,
    private readonly opts: RelayOptions, private readonly post: (e: WorkerEvent) => void) {}

  start(): void {
    for (const side of ['frontend', 'backend'] as const) {
      const ep = this.opts[side];
      if (ep.mode !== 'listen') continue;
      this.listeners[side] = this.native.listenUnix(ep.path, { mode: this.opts.socketMode ?? 0o600, group: this.opts.socketGroup });
      this.post({ kind: 'listening', side, path: ep.path });
      this.armListener(side);
    }
    if (this.opts.frontend.mode === 'connect' && this.opts.backend.mode === 'connect') this.connect('backend', Infinity);
  }

  command(c: WorkerCommand): void {
    switch (c.type) {
      case 'gate':
        this.gate.set(c.all, c.keys);
        break;
      case 'release': {
        const h = this.gate.take(c.holdId);
        if (!h) break;
        this.deliver(h.conn, h.frame, h.seq, h.time);
        this.setReading(true);
        break;
      }
      case 'stats':
        this.post(ledgerStats(this.native, c.requestId));
        break;
      case 'stop':
        this.stop();
        break;
      case 'program':
        break;
    }
  }

  stop(): void {
    if (this.stopping) return;
    this.stopping = true;
    this.endSession('proxy stopped');
    for (const side of ['frontend', 'backend'] as const) {
      const p = this.pending[side];
      if (p !== undefined) { this.pump.unwatch(p); this.native.close(p); delete this.pending[side]; }
      const l = this.listeners[side];
      if (l !== undefined) {
        this.pump.unwatch(l);
        this.native.close(l);
        try { fs.unlinkSync(this.opts[side].path); } catch { /* already gone */ }
        delete this.listeners[side];
      }
    }
    this.pump.stop();
  }

  // ---- connection set-up ------------------------------------------------------------------------------------

  private armListener(side: Side): void {
    const l = this.listeners[side];
    if (l !== undefined && !this.stopping) this.pump.watch(l, EPOLLIN, () => this.onAcceptable(side));
  }

  private onAcceptable(side: Side): void {
    const l = this.listeners[side]!;
    const fd = this.native.accept(l);
    if (fd < 0) return;
    // One session at a time: further connections wait in the listen backlog until this one ends.
    this.pump.unwatch(l);
    this.pending[side] = fd;
    this.post({ kind: 'connection', session: this.nextSession, side, event: 'accepted', detail: this.opts[side].path });
    // Notice a peer that gives up before its partner is there; its bytes stay queued in the kernel meanwhile.
    this.pump.watch(fd, EPOLLRDHUP, () => this.dropPending(side, `the ${side} closed before the session started`));
    const other = otherSide(side);
    if (this.pending[other] !== undefined) this.begin();
    else if (this.opts[other].mode === 'connect') this.connect(other, performance.now() + (this.opts.connectTimeoutMs ?? 3000));
  }

  private dropPending(side: Side, why: string): void {
    const fd = this.pending[side];
    if (fd === undefined) return;
    this.pump.unwatch(fd);
    this.native.close(fd);
    delete this.pending[side];
    this.post({ kind: 'connection', session: this.nextSession, side, event: 'closed', detail: why });
    this.armListener(side);
  }

  private connect(side: Side, deadline: number, announced = false): void {
    if (this.stopping || this.session) return;
    const other = otherSide(side);
    const bothConnect = this.opts[other].mode === 'connect';
    if (!bothConnect && this.pending[other] === undefined) return; // the partner left meanwhile
    let fd: number;
    try {
      fd = this.native.connectUnix(this.opts[side].path);
    } catch (e) {
      const code = e instanceof NativeError ? e.code : 'EIO';
      if (RETRYABLE.has(code) && performance.now() < deadline) {
        if (!announced) this.post({ kind: 'connection', session: this.nextSession, side, event: 'retrying', detail: `${this.opts[side].path}: ${code}` });
        this.pump.setTimer(bothConnect ? 500 : 100, () => this.connect(side, deadline, true));
        return;
      }
      this.post({ kind: 'connection', session: this.nextSession, side, event: 'failed', detail: `${this.opts[side].path}: ${(e as Error).message}` });
      if (!bothConnect) this.dropPending(other, `no ${side} to pair with (${code})`);
      return;
    }
    this.pending[side] = fd;
    this.post({ kind: 'connection', session: this.nextSession, side, event: 'connected', detail: this.opts[side].path });
    if (this.pending[other] !== undefined) this.begin();
    else if (bothConnect) this.connect(other, Infinity);
  }

  private begin(): void {
    const feFd = this.pending.frontend!, beFd = this.pending.backend!;
    delete this.pending.frontend;
    delete this.pending.backend;
    this.pump.unwatch(feFd);
    this.pump.unwatch(beFd);
    const s: Session = { id: this.nextSession++, seq: 0, main: [], channel: [], interposers: new Map() };
    if (this.opts.notifiers && this.opts.ringCapture) s.capture = new NotifyCapture(this.native);
    this.session = s;
    const fe = this.conn(feFd, true, 'main', 'frontend');
    const be = this.conn(beFd, true, 'main', 'backend');
    fe.peer = be;
    be.peer = fe;
    s.main.push(fe, be);
    this.post({ kind: 'session', session: s.id, event: 'start' });
  }

  private conn(fd: number, owned: boolean, channel: Channel, from: Side): Conn {
    const c = new Conn(this.native, fd, owned, channel, from, (x) => this.pump.modify(x.fd, x.events));
    this.pump.watch(fd, c.events, (events) => this.onEvent(c, events));
    return c;
  }

  // ---- relaying ----------------------------------------------------------------------------------------------

  private onEvent(c: Conn, events: number): void {
    try {
      if (events & EPOLLOUT) c.out.flush();
      if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) return;
      const held = this.gate.held;
      if (held) {
        if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
          this.closeConn(c, `the ${c.from} disconnected while ${held.name} was held at a breakpoint`);
        }
        return;
      }
      if (c.raw) return this.relayRaw(c);
      const r = c.reader.step();
      switch (r.t) {
        case 'more': return;
        case 'frame': return this.onFrame(c, r.frame);
        case 'oversize':
          c.raw = true;
          this.post({ kind: 'error', session: this.session?.id, where: 'relay', message: `the ${c.from} sent a ${r.size}-byte payload: framing abandoned, relaying raw bytes on this ${c.channel} connection` });
          this.deliver(c, r.header, ++this.session!.seq, nowMicros(), ['payload over the relay cap: raw relay from here on']);
          return;
        case 'eof':
          if (r.partial) this.deliver(c, r.partial, ++this.session!.seq, nowMicros(), ['connection closed in the middle of this message']);
          this.closeConn(c, `the ${c.from} closed the ${c.channel === 'main' ? 'vhost-user' : 'back-end channel'} connection`);
          return;
      }
    } catch (e) {
      this.closeConn(c, `${c.channel} connection to the ${c.from} failed: ${(e as Error).message}`);
    }
  }

  private relayRaw(c: Conn): void {
    const buf = new Uint8Array(65536);
    const r = this.native.recvMsg(c.fd, buf, 0, buf.byteLength);
    if (r.n < 0) return;
    if (r.n === 0) { this.closeConn(c, `the ${c.from} closed the connection (raw relay)`); return; }
    c.peer.out.push(buf.slice(0, r.n), r.fds);
  }

  private onFrame(c: Conn, frame: Frame): void {
    const s = this.session!;
    const seq = ++s.seq;
    const time = nowMicros();
    const code = u32(frame.bytes, 0);
    if (this.gate.matches(c.channel, code)) {
      const name = specFor(c.channel, code)?.name ?? `request ${code}`;
      const id = this.gate.hold({ conn: c, frame, seq, time, name });
      this.setReading(false);
      this.post({ kind: 'held', rec: this.record(c, frame, seq, time, { held: id, fds: frame.fds.map((f) => this.native.fdInfo(f)) }) });
      return;
    }
    this.deliver(c, frame, seq, time);
  }

  /** Relay one message to the other side, applying fd substitutions, then report it. */
  private deliver(c: Conn, frame: Frame, seq: number, time: number, relayProblems?: string[]): void {
    const rec = this.record(c, frame, seq, time, {});
    if (relayProblems) rec.relayProblems = relayProblems;
    if (frame.ctrunc) (rec.relayProblems ??= []).push('MSG_CTRUNC: the kernel dropped fds that did not fit');
    let send = frame.fds;
    const cap = this.session?.capture;
    if (cap && c.channel === 'main' && c.from === 'frontend') {
      try { cap.observe(frame.bytes, frame.fds); } catch (e) { this.captureFault(e); }
    }
    if (frame.fds.length) {
      rec.fds = frame.fds.map((f) => this.native.fdInfo(f)); // before they leave us
      send = this.substitute(c, frame, rec);
    }
    let err: Error | undefined;
    try { c.peer.out.push(frame.bytes, send); } catch (e) { err = e as Error; }
    this.post({ kind: 'message', rec });
    if (err) this.closeConn(c.peer, `sending to the ${c.peer.from} failed: ${err.message}`);
  }

  private record(c: Conn, frame: Frame, seq: number, time: number, extra: Partial<WireRecord>): WireRecord {
    return { session: this.session!.id, seq, time, channel: c.channel, from: c.from, bytes: frame.bytes, fds: [], ...extra };
  }

  /** Header-level fd policy from the message table: keep memory fds, follow the back-end channel, interpose notifiers. */
  private substitute(c: Conn, frame: Frame, rec: WireRecord): number[] {
    const fds = frame.fds;
    if (c.channel !== 'main' || c.from !== 'frontend' || (u32(frame.bytes, 4) & 0x4)) return fds;
    const spec = specFor('main', u32(frame.bytes, 0));
    switch (spec?.relay) {
      case 'keep-memory-fds':
        rec.kept = fds.map((f) => {
          const d = this.native.dup(f, 'guest memory (for the host thread)');
          this.native.ledger.release(d, 'handover to host thread');
          return d;
        });
        return fds;
      case 'backend-channel':
        if (fds.length !== 1) return fds;
        rec.substituted = ['back-end channel socketpair'];
        return [this.openBackendChannel(fds[0])];
      case 'notifier': {
        if (!this.opts.notifiers || fds.length !== 1 || frame.bytes.byteLength < 20) return fds;
        const what: What = spec.code === 12 ? 'kick' : spec.code === 13 ? 'call' : 'err';
        rec.substituted = [`${what} eventfd`];
        return [this.interpose(frame.bytes[12], what, fds[0])];
      }
      default:
        return fds;
    }
  }

  private openBackendChannel(orig: number): number {
    const s = this.session!;
    for (const old of s.channel) this.dropConn(old);
    s.channel = [];
    const [ours, theirs] = this.native.socketpair('back-end channel');
    const fe = this.conn(orig, false, 'backend', 'frontend');
    const be = this.conn(ours, false, 'backend', 'backend');
    fe.peer = be;
    be.peer = fe;
    s.channel.push(fe, be);
    this.post({ kind: 'channel', session: s.id, event: 'open' });
    return theirs;
  }

  private interpose(vring: number, what: What, orig: number): number {
    const s = this.session!;
    const key = `${vring}:${what}`;
    const old = s.interposers.get(key);
    if (old) this.dropInterposer(old);
    const ours = this.native.eventfd(0, `${what} ${vring} (interposed)`);
    const ip: Interposer = { vring, what, orig, ours, signals: 0, count: 0, first: 0, last: 0, reported: 0 };
    s.interposers.set(key, ip);
    // kick: the front-end signals orig, the back-end waits on ours; call/err: the other way round.
    const [src, dst] = what === 'kick' ? [orig, ours] : [ours, orig];
    this.pump.watch(src, EPOLLIN, () => this.relaySignal(ip, src, dst));
    return this.native.dup(ours, `${what} ${vring} (sent to the back-end)`);
  }

  private relaySignal(ip: Interposer, src: number, dst: number): void {
    let n: number;
    try { n = fs.readSync(src, this.ev8, 0, 8, null); } catch { return; } // EAGAIN: nothing pending after all
    if (n !== 8) return;
    const s = this.session!;
    if (s.capture && ip.what !== 'err') {
      // Walk the ring while its buffers are guaranteed valid: the other side has not been woken yet.
      try {
        const cap = ip.what === 'kick' ? s.capture.onKick(ip.vring, nowMicros()) : s.capture.onCall(ip.vring, nowMicros());
        if (cap && (cap.chains.length || cap.note)) this.post({ kind: 'ringcapture', session: s.id, cap });
      } catch (e) { this.captureFault(e); }
    }
    try { fs.writeSync(dst, this.ev8, 0, 8); } catch (e) {
      this.post({ kind: 'error', session: this.session?.id, where: 'notifier', message: `relaying ${ip.what} on vring ${ip.vring} failed: ${(e as Error).message}` });
      return;
    }
    const t = nowMicros();
    if (!ip.signals) ip.first = t;
    ip.last = t;
    ip.signals++;
    ip.count += Number(this.ev8.readBigUInt64LE(0));
    if (s.notifyTimer === undefined) s.notifyTimer = this.pump.setTimer(this.opts.notifyIntervalMs ?? 200, () => { s.notifyTimer = undefined; this.reportNotifiers(s); });
  }

  private captureFault(e: unknown): void {
    this.post({ kind: 'error', session: this.session?.id, where: 'ring capture', message: (e as Error).message });
  }

  private reportNotifiers(s: Session): void {
    for (const ip of s.interposers.values()) {
      if (ip.reported === ip.signals) continue;
      ip.reported = ip.signals;
      this.post({ kind: 'notify', session: s.id, vring: ip.vring, what: ip.what, signals: ip.signals, count: ip.count, first: ip.first, last: ip.last });
    }
  }

  private dropInterposer(ip: Interposer): void {
    this.pump.unwatch(ip.what === 'kick' ? ip.orig : ip.ours);
    this.native.close(ip.orig);
    this.native.close(ip.ours);
  }

  private setReading(on: boolean): void {
    const s = this.session;
    if (!s) return;
    for (const c of [...s.main, ...s.channel]) { c.reading = on; this.pump.modify(c.fd, c.events); }
  }

  // ---- teardown ------------------------------------------------------------------------------------------------

  private dropConn(c: Conn): void {
    try { c.out.flush(); } catch { /* peer gone */ }
    this.pump.unwatch(c.fd);
    c.out.discard();
    for (const f of c.reader.pendingFds()) this.native.close(f);
    this.native.close(c.fd);
  }

  /** A connection ended: the back-end channel closes alone; the main connection takes the session with it. */
  private closeConn(c: Conn, reason: string): void {
    const s = this.session;
    if (!s) return;
    if (c.channel === 'backend' && !this.gate.held) {
      for (const x of s.channel) this.dropConn(x);
      s.channel = [];
      this.post({ kind: 'channel', session: s.id, event: 'closed', reason });
      return;
    }
    this.endSession(reason);
  }

  private endSession(reason: string): void {
    const s = this.session;
    if (!s) return;
    this.session = undefined;
    if (s.notifyTimer !== undefined) this.pump.clearTimer(s.notifyTimer);
    this.reportNotifiers(s);
    for (const f of this.gate.drop()?.frame.fds ?? []) this.native.close(f);
    for (const c of [...s.main, ...s.channel]) this.dropConn(c);
    for (const ip of s.interposers.values()) this.dropInterposer(ip);
    s.capture?.close();
    this.post({ kind: 'session', session: s.id, event: 'end', reason });
    this.endedSessions++;
    if (this.opts.maxSessions && this.endedSessions >= this.opts.maxSessions) { this.stop(); return; }
    if (this.stopping) return;
    this.armListener('frontend');
    this.armListener('backend');
    if (this.opts.frontend.mode === 'connect' && this.opts.backend.mode === 'connect') {
      this.pump.setTimer(500, () => this.connect('backend', Infinity));
    }
  }
}

const u32 = (b: Uint8Array, off: number): number => (b[off] | (b[off + 1] << 8) | (b[off + 2] << 16) | (b[off + 3] << 24)) >>> 0;
