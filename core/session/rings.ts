// Ring observation for any engine: watches each live vring of each session through its memory fds, on demand or polled.
import { EventEmitter } from 'node:events';
import { sessionMemory, type DeviceMemory } from '../memory/iotlb';
import { FEATURE_BIT, hasBit } from '../protocol/features';
import { BufferMemory, type BufferRegionSpec } from '../memory/bufferMemory';
import { decodePayload } from '../virtio/payload';
import type { CapturedBytes, RingCapture } from '../proxy/notifyCapture';
import { RingWatcher, type WatchEvent } from '../virtio/watch';
import { ringConfigFromVring, snapshotRing, type RingSnapshot } from '../virtio/snapshot';
import { RingError, type Chain } from '../virtio/ring';
import type { Payload } from '../virtio/payload';
import type { Engine } from '../engine';
import type { Session, Vring } from './session';
import type { EngineEvent } from './tracker';

export interface ChainView {
  head: number;
  state: 'inflight' | 'used';
  descriptors: { addr: bigint; len: number; flags: number; write: boolean }[];
  readable: number;
  writable: number;
  usedLen?: number;
  device?: Payload;
  error?: string;
}

/** New ring activity seen by one poll of one vring (`kind:"ring"` in the CLI's JSON). */
export interface RingEvent {
  kind: 'ring';
  session: number;
  vring: number;
  time: number;
  /** Split: avail/used positions after this poll (free-running u16); packed: slot positions. */
  availIdx?: number;
  usedIdx?: number;
  chains: ChainView[];
  errors: string[];
  resync?: string;
  /** Entries seen move past but not decoded (sampling at high rates). */
  skipped?: { avail: number; used: number };
  /** How it was seen: polled, or captured when the driver kicked / the device called (exact). */
  source: 'poll' | 'kick' | 'call';
}

/** Guest memory made of the bytes captured with a ring event (overlapping reads merged); nothing else is readable. */
export function capturedMemory(bytes: readonly CapturedBytes[]): BufferMemory {
  const sorted = [...bytes].sort((a, b) => (a.addr < b.addr ? -1 : a.addr > b.addr ? 1 : 0));
  const regions: BufferRegionSpec[] = [];
  for (const c of sorted) {
    const last = regions[regions.length - 1];
    const lastEnd = last ? last.guestPhysAddr + BigInt(last.bytes.byteLength) : -1n;
    if (last && c.addr <= lastEnd) {
      const end = c.addr + BigInt(c.bytes.byteLength);
      if (end > lastEnd) {
        const merged = new Uint8Array(Number(end - last.guestPhysAddr));
        merged.set(last.bytes);
        merged.set(c.bytes, Number(c.addr - last.guestPhysAddr));
        last.bytes = merged;
      }
      continue;
    }
    regions.push({ guestPhysAddr: c.addr, userspaceAddr: c.addr, bytes: c.bytes.slice() });
  }
  return new BufferMemory(regions, { writable: false });
}

export function chainView(c: Chain, payload?: unknown): ChainView {
  const v: ChainView = {
    head: c.head, state: c.state, readable: c.readable, writable: c.writable,
    descriptors: c.descs.map((d) => ({ addr: d.addr, len: d.len, flags: d.flags, write: d.write })),
  };
  if (c.usedLen !== undefined) v.usedLen = c.usedLen;
  const p = (payload ?? c.payload) as Payload | undefined;
  if (p) v.device = p;
  if (c.error) v.error = c.error.message;
  return v;
}

interface Watch { watcher: RingWatcher; key: string; pending?: RingEvent; debtMs: number }

export interface RingObserverOptions {
  /** Polling rate; 0 disables polling (snapshots on demand only). */
  pollHz: number;
  /** Most new entries decoded per poll and direction (the newest); the rest are counted as skipped. Default 16. */
  sample?: number;
  /**
   * CPU budget of polling, as a fraction of one core shared by every watched ring (default 0.02). Each poll's
   * measured cost (reading, decoding, and reporting its events) stretches the delay to the next poll so that the
   * observer stays within it: a busy data plane is sampled less often instead of losing the CPU it runs on.
   * Polls are never more frequent than pollHz nor rarer than once a second. The cost is wall time on purpose: a
   * poll that was preempted means the CPUs are contended, and backing off further is what the data plane needs
   * (charging CPU time instead was measured: 2.8% of a core against the 2% budget, and a watch ratio of 0.95).
   */
  cpuBudget?: number;
}

