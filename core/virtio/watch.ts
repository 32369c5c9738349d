// RingWatcher: polls a ring's indices (injected timer/clock), reports new avail/used entries with decoded chains, tracks in-flight buffers; read-only.
import { MemoryError, type GuestMemoryReader } from '../memory/guestMemory';
import type { DeviceType } from '../protocol/features';
import { buildPackedSnapshot, inferPacked, isAvail, isUsed, packedFlags, readPacked, walkPackedChain } from './packed';
import { decodePayload, type Payload } from './payload';
import { DESC_SIZE, DescTable, RingError, WalkContext, fromMemoryError, u16, view, type Chain, type RingConfig } from './ring';
import { buildSplitSnapshot, readSplit, readSplitIndices, walkSplitChain } from './split';
import { snapshotRing, type RingSnapshot, type SnapshotOptions } from './snapshot';

export { snapshotRing, ringConfigFromVring, type RingSnapshot, type SnapshotOptions } from './snapshot';

/** Timer the watcher uses (inject a fake in tests). */
export interface Scheduler {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const realScheduler: Scheduler = {
  setTimeout: (fn, ms) => { const t = setTimeout(fn, ms); t.unref?.(); return t; },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/**
 * Chains read in one poll, oldest first. A descriptor cannot belong to two chains in flight at once, so when an
 * older chain shares a table index with a newer one, it was completed and its descriptors rewritten for the newer
 * one before this poll read them: what was decoded for it is the newer chain's content. Mark it.
 */
export function markRecycled(batch: Chain[]): void {
  if (batch.length < 2) return;
  const later = new Set<number>();
  for (let k = batch.length - 1; k >= 0; k--) {
    const c = batch[k];
    const idx: number[] = c.indirect ? [c.indirect.index] : c.descs.filter((d) => !d.fromIndirect).map((d) => d.index);
    if (!c.descs.length && !c.indirect) idx.push(c.head);
    if (idx.some((i) => later.has(i))) c.recycled = true;
    for (const i of idx) later.add(i);
  }
}

export interface WatchOptions {
  memory: GuestMemoryReader;
  ring: RingConfig;
  device?: DeviceType;
  features?: bigint;
  ctrlQueue?: number;
  /** Decode payloads of new entries (default true). */
  payloads?: boolean;
  preview?: number;
  /** Poll period in ms (default 10). */
  intervalMs?: number;
  scheduler?: Scheduler;
  /** Clock in ms (default Date.now). */
  now?: () => number;
  /** Descriptor budget per poll (default as for snapshots). */
  budget?: number;
  /**
   * Split rings: decode at most this many new avail and used entries per poll (the newest); more are counted in a
   * 'skipped' event and in-flight tracking restarts. At millions of buffers per second nobody reads every one, and
   * decoding them all would steal the CPU the data plane needs. Default: no limit.
   */
  sample?: number;
  /**
   * Pacing: given how long the last poll took (ms, measured) and the configured interval, returns the delay
   * before the next poll. Lets an owner hold the observation to a CPU budget. Default: the interval.
   */
  pace?: (pollMs: number, intervalMs: number) => number;
  /** Monotonic clock for `pace` in ms (default performance.now). */
  monotonic?: () => number;
}

export type WatchEvent =
  | { kind: 'avail'; vring: number; time: number; pos: number; chain: Chain; payload?: Payload }
  | { kind: 'used'; vring: number; time: number; pos: number; id: number; len: number; chain?: Chain; payload?: Payload; latencyMs?: number }
  | { kind: 'error'; vring: number; time: number; error: RingError }
  | { kind: 'resync'; vring: number; time: number; reason: string; inflight: number }
  | { kind: 'skipped'; vring: number; time: number; avail: number; used: number };

export interface InflightEntry {
  /** Split: head descriptor index. Packed: buffer id. */
  head: number;
  chain: Chain;
  /** Clock time (ms) when first seen offered. */
  since: number;
  /** Split: avail position; packed: slot. */
  pos: number;
  /**
   * Taken from the ring's contents at a (re)synchronisation rather than seen being offered: since is the time of
   * that resync (or of the earlier sighting of the same head at the same position), and it may be a phantom when
   * completions were missed out of order (see PackedSnapshot.inflightExact); it goes once a completion proves it.
   */
  seeded?: boolean;
  /** What its buffers held when it was seen offered (reused at completion when the device writes nothing). */
  payload?: Payload;
}

export interface WatchStats { polls: number; avail: number; used: number; errors: number; resyncs: number }

export type TrackedSnapshot = RingSnapshot & { tracked: InflightEntry[] };

/**
 * Watches one ring. Read-only: it only calls the reader's read methods, never writes guest memory and has no
 * access to kick/call notifiers. Exact for split rings as long as fewer than `num` entries arrive between
 * two polls; for packed rings as long as it sees each chain offered before the device completes it
 * (otherwise it resynchronises from the ring's flags and says so with a 'resync' event).
 */
export class RingWatcher {
  readonly cfg: RingConfig;
  private readonly mem: GuestMemoryReader;
  private readonly scheduler: Scheduler;
  private readonly now: () => number;
  private interval: number;
  private timer: unknown;
  private running = false;
  private synced = false;
  private readonly listeners = new Set<(ev: WatchEvent) => void>();
  private readonly inflightMap = new Map<number, InflightEntry[]>();
  // split cursors
  private lastAvail = 0;
  private lastUsed = 0;
  // packed cursors
  private availSlot = 0;
  private availWrap = true;
  private usedSlot = 0;
  private usedWrap = true;
  readonly stats: WatchStats = { polls: 0, avail: 0, used: 0, errors: 0, resyncs: 0 };
  lastListenerError?: unknown;

