// Back-end program run by the pump worker: one front-end connection at a time, served by a built-in device, reported like the relay.
import * as fs from 'node:fs';
import type { EventPump } from '../node/pump';
import { FrameReader, Outbox, type Frame } from '../node/wire';
import { EPOLLIN, EPOLLOUT, EPOLLRDHUP, EPOLLHUP, EPOLLERR, NativeError, type Native } from '../sys/native';
import { specFor } from '../protocol/table';
import { type Endpoint, type WorkerEvent, type WorkerCommand, type WireRecord, nowMicros } from '../node/workerProtocol';
import { Gate, ledgerStats } from '../node/gate';
import { NotifyCapture } from '../proxy/notifyCapture';
import { BlkDevice, type BlkOptions } from './blk';
import { NetDevice, type NetOptions } from './net';
import { VhostSession, type VmCopy } from './vhost';
import type { Device } from './device';

export interface BackendOptions {
  device: 'blk' | 'net';
  blk?: BlkOptions;
  net?: NetOptions;
  /** listen (default for the CLI: the front-end connects) or connect (the front-end listens, e.g. QEMU server=on). */
  endpoint: Endpoint;
  socketMode?: number;
  socketGroup?: string;
  /** Stop after this many sessions have ended (tests, benches). */
  maxSessions?: number;
  /** Report kick and call counts (`notify` events) every notifyIntervalMs. */
  notifiers?: boolean;
  notifyIntervalMs?: number;
  /** Connect mode: how often to retry while the front-end's socket is absent or refuses (ms, default 200). */
  retryMs?: number;
  /** Guest memory copies through the front-end's mapping (process_vm_readv/writev) where provably safe; default off. */
  vmCopy?: VmCopy;
  /** Capture split rings exactly at each kick and before each call (ring views, opt-in: it costs the data path). */
  ringCapture?: boolean;
}

const RETRYABLE = new Set(['ENOENT', 'ECONNREFUSED', 'EAGAIN']);
/** Reports of one kind per session before they are only counted. */
const REPORT_REPEAT = 3;
const REPORT_MAX = 200;

interface NotifyCount { signals: number; count: number; first: number; last: number; reported: number }

interface Session {
  id: number;
  seq: number;
  fd: number;
  reader: FrameReader;
  out: Outbox;
  reading: boolean;
  wantOut: boolean;
  vhost: VhostSession;
  reports: Map<string, number>;
  reportTotal: number;
  kicks: Map<number, NotifyCount>;
  calls: Map<number, NotifyCount>;
  notifyTimer?: number;
  capture?: NotifyCapture;
}

interface Hold { frame: Frame; seq: number; time: number }

export class BackendProgram {
  private listener?: number;
  private session?: Session;
  private nextSession = 1;
  private endedSessions = 0;
  private readonly gate = new Gate<Hold>();
  private stopping = false;
  private device?: Device;
  private retryAnnounced = false;

  constructor(private readonly pump: EventPump, private readonly native: Native,
    private readonly opts: BackendOptions, private readonly post: (e: WorkerEvent) => void) {}

  start(): void {
    this.device = this.makeDevice();
    const ep = this.opts.endpoint;
    if (ep.mode === 'listen') {
      this.listener = this.native.listenUnix(ep.path, { mode: this.opts.socketMode ?? 0o600, group: this.opts.socketGroup });
      this.post({ kind: 'listening', side: 'frontend', path: ep.path });
      this.armListener();
    } else {
      this.connect();
    }
  }

  private makeDevice(): Device {
    if (this.opts.device === 'blk') {
      if (!this.opts.blk) throw new Error('blk back-end needs an image');
      return new BlkDevice(this.opts.blk);
    }
    if (!this.opts.net) throw new Error('net back-end needs a mode (tap or loopback)');
    return new NetDevice(this.opts.net, this.native, this.pump);
  }