/** Delay before the next poll of one of `rings` watched rings, given what the last poll and its report cost. */
export function paceDelay(spentMs: number, intervalMs: number, budget: number, rings: number): number {
  if (!(budget > 0) || budget >= 1) return intervalMs;
  const share = budget / Math.max(1, rings);
  return Math.min(Math.max(intervalMs, 1000), Math.max(intervalMs, spentMs / share - spentMs));
}

export class RingObserver extends EventEmitter<{ ring: [RingEvent]; fault: [Error] }> {
  private readonly memories = new Map<number, DeviceMemory>();
  private readonly watches = new Map<string, Watch>();
  private readonly onEvent = (e: EngineEvent): void => {
    try { this.handle(e); } catch (err) { this.emit('fault', err as Error); }
  };

  /** Ring events to listeners; a listener's fault is reported on 'fault', never thrown into the engine. */
  private send(e: RingEvent): void {
    // virtio-fs offers nothing to infer it from in the handshake; its FUSE headers say what it is.
    if (e.chains.some((c) => c.device?.kind === 'fs')) this.engine.tracker.sessions.get(e.session)?.recognise('fs');
    try { this.emit('ring', e); } catch (err) { this.emit('fault', err as Error); }
  }

  constructor(private readonly engine: Engine, private readonly opts: RingObserverOptions) {
    super();
    engine.on('event', this.onEvent);
  }

  private memory(s: Session): DeviceMemory {
    let m = this.memories.get(s.state.id);
    if (!m) { m = sessionMemory(s.state); this.memories.set(s.state.id, m); }
    return m;
  }

  /** Snapshot one vring now (throws RingError when it cannot be read at all). */
  snapshot(sessionId: number, vring: number): RingSnapshot {
    const s = this.engine.tracker.sessions.get(sessionId);
    const v = s?.state.vrings.get(vring);
    if (!s || !v) throw new RingError('not-configured', vring, `session ${sessionId} has no vring ${vring}`);
    return snapshotRing(this.memory(s), v, { features: s.state.features.acked, device: s.state.device });
  }

  private readonly interposedKicks = new Set<string>();

  private handle(e: EngineEvent): void {
    if (e.kind === 'session' && e.event === 'end') { this.dropSession(e.session); return; }
    if (e.kind === 'ringcapture') { this.fromCapture(e.session, e.cap); return; }
    if (e.kind !== 'message') return;
    if (e.msg.name === 'SET_VRING_KICK' && !e.msg.reply) {
      const id = `${e.msg.session}:${(e.msg.payload as { index?: number } | undefined)?.index}`;
      if (e.msg.substituted?.includes('kick eventfd')) this.interposedKicks.add(id); else this.interposedKicks.delete(id);
    }
    if (!this.opts.pollHz) return;
    if (!e.changes.some((c) => c.what === 'vring' || c.what === 'memory' || c.what === 'features')) return;
    const s = this.engine.tracker.sessions.get(e.msg.session);
    if (!s) return;
    for (const v of s.state.vrings.values()) this.reconsider(s, v);
  }

  private live(s: Session, v: Vring): boolean {
    return v.num !== undefined && !!v.addr && !v.stopped && (v.kick === 'fd' || v.enabled === true) && s.state.memory.length > 0;
  }

  /**
   * Split rings whose kicks the relay interposes are captured exactly at each notification: no need to poll. The
   * relay's capture reads guest-physical addresses only, so packed rings and IOVAs (ACCESS_PLATFORM) are polled.
   */
  private captured(s: Session, v: Vring): boolean {
    const acked = s.state.features.acked;
    if (hasBit(acked, FEATURE_BIT.RING_PACKED) || hasBit(acked, FEATURE_BIT.ACCESS_PLATFORM)) return false;
    const mode = this.engine.ringCapture;
    return mode === 'all' || (mode === 'interposed' && this.interposedKicks.has(`${s.state.id}:${v.index}`));
  }

  private fromCapture(session: number, cap: RingCapture): void {
    const s = this.engine.tracker.sessions.get(session);
    const mem = capturedMemory(cap.bytes);
    const ctx = { device: s?.state.device ?? 'unknown', features: s?.state.features.acked } as const;
    const chains = cap.chains.map((c) => chainView(c, decodePayload(mem, c, cap.vring, ctx)));
    this.send({
      kind: 'ring', session, vring: cap.vring, time: cap.time, availIdx: cap.availIdx, usedIdx: cap.usedIdx,
      chains, errors: cap.note ? [cap.note] : [], source: cap.at,
    });
  }