  constructor(private readonly opts: WatchOptions) {
    this.cfg = opts.ring;
    this.mem = opts.memory;
    this.scheduler = opts.scheduler ?? realScheduler;
    this.now = opts.now ?? Date.now;
    this.interval = opts.intervalMs ?? 10;
  }

  on(listener: (ev: WatchEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  get isRunning(): boolean { return this.running; }

  setInterval(ms: number): void { this.interval = Math.max(0, ms); }

  /** Start polling every intervalMs (the first poll synchronises with the ring). */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.arm();
  }

  stop(): void {
    this.running = false;
    if (this.timer !== undefined) this.scheduler.clearTimeout(this.timer);
    this.timer = undefined;
  }

  private arm(delay = this.interval): void {
    this.timer = this.scheduler.setTimeout(() => this.tick(), delay);
  }

  private tick(): void {
    this.timer = undefined;
    if (!this.running) return;
    const clock = this.opts.monotonic ?? (() => performance.now());
    const t0 = clock();
    try {
      this.poll();
    } catch (e) {
      // poll() reports ring problems as events; anything else is a bug, reported and survived.
      this.emit({ kind: 'error', vring: this.cfg.index, time: this.now(), error: new RingError('io', this.cfg.index, `internal: ${(e as Error).message}`) });
    }
    if (!this.running) return;
    const spent = clock() - t0;
    let delay = this.interval;
    try { if (this.opts.pace) delay = this.opts.pace(spent, this.interval); } catch { /* pacing is advisory */ }
    this.arm(Number.isFinite(delay) && delay >= 0 ? delay : this.interval);
  }

  /** One poll now: returns (and emits) the new events. Ring-level failures become 'error' events. */
  poll(): WatchEvent[] {
    this.stats.polls++;
    const out: WatchEvent[] = [];
    try {
      const ctx = new WalkContext(this.mem, this.cfg, { budget: this.opts.budget });
      if (!this.synced) this.resync(ctx, 'start', out);
      else if (this.cfg.packed) this.pollPacked(ctx, out);
      else this.pollSplit(ctx, out);
    } catch (e) {
      const err = e instanceof RingError ? e : e instanceof MemoryError ? fromMemoryError(e, this.cfg.index, 'ring') : undefined;
      if (!err) throw e;
      out.push({ kind: 'error', vring: this.cfg.index, time: this.now(), error: err });
    }
    for (const ev of out) this.emit(ev);
    return out;
  }

  /** Offered buffers not yet used, oldest first. */
  inflight(): InflightEntry[] {
    return [...this.inflightMap.values()].flat().sort((a, b) => a.since - b.since);
  }

  /** In-flight buffers offered at least `ms` ago: what is stuck. */
  stuck(ms: number): InflightEntry[] {
    const t = this.now();
    return this.inflight().filter((e) => t - e.since >= ms);
  }

  /** Snapshot of the ring now, with what the watcher tracks as in flight (exact where the snapshot can only guess). */
  snapshot(opts: SnapshotOptions = {}): TrackedSnapshot {
    const known = new Map<number, Chain>();
    for (const e of this.inflight()) known.set(e.head, e.chain);
    const snap = snapshotRing(this.mem, this.cfg, {
      device: this.opts.device, features: this.opts.features, ctrlQueue: this.opts.ctrlQueue, preview: this.opts.preview, known, ...opts,
    });
    return Object.assign(snap, { tracked: this.inflight() });
  }

  // ---- internals ---------------------------------------------------------------------------------------------

  private emit(ev: WatchEvent): void {
    if (ev.kind === 'error') this.stats.errors++;
    for (const l of this.listeners) {
      try { l(ev); } catch (e) { this.lastListenerError = e; }
    }
  }

  /**
   * The payload of a completed chain. A chain the device only reads (a TX frame, a request without data in) holds
   * what the driver wrote before offering it: what was decoded then stands. Reading it again now could only show
   * the driver's next use of those pages, freed and reused after completion (zeros, another frame).
   */
  private usedPayload(entry: InflightEntry | undefined, chain: Chain): Payload | undefined {
    const p = entry?.payload;
    if (p && chain.writable === 0 && !(p as { error?: string }).error) return p;
    return this.payload(chain);
  }

  private payload(chain: Chain): Payload | undefined {
    if (this.opts.payloads === false || chain.descs.length === 0 || chain.recycled) return undefined;
    return decodePayload(this.mem, chain, this.cfg.index, {
      device: this.opts.device ?? 'unknown', features: this.opts.features, ctrlQueue: this.opts.ctrlQueue, preview: this.opts.preview,
    });
  }

  private track(head: number, chain: Chain, pos: number, time: number, seeded = false, payload?: Payload): void {
    const q = this.inflightMap.get(head);
    const e: InflightEntry = { head, chain, since: time, pos, ...(seeded ? { seeded } : {}), ...(payload ? { payload } : {}) };
    if (q) q.push(e); else this.inflightMap.set(head, [e]);
  }

  private untrack(head: number): InflightEntry | undefined {
    const q = this.inflightMap.get(head);
    const e = q?.shift();
    if (q && q.length === 0) this.inflightMap.delete(head);
    return e;
  }

  /** (Re)start from what ring memory says now: in-flight set from a snapshot, cursors at the current indices. */
  private resync(ctx: WalkContext, reason: string, out: WatchEvent[]): void {
    const t = this.now();
    const previous = new Map<string, number>();
    for (const e of this.inflight()) previous.set(`${e.head}@${e.pos}`, e.since);
    this.inflightMap.clear();
    if (this.cfg.packed) {
      const raw = readPacked(ctx);
      const snap = buildPackedSnapshot(ctx, raw);
      for (const c of snap.chains) {
        const pos = c.slot ?? 0;
        const since = previous.get(`${c.head}@${pos}`);
        this.track(c.head, c, pos, since ?? t, true);
      }
      this.availSlot = snap.driver.next; this.availWrap = snap.driver.wrap;
      this.usedSlot = snap.device.usedNext; this.usedWrap = snap.device.usedWrap;
    } else {
      const raw = readSplit(ctx);
      const snap = buildSplitSnapshot(ctx, raw, { usedHistory: 0 });
      for (const c of snap.chains) {
        const pos = c.availPos ?? 0;
        const since = previous.get(`${c.head}@${pos}`);
        this.track(c.head, c, pos, since ?? t, true);
      }
      this.lastAvail = raw.availIdx;
      this.lastUsed = raw.usedIdx;
    }
    this.synced = true;
    if (reason !== 'start') this.stats.resyncs++;
    out.push({ kind: 'resync', vring: this.cfg.index, time: t, reason, inflight: this.inflight().length });
  }

  private pollSplit(ctx: WalkContext, out: WatchEvent[]): void {
    const cfg = this.cfg;
    const n = cfg.num;
    const t = this.now();
    const { availIdx, usedIdx } = readSplitIndices(ctx);
    let newA = u16(availIdx - this.lastAvail);
    let newU = u16(usedIdx - this.lastUsed);
    if (newA === 0 && newU === 0) return;
    const sample = this.opts.sample ?? Infinity;
    let lossy = false;
    if ((newA > sample || newU > sample) && u16(availIdx - usedIdx) <= n) {
      // More than we report per poll: keep the newest `sample` of each kind; what was in flight is no longer known.
      const skippedA = Math.max(0, newA - sample), skippedU = Math.max(0, newU - sample);
      if (skippedA) { this.lastAvail = u16(availIdx - sample); newA = sample; }
      if (skippedU) { this.lastUsed = u16(usedIdx - sample); newU = sample; }
      this.inflightMap.clear();
      lossy = true;
      out.push({ kind: 'skipped', vring: cfg.index, time: t, avail: skippedA, used: skippedU });
    }
    const jump = newA > n ? `avail idx moved from ${this.lastAvail} to ${availIdx}`
      : newU > n ? `used idx moved from ${this.lastUsed} to ${usedIdx}`
      : u16(availIdx - usedIdx) > n ? `used idx ${usedIdx} is not within ${n} behind avail idx ${availIdx}` : undefined;
    if (jump) {
      out.push({ kind: 'error', vring: cfg.index, time: t, error: new RingError('idx-jump', cfg.index, `${jump} (ring size ${n})`) });
      this.resync(ctx, 'idx-jump', out);
      return;
    }
    const table = new DescTable(ctx.readRing(cfg.desc, n * DESC_SIZE, 'descriptor table'));
    if (newA) {
      const ring = view(ctx.readRing(cfg.avail + 4n, 2 * n, 'avail ring'));
      const batch: Chain[] = [];
      for (let k = 0; k < newA; k++) {
        const p = u16(this.lastAvail + k);
        const chain = walkSplitChain(ctx, table, ring.getUint16((p % n) * 2, true));
        chain.availPos = p;
        batch.push(chain);
      }
      markRecycled(batch);
      for (const chain of batch) {
        const p = chain.availPos!;
        if (chain.error && !chain.recycled) out.push({ kind: 'error', vring: cfg.index, time: t, error: chain.error });
        const payload = this.payload(chain);
        this.track(chain.head, chain, p, t, false, payload);
        this.stats.avail++;
        out.push({ kind: 'avail', vring: cfg.index, time: t, pos: p, chain, payload });
      }
      this.lastAvail = availIdx;
    }
    if (newU) {
      const ring = view(ctx.readRing(cfg.used + 4n, 8 * n, 'used ring'));
      for (let k = 0; k < newU; k++) {
        const q = u16(this.lastUsed + k);
        const id = ring.getUint32((q % n) * 8, true);
        const len = ring.getUint32((q % n) * 8 + 4, true);
        const entry = id < 0x10000 ? this.untrack(id) : undefined;
        let chain: Chain | undefined;
        if (entry) chain = { ...entry.chain, state: 'used', usedLen: len, usedPos: q };
        else if (lossy && id < n) {
          // Sampling lost track of what was offered: walk it now, no complaint.
          chain = walkSplitChain(ctx, table, id); chain.state = 'used'; chain.usedLen = len; chain.usedPos = q;
        } else {
          const error = id >= n
            ? new RingError('used-id-out-of-range', cfg.index, `used[${q % n}].id ${id} >= ring size ${n}`, { head: id })
            : new RingError('unknown-used-id', cfg.index, `used[${q % n}].id ${id} is not in flight`, { head: id });
          out.push({ kind: 'error', vring: cfg.index, time: t, error });
          if (id < n) { chain = walkSplitChain(ctx, table, id); chain.state = 'used'; chain.usedLen = len; chain.usedPos = q; }
        }
        this.stats.used++;
        out.push({
          kind: 'used', vring: cfg.index, time: t, pos: q, id, len, chain, payload: chain ? this.usedPayload(entry, chain) : undefined,
          ...(entry && !entry.seeded ? { latencyMs: t - entry.since } : {}),
        });
      }
      this.lastUsed = usedIdx;
    }
    // The indices say exactly how many buffers are in flight: entries beyond that were completed under ids we
    // could not match (hostile or torn used elements). Drop the oldest.
    this.trim(u16(availIdx - usedIdx), t, out);
  }

  private trim(max: number, t: number, out: WatchEvent[]): void {
    const all = this.inflight();
    if (all.length <= max) return;
    const drop = all.length - max;
    const victims = new Set(all.slice(0, drop));
    for (const [head, q] of this.inflightMap) {
      const keep = q.filter((e) => !victims.has(e));
      if (keep.length) this.inflightMap.set(head, keep); else this.inflightMap.delete(head);
    }
    this.stats.resyncs++;
    out.push({ kind: 'resync', vring: this.cfg.index, time: t, reason: `dropped ${drop} oldest in-flight entr${drop === 1 ? 'y' : 'ies'}: more than the ring can hold in flight`, inflight: max });
  }

  private pollPacked(ctx: WalkContext, out: WatchEvent[]): void {
    const cfg = this.cfg;
    const n = cfg.num;
    const t = this.now();
    const table = new DescTable(ctx.readRing(cfg.desc, n * DESC_SIZE, 'descriptor ring'));
    const inf = inferPacked(table, n);
    const clean = inf.changes <= 1; // otherwise the driver is mid-update: trust the flags slot by slot
    // How far the driver is ahead of our avail cursor (virtual distance), when the flags say so unambiguously.
    let ahead = n;
    if (clean) {
      ahead = this.availWrap === inf.driverWrap ? inf.driverNext - this.availSlot : n - this.availSlot + inf.driverNext;
      if (ahead < 0 || ahead > n) {
        this.resync(ctx, `driver at slot ${inf.driverNext} (wrap ${+inf.driverWrap}) is behind the watcher at ${this.availSlot} (wrap ${+this.availWrap})`, out);
        return;
      }
    }
    // New offers: chains available at our cursor, up to the driver's position.
    let walked = 0;
    while (walked < ahead && isAvail(packedFlags(table, this.availSlot), this.availWrap)) {
      const chain = walkPackedChain(ctx, table, this.availSlot, ahead - walked);
      if (chain.error) out.push({ kind: 'error', vring: cfg.index, time: t, error: chain.error });
      const slots = Math.max(1, chain.slots ?? 1);
      const payload = this.payload(chain);
      this.track(chain.head, chain, this.availSlot, t, false, payload);
      this.stats.avail++;
      out.push({ kind: 'avail', vring: cfg.index, time: t, pos: this.availSlot, chain, payload });
      walked += slots;
      this.advanceAvail(slots);
    }
    if (clean && walked < ahead) {
      // The driver moved on but the slot at our cursor is no longer available: the device completed buffers we never saw.
      this.resync(ctx, `missed offers: slot ${this.availSlot} is no longer available, driver at slot ${inf.driverNext}`, out);
      return;
    }
    // The driver only reuses a slot after the device used it: if it is more than a ring ahead of our used cursor,
    // it overwrote used elements we never saw.
    if (this.distance(this.usedSlot, this.usedWrap, this.availSlot, this.availWrap) > n) {
      this.resync(ctx, `used elements overwritten before they were seen (used cursor slot ${this.usedSlot}, driver slot ${this.availSlot})`, out);
      return;
    }
    // New used elements at the used cursor; each skips the slots its buffer took when offered.
    let usedWalked = 0;
    for (let guard = 0; guard < n && usedWalked < n; guard++) {
      if (!isUsed(packedFlags(table, this.usedSlot), this.usedWrap)) {
        if (!this.realignUsed(table, out, t)) break;
        continue;
      }
      const id = table.at12(this.usedSlot);
      const len = table.len(this.usedSlot);
      const entry = this.untrack(id);
      let chain: Chain | undefined;
      if (entry) chain = { ...entry.chain, state: 'used', usedLen: len };
      else out.push({ kind: 'error', vring: cfg.index, time: t, error: new RingError('unknown-used-id', cfg.index, `used element id ${id} at slot ${this.usedSlot} was not seen offered`, { slot: this.usedSlot }) });
      this.stats.used++;
      out.push({
        kind: 'used', vring: cfg.index, time: t, pos: this.usedSlot, id, len, chain, payload: chain ? this.usedPayload(entry, chain) : undefined,
        ...(entry && !entry.seeded ? { latencyMs: t - entry.since } : {}),
      });
      const skip = Math.max(1, entry?.chain.slots ?? 1);
      usedWalked += skip;
      this.advanceUsed(skip);
    }
    this.trim(n, t, out);
    // Completed buffers free exactly the slots they were offered in: an empty window means nothing is in flight.
    if (this.usedSlot === this.availSlot && this.usedWrap === this.availWrap && this.inflightMap.size) {
      const stale = this.inflight().length;
      this.inflightMap.clear();
      this.stats.resyncs++;
      out.push({ kind: 'resync', vring: cfg.index, time: t, reason: `ring drained: dropped ${stale} in-flight entr${stale === 1 ? 'y' : 'ies'} never seen used`, inflight: 0 });
    }
  }

  /** Slots from (slot a, wrap aw) forward to (slot b, wrap bw): 0..n, or more than n if b is over a lap ahead. */
  private distance(a: number, aw: boolean, b: number, bw: boolean): number {
    const n = this.cfg.num;
    return aw === bw ? (b >= a ? b - a : b - a + 2 * n) : b - a + n;
  }

  private advanceAvail(k: number): void {
    this.availSlot += k;
    if (this.availSlot >= this.cfg.num) { this.availSlot -= this.cfg.num; this.availWrap = !this.availWrap; }
  }

  private advanceUsed(k: number): void {
    this.usedSlot += k;
    if (this.usedSlot >= this.cfg.num) { this.usedSlot -= this.cfg.num; this.usedWrap = !this.usedWrap; }
  }

  /**
   * The used cursor sits on a slot that is not a used element. If a used element of the current lap lies ahead
   * before the avail cursor, our cursor was misplaced (seeded on the stale tail of a completed chain, or an unknown
   * id made us skip too little): move to it and drop seeded entries in the skipped slots. Returns whether it moved.
   */
  private realignUsed(table: DescTable, out: WatchEvent[], t: number): boolean {
    const n = this.cfg.num;
    const dist = this.distance(this.usedSlot, this.usedWrap, this.availSlot, this.availWrap);
    if (dist <= 0 || dist > n) return false;
    let slot = this.usedSlot, wrap = this.usedWrap;
    for (let d = 1; d < dist; d++) {
      slot++;
      if (slot === n) { slot = 0; wrap = !wrap; }
      if (isUsed(packedFlags(table, slot), wrap)) {
        const from = this.usedSlot;
        for (const [head, q] of this.inflightMap) {
          const keep = q.filter((e) => !(e.seeded && this.slotWithin(e.pos, from, d)));
          if (keep.length) this.inflightMap.set(head, keep); else this.inflightMap.delete(head);
        }
        this.usedSlot = slot; this.usedWrap = wrap;
        this.stats.resyncs++;
        out.push({ kind: 'resync', vring: this.cfg.index, time: t, reason: `used cursor moved from slot ${from} to ${slot}`, inflight: this.inflight().length });
        return true;
      }
    }
    return false;
  }

  private slotWithin(pos: number, from: number, count: number): boolean {
    const d = pos - from;
    return (d >= 0 ? d : d + this.cfg.num) < count;
  }
}