  command(c: WorkerCommand): void {
    switch (c.type) {
      case 'gate':
        this.gate.set(c.all, c.keys);
        break;
      case 'release': {
        const h = this.gate.take(c.holdId);
        if (!h) break;
        if (this.session) {
          this.deliver(h.frame, h.seq, h.time);
          this.setReading(true);
          // Frames may have queued in the socket meanwhile: read them now (level-triggered epoll would too).
          if (this.session) this.onEvent(EPOLLIN);
        } else for (const f of h.frame.fds) this.native.close(f);
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
    this.endSession('back-end stopped');
    if (this.listener !== undefined) {
      this.pump.unwatch(this.listener);
      this.native.close(this.listener);
      try { fs.unlinkSync(this.opts.endpoint.path); } catch { /* already gone */ }
      this.listener = undefined;
    }
    this.device?.close();
    this.pump.stop();
  }

  // ---- connections ---------------------------------------------------------------------------------------------

  private armListener(): void {
    if (this.listener !== undefined && !this.stopping) this.pump.watch(this.listener, EPOLLIN, () => this.onAcceptable());
  }

  private onAcceptable(): void {
    const fd = this.native.accept(this.listener!);
    if (fd < 0) return;
    // One session at a time: further front-ends wait in the listen backlog until this one ends.
    this.pump.unwatch(this.listener!);
    this.post({ kind: 'connection', session: this.nextSession, side: 'frontend', event: 'accepted', detail: this.opts.endpoint.path });
    this.begin(fd);
  }

  private connect(): void {
    if (this.stopping || this.session) return;
    let fd: number;
    try {
      fd = this.native.connectUnix(this.opts.endpoint.path);
    } catch (e) {
      const code = e instanceof NativeError ? e.code : 'EIO';
      if (RETRYABLE.has(code)) {
        if (!this.retryAnnounced) {
          this.retryAnnounced = true;
          this.post({ kind: 'connection', session: this.nextSession, side: 'frontend', event: 'retrying', detail: `${this.opts.endpoint.path}: ${code}` });
        }
        this.pump.setTimer(this.opts.retryMs ?? 200, () => this.connect());
        return;
      }
      this.post({ kind: 'connection', session: this.nextSession, side: 'frontend', event: 'failed', detail: `${this.opts.endpoint.path}: ${(e as Error).message}` });
      this.pump.setTimer(1000, () => this.connect());
      return;
    }
    this.retryAnnounced = false;
    this.post({ kind: 'connection', session: this.nextSession, side: 'frontend', event: 'connected', detail: this.opts.endpoint.path });
    this.begin(fd);
  }

  private begin(fd: number): void {
    const id = this.nextSession++;
    const device = this.device!;
    const s: Session = {
      id, seq: 0, fd, reading: true, wantOut: false,
      reader: new FrameReader(this.native, fd, true),
      out: undefined as unknown as Outbox,
      vhost: undefined as unknown as VhostSession,
      reports: new Map(), reportTotal: 0, kicks: new Map(), calls: new Map(),
    };
    s.out = new Outbox(this.native, fd, true, (on) => { s.wantOut = on; this.pump.modify(fd, this.events(s)); });
    this.session = s;
    this.post({ kind: 'session', session: id, event: 'start' });
    if (this.opts.ringCapture) s.capture = new NotifyCapture(this.native);
    const capture = (at: 'kick' | 'call', vring: number): void => {
      if (!s.capture || this.session !== s) return;
      try {
        const cap = at === 'kick' ? s.capture.onKick(vring, nowMicros()) : s.capture.onCall(vring, nowMicros());
        if (cap && (cap.chains.length || cap.note)) this.post({ kind: 'ringcapture', session: s.id, cap });
      } catch (e) { this.report(s, `ring capture: ${(e as Error).message}`); }
    };
    s.vhost = new VhostSession(this.native, this.pump, device, {
      report: (m) => this.report(s, m),
      kicked: (vring, count) => this.countNotify(s, s.kicks, vring, 1, count),
      ...(s.capture ? { beforeRun: (v: number) => capture('kick', v), usedPublished: (v: number) => capture('call', v) } : {}),
    }, { peerPid: this.native.peerPid?.(fd), vmCopy: this.opts.vmCopy });
    this.pump.watch(fd, this.events(s), (ev) => this.onEvent(ev));
  }

  private events(s: Session): number { return (s.reading ? EPOLLIN : 0) | EPOLLRDHUP | (s.wantOut ? EPOLLOUT : 0); }

  private setReading(on: boolean): void {
    const s = this.session;
    if (!s) return;
    s.reading = on;
    this.pump.modify(s.fd, this.events(s));
  }

  // ---- messages ---------------------------------------------------------------------------------------------------

  private onEvent(events: number): void {
    const s = this.session;
    if (!s) return;
    try {
      if (events & EPOLLOUT) s.out.flush();
      if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) return;
      // Read every complete message now (a front-end may pipeline requests).
      for (let i = 0; i < 64 && this.session === s && !this.gate.held && s.reading; i++) {
        const r = s.reader.step();
        if (r.t === 'more') return;
        if (r.t === 'frame') { this.onFrame(s, r.frame); continue; }
        if (r.t === 'oversize') {
          for (const f of r.header.fds) this.native.close(f);
          this.post({ kind: 'message', rec: this.record(s, r.header, ++s.seq, nowMicros(), 'frontend', { relayProblems: [`payload of ${r.size} bytes: not a vhost-user message`] }) });
          this.endSession(`the front-end sent a ${r.size}-byte payload: connection closed`);
          return;
        }
        if (r.partial) {
          for (const f of r.partial.fds) this.native.close(f);
          this.post({ kind: 'message', rec: this.record(s, r.partial, ++s.seq, nowMicros(), 'frontend', { relayProblems: ['connection closed in the middle of this message'] }) });
        }
        this.endSession('the front-end closed the vhost-user connection');
        return;
      }
      if (this.gate.held && (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) this.endSession('the front-end disconnected while a message was held at a breakpoint');
    } catch (e) {
      this.endSession(`vhost-user connection failed: ${(e as Error).message}`);
    }
  }

  private onFrame(s: Session, frame: Frame): void {
    const seq = ++s.seq;
    const time = nowMicros();
    const code = u32(frame.bytes, 0);
    if (this.gate.matches('main', code)) {
      const id = this.gate.hold({ frame, seq, time });
      this.setReading(false);
      this.post({ kind: 'held', rec: this.record(s, frame, seq, time, 'frontend', { held: id, fds: frame.fds.map((f) => this.native.fdInfo(f)) }) });
      return;
    }
    this.deliver(frame, seq, time);
  }

  /** Report the request, let the device handle it, send and report the reply. */
  private deliver(frame: Frame, seq: number, time: number): void {
    const s = this.session!;
    const rec = this.record(s, frame, seq, time, 'frontend', {});
    if (frame.ctrunc) rec.relayProblems = ['MSG_CTRUNC: the kernel dropped fds that did not fit'];
    const isReply = (u32(frame.bytes, 4) & 0x4) !== 0;
    if (frame.fds.length) {
      rec.fds = frame.fds.map((f) => this.native.fdInfo(f));
      if (!isReply && specFor('main', u32(frame.bytes, 0))?.relay === 'keep-memory-fds') {
        // The host thread reads guest memory for ring views: it gets its own dups.
        rec.kept = frame.fds.map((f) => {
          const d = this.native.dup(f, 'guest memory (for the host thread)');
          this.native.ledger.release(d, 'handover to host thread');
          return d;
        });
      }
    }
    this.post({ kind: 'message', rec });
    if (s.capture && !isReply) {
      try { s.capture.observe(frame.bytes, frame.fds); } catch (e) { this.report(s, `ring capture: ${(e as Error).message}`); }
    }
    const reply = s.vhost.handle(frame.bytes, frame.fds);
    if (!reply || this.session !== s) return;
    try { s.out.push(reply); } catch (e) {
      this.endSession(`sending to the front-end failed: ${(e as Error).message}`);
      return;
    }
    this.post({ kind: 'message', rec: this.record(s, { bytes: reply, fds: [], ctrunc: false }, ++s.seq, nowMicros(), 'backend', {}) });
  }

  private record(s: Session, frame: Frame, seq: number, time: number, from: 'frontend' | 'backend', extra: Partial<WireRecord>): WireRecord {
    return { session: s.id, seq, time, channel: 'main', from, bytes: frame.bytes, fds: [], ...extra };
  }

  // ---- reports and notifier counts ---------------------------------------------------------------------------------

  private report(s: Session, message: string): void {
    const n = (s.reports.get(message) ?? 0) + 1;
    s.reports.set(message, n);
    if (s.reportTotal >= REPORT_MAX) return;
    if (n <= REPORT_REPEAT || (n % 1000 === 0)) {
      s.reportTotal++;
      const text = n > REPORT_REPEAT ? `${message} (${n} times)` : message;
      this.post({ kind: 'error', session: s.id, where: 'device', message: s.reportTotal === REPORT_MAX ? `${text}; further reports of this session are suppressed` : text });
    }
  }

  private countNotify(s: Session, m: Map<number, NotifyCount>, vring: number, signals: number, count: number): void {
    if (!this.opts.notifiers) return;
    let c = m.get(vring);
    const t = nowMicros();
    if (!c) { c = { signals: 0, count: 0, first: t, last: t, reported: 0 }; m.set(vring, c); }
    c.signals += signals;
    c.count += count;
    c.last = t;
    if (s.notifyTimer === undefined) s.notifyTimer = this.pump.setTimer(this.opts.notifyIntervalMs ?? 200, () => { s.notifyTimer = undefined; this.reportNotifiers(s); });
  }

  /** Calls are counted by the rings; kicks as they are read. Both go out as `notify` events, like the proxy's. */
  private reportNotifiers(s: Session): void {
    if (!this.opts.notifiers) return;
    const t = nowMicros();
    for (const vq of s.vhost.queues) {
      const calls = vq.stats.calls;
      let c = s.calls.get(vq.index);
      if (calls && (!c || c.count !== calls)) {
        if (!c) { c = { signals: 0, count: 0, first: t, last: t, reported: 0 }; s.calls.set(vq.index, c); }
        c.signals = calls; c.count = calls; c.last = t;
      }
    }
    for (const [what, m] of [['kick', s.kicks], ['call', s.calls]] as const) {
      for (const [vring, c] of m) {
        if (c.reported === c.signals) continue;
        c.reported = c.signals;
        this.post({ kind: 'notify', session: s.id, vring, what, signals: c.signals, count: c.count, first: c.first, last: c.last });
      }
    }
    // Keep reporting while the session lives and the rings move.
    if (this.session === s && s.notifyTimer === undefined && s.vhost.queues.some((q) => q.started)) {
      s.notifyTimer = this.pump.setTimer(this.opts.notifyIntervalMs ?? 200, () => { s.notifyTimer = undefined; this.reportNotifiers(s); });
    }
  }

  // ---- teardown ------------------------------------------------------------------------------------------------------

  private endSession(reason: string): void {
    const s = this.session;
    if (!s) return;
    this.session = undefined;
    if (s.notifyTimer !== undefined) this.pump.clearTimer(s.notifyTimer);
    s.notifyTimer = undefined;
    this.reportNotifiers(s);
    for (const f of this.gate.drop()?.frame.fds ?? []) this.native.close(f);
    try { s.out.flush(); } catch { /* the front-end is gone */ }
    this.pump.unwatch(s.fd);
    s.out.discard();
    for (const f of s.reader.pendingFds()) this.native.close(f);
    this.native.close(s.fd);
    s.vhost.close();
    s.capture?.close();
    const suppressed = [...s.reports.values()].reduce((n, c) => n + Math.max(0, c - REPORT_REPEAT), 0);
    this.post({ kind: 'session', session: s.id, event: 'end', reason: suppressed ? `${reason} (${suppressed} repeated device reports not shown)` : reason });
    this.endedSessions++;
    if (this.opts.maxSessions && this.endedSessions >= this.opts.maxSessions) { this.stop(); return; }
    if (this.stopping) return;
    if (this.opts.endpoint.mode === 'listen') this.armListener();
    else this.pump.setTimer(this.opts.retryMs ?? 200, () => this.connect());
  }
}

const u32 = (b: Uint8Array, off: number): number => (b[off] | (b[off + 1] << 8) | (b[off + 2] << 16) | (b[off + 3] << 24)) >>> 0;