  private reconsider(s: Session, v: Vring): void {
    const id = `${s.state.id}:${v.index}`;
    const w = this.watches.get(id);
    const key = this.live(s, v) && !this.captured(s, v) ? `${v.num}:${v.addr!.desc}:${v.addr!.avail}:${v.addr!.used}:${s.state.features.acked}` : '';
    if (w && w.key === key) return;
    if (w) {
      // Last look before the ring stops or changes, so its final entries are reported.
      try { w.watcher.poll(); } catch { /* reported as events */ }
      this.flush(s.state.id, v.index, w);
      w.watcher.stop();
      this.watches.delete(id);
    }
    if (!key) return;
    let cfg;
    try { cfg = ringConfigFromVring(v, s.state.features.acked); } catch (err) {
      this.send({ kind: 'ring', session: s.state.id, vring: v.index, time: Date.now() * 1000, chains: [], errors: [(err as Error).message], source: 'poll' });
      return;
    }
    const watcher = new RingWatcher({
      memory: this.memory(s), ring: cfg, device: s.state.device, features: s.state.features.acked,
      intervalMs: Math.max(1, Math.round(1000 / this.opts.pollHz)), sample: this.opts.sample ?? 16,
      pace: (spent, interval) => {
        const total = spent + nw.debtMs;
        nw.debtMs = 0;
        return paceDelay(total, interval, this.opts.cpuBudget ?? 0.02, this.watches.size);
      },
    });
    const nw: Watch = { watcher, key, debtMs: 0 };
    watcher.on((ev) => this.collect(s.state.id, v.index, nw, ev));
    this.watches.set(id, nw);
    watcher.start();
  }

  /** Events of one poll arrive synchronously; group them into one ring event. */
  private collect(session: number, vring: number, w: Watch, ev: WatchEvent): void {
    if (!w.pending) {
      w.pending = { kind: 'ring', session, vring, time: ev.time * 1000, chains: [], errors: [], source: 'poll' };
      queueMicrotask(() => this.flush(session, vring, w));
    }
    const p = w.pending;
    switch (ev.kind) {
      case 'avail': p.chains.push(chainView(ev.chain, ev.payload)); p.availIdx = (ev.pos + 1) & 0xffff; break;
      case 'used':
        if (ev.chain) p.chains.push(chainView({ ...ev.chain, state: 'used', usedLen: ev.len }, ev.payload));
        else p.chains.push({ head: ev.id, state: 'used', descriptors: [], readable: 0, writable: 0, usedLen: ev.len });
        p.usedIdx = (ev.pos + 1) & 0xffff;
        break;
      case 'error': p.errors.push(ev.error.message); break;
      case 'resync': p.resync = ev.reason; break;
      case 'skipped': {
        const k = (p.skipped ??= { avail: 0, used: 0 });
        k.avail += ev.avail;
        k.used += ev.used;
        break;
      }
    }
  }

  private flush(_session: number, _vring: number, w: Watch): void {
    const p = w.pending;
    w.pending = undefined;
    if (!p) return;
    // Reporting is part of a poll's cost (decoding payloads, formatting, writing): charged to the next pacing.
    const t0 = performance.now();
    try { this.report(p); } finally { w.debtMs += performance.now() - t0; }
  }

  private report(p: RingEvent): void {
    // A chain offered and completed between two polls is reported once, as used. Its buffers (an indirect table
    // above all) may have been freed and reused by the driver before the walk: say so instead of crying "hostile".
    const used = new Map(p.chains.filter((c) => c.state === 'used').map((c) => [c.head, c]));
    const chains: ChainView[] = [];
    for (const c of p.chains) {
      if (c.state === 'inflight' && used.has(c.head)) continue;
      if (c.state === 'used' && c.error && !c.error.startsWith('recycled')) {
        c.error = `recycled before it could be read (the request completed between polls): ${c.error}`;
      }
      chains.push(c);
    }
    const chainErrors = new Set(p.chains.flatMap((c) => (c.error ? [c.error] : [])));
    p.chains = chains;
    p.errors = [...new Set(p.errors)].filter((e) => ![...chainErrors].some((ce) => ce.includes(e) || e.includes(ce.replace(/^recycled[^:]*: /, ''))));
    if (p.chains.length || p.errors.length || p.resync || p.skipped) this.send(p);
  }

  private dropSession(session: number): void {
    for (const [id, w] of this.watches) {
      if (!id.startsWith(`${session}:`)) continue;
      w.watcher.stop();
      this.watches.delete(id);
    }
    this.memories.delete(session);
  }

  stop(): void {
    this.engine.off('event', this.onEvent);
    for (const w of this.watches.values()) w.watcher.stop();
    this.watches.clear();
    this.memories.clear();
  }
}
