// Split virtqueue decoder: snapshot of descriptor table, avail and used rings, chains walked defensively (virtio 1.2 2.7).
import type { GuestMemoryReader } from '../memory/guestMemory';
import {
  DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, DESC_SIZE, DescTable, RingError, WalkContext, addBuffer, checkRingConfig, readIndirect, u16, view,
  type Chain, type DecodeOptions, type RingConfig,
} from './ring';

// Module-level aliases: hot loops read these directly (transpiled imports would go through getters each time).
const F_NEXT = DESC_F_NEXT, F_WRITE = DESC_F_WRITE, F_INDIRECT = DESC_F_INDIRECT;
const addBuf = addBuffer, readInd = readIndirect, U16 = u16;

export interface SplitDesc { index: number; addr: bigint; len: number; flags: number; next: number }

export interface SplitSnapshot {
  kind: 'split';
  vring: number;
  num: number;
  addr: { desc: bigint; avail: bigint; used: bigint };
  avail: { flags: number; idx: number; usedEvent?: number; ring: number[] };
  used: { flags: number; idx: number; availEvent?: number; ring: { id: number; len: number }[] };
  /** avail.idx - used.idx: chains offered and not yet used. */
  inflightCount: number;
  /** avail.idx - device next avail, when the latter is known: chains the device has not fetched. */
  pendingCount?: number;
  /**
   * Whether the visible history is consistent with in-order completion (each visible used element matches the
   * avail entry at the same position, and no head repeats among the in-flight positions). The in-flight set is
   * then exact if completions were in order throughout; memory alone cannot prove it (a straggler older than
   * the visible history is invisible). When false the set is a best guess. The RingWatcher sees every step.
   */
  inflightExact: boolean;
  /** In-flight chains oldest first, then used chains oldest first. */
  chains: Chain[];
  errors: RingError[];
  /** The whole descriptor table, when asked for (options.table). */
  table?: SplitDesc[];
}

export interface SplitOptions extends DecodeOptions {
  /** How many recent used elements to decode as chains (default: all visible, at most num). */
  usedHistory?: number;
  /** Include the raw descriptor table. */
  table?: boolean;
}

/** Raw ring areas read in three preads (descriptor table, avail ring, used ring). */
export interface SplitRaw {
  table: DescTable;
  availFlags: number;
  availIdx: number;
  availRing: DataView; // u16[num] (+ used_event)
  usedFlags: number;
  usedIdx: number;
  usedRing: DataView; // {u32 id, u32 len}[num] (+ avail_event)
}

/** Give base an enumerable `ring` property computed once, on first read (most consumers only look at chains). */
function withLazyRing<T extends { ring: unknown }>(base: Omit<T, 'ring'>, make: () => T['ring']): T {
  let v: T['ring'] | undefined;
  Object.defineProperty(base, 'ring', {
    enumerable: true, configurable: true,
    get: () => (v ??= make()),
    set: (x: T['ring']) => { v = x; },
  });
  return base as T;
}

export const splitAvailSize = (num: number, eventIdx = true): number => 4 + 2 * num + (eventIdx ? 2 : 0);
export const splitUsedSize = (num: number, eventIdx = true): number => 4 + 8 * num + (eventIdx ? 2 : 0);

/** Read the three areas of a split ring. Throws RingError (unmapped, io, bad-ring-size). */
export function readSplit(ctx: WalkContext): SplitRaw {
  const cfg = ctx.cfg;
  checkRingConfig(cfg);
  const n = cfg.num;
  const table = new DescTable(ctx.readRing(cfg.desc, n * DESC_SIZE, 'descriptor table'));
  const avail = view(ctx.readRing(cfg.avail, splitAvailSize(n, cfg.eventIdx), 'avail ring'));
  const used = view(ctx.readRing(cfg.used, splitUsedSize(n, cfg.eventIdx), 'used ring'));
  return {
    table,
    availFlags: avail.getUint16(0, true), availIdx: avail.getUint16(2, true),
    availRing: new DataView(avail.buffer, avail.byteOffset + 4, avail.byteLength - 4),
    usedFlags: used.getUint16(0, true), usedIdx: used.getUint16(2, true),
    usedRing: new DataView(used.buffer, used.byteOffset + 4, used.byteLength - 4),
  };
}

/**
 * A ring index the other side may be writing, read without tearing: a 2-byte pread is copied byte by byte by the
 * kernel, so an index crossing a multiple of 256 can be seen half old, half new (hundreds of phantom entries).
 * The aligned 8-byte window holding it is copied with a single move; where that window leaves guest memory, read
 * until two reads agree (bounded).
 */
export function readIndex16(ctx: WalkContext, addr: bigint, what: string): number {
  const w = addr - (addr % 8n);
  let b: Uint8Array | undefined;
  try { b = ctx.readRing(w, 8, what); } catch { b = undefined; }
  if (b) { const o = Number(addr - w); return b[o] | (b[o + 1] << 8); }
  let prev = -1, v = -1;
  for (let i = 0; i < 8; i++) {
    const x = ctx.readRing(addr, 2, what);
    v = x[0] | (x[1] << 8);
    if (v === prev) break;
    prev = v;
  }
  return v;
}

/** Read only the two indices (cheap poll): avail.idx and used.idx, each without tearing. */
export function readSplitIndices(ctx: WalkContext): { availIdx: number; usedIdx: number } {
  const cfg = ctx.cfg;
  return { availIdx: readIndex16(ctx, cfg.avail + 2n, 'avail idx'), usedIdx: readIndex16(ctx, cfg.used + 2n, 'used idx') };
}

/**
 * Walk the chain starting at descriptor `head` of a split table (virtio 1.2 2.7.5, 2.7.5.3):
 * every index checked against the table size, loops caught by visiting each descriptor at most once,
 * at most one indirect table (no nesting, no NEXT with INDIRECT), chain total bounded to u32.
 * Never throws for hostile contents: the first error lands in chain.error.
 */
export function walkSplitChain(ctx: WalkContext, table: DescTable, head: number): Chain {
  const vring = ctx.cfg.index;
  const num = ctx.cfg.num;
  const chain: Chain = { head, descs: [], readable: 0, writable: 0, state: 'inflight' };
  if (head >= num) {
    chain.error = new RingError('desc-index-out-of-range', vring, `head ${head} >= ring size ${num}`, { head, desc: head });
    return chain;
  }
  const stamp = ctx.nextStamp();
  let tv = table;
  let size = num;
  let inIndirect = false;
  let i = head;
  // Bounded: each iteration visits a distinct (table, index) pair, at most num + one indirect table.
  for (;;) {
    if (ctx.budget <= 0) { chain.error = new RingError('budget-exhausted', vring, undefined, { head, desc: i, indirect: inIndirect }); break; }
    ctx.budget--;
    if (!ctx.visit(i, inIndirect, stamp)) {
      chain.error = new RingError('loop', vring, `descriptor ${i} reached twice`, { head, desc: i, indirect: inIndirect });
      break;
    }
    const addr = tv.addr(i);
    const len = tv.len(i);
    const flags = tv.at12(i);
    const next = tv.at14(i);
    if (flags & F_INDIRECT) {
      const t = readInd(ctx, chain, i, addr, len, flags, inIndirect);
      if (typeof t !== 'number') { chain.error = t; break; }
      tv = ctx.scratchTable();
      size = t;
      ctx.sizeIndirect(size);
      inIndirect = true;
      i = 0;
      continue;
    }
    const write = (flags & F_WRITE) !== 0;
    const err = addBuf(ctx, chain, inIndirect ? { index: i, addr, len, flags, write, fromIndirect: true } : { index: i, addr, len, flags, write }, i, inIndirect);
    if (err) { chain.error = err; break; }
    if (!(flags & F_NEXT)) break;
    if (next >= size) {
      chain.error = new RingError('desc-index-out-of-range', vring, `next ${next} >= ${inIndirect ? 'indirect table' : 'ring'} size ${size}`, { head, desc: i, indirect: inIndirect });
      break;
    }
    i = next;
  }
  return chain;
}

/** Decode every descriptor of the table (no chain walking). */
export function decodeSplitTable(table: DescTable, num: number): SplitDesc[] {
  const out: SplitDesc[] = [];
  for (let i = 0; i < num; i++) out.push({ index: i, addr: table.addr(i), len: table.len(i), flags: table.at12(i), next: table.at14(i) });
  return out;
}

/**
 * Which offered heads are still in flight, from ring memory alone. Exact when completions were in order
 * (every visible used element matches the avail entry at the same position). Otherwise each head's newest
 * offer (position p) is judged against its newest use (q): q >= p means done (the use came after the offer);
 * q < p - num means still in flight (the use came before); in between, the use belongs to this offer unless an
 * earlier offer of the same head could own it. Unresolved heads fill up to avail.idx - used.idx, newest first.
 * Returns avail positions (free-running u16), oldest first.
 */
export function splitInflightPositions(raw: SplitRaw, num: number): { positions: number[]; exact: boolean } {
  const O = raw.availIdx, U = raw.usedIdx;
  const k = Math.min(u16(O - U), num);
  // Visible history: the last num entries, or fewer if the index has not reached num yet (assumed to start at 0).
  const A = Math.min(num, O);
  const usedVisible = Math.min(num, U);
  const availAt = (p: number): number => raw.availRing.getUint16((p % num) * 2, true);
  const usedIdAt = (p: number): number => raw.usedRing.getUint32((p % num) * 8, true);
  let exact = true;
  const from = Math.min(usedVisible, Math.max(0, A - k));
  for (let j = 1; j <= from; j++) {
    const p = u16(U - j);
    if (usedIdAt(p) !== availAt(p)) { exact = false; break; }
  }
  if (exact) {
    const positions: number[] = new Array(k);
    const seen = new Uint8Array(num);
    let repeat = false;
    for (let j = 0; j < k; j++) {
      const p = U16(U + j);
      positions[j] = p;
      const h = availAt(p);
      if (h < num) { if (seen[h]) repeat = true; seen[h] = 1; }
    }
    // A head cannot be in flight twice: a repeat means completions were not in order after all.
    if (!repeat) return { positions, exact };
    exact = false;
  }
  // Distances back from avail.idx: offer at dp in [1, A]; use at dq = O - q.
  const newestUse = new Map<number, number>();
  for (let j = usedVisible; j >= 1; j--) newestUse.set(usedIdAt(u16(U - j)), u16(O - U) + j); // newer overwrite
  const offers = new Map<number, number[]>(); // head -> distances, newest first
  for (let dp = 1; dp <= A; dp++) {
    const h = availAt(u16(O - dp));
    const l = offers.get(h);
    if (l) l.push(dp); else offers.set(h, [dp]);
  }
  const sure: number[] = [];
  const maybe: number[] = [];
  const historyStart = O <= num; // the avail window reaches the first offer ever made
  for (const [h, ds] of offers) {
    const dp = ds[0];
    const dq = newestUse.get(h);
    if (dq === undefined || dq > dp + num) { sure.push(dp); continue; }
    if (dq <= dp) continue; // used after this offer
    const earlier = ds.some((d) => d > dp && d >= dq && d <= dq + num - 1);
    if (earlier) { sure.push(dp); continue; }
    if (historyStart || A >= dq + num - 1) continue; // no earlier offer could own that use: it was this one's
    maybe.push(dp);
  }
  sure.sort((a, b) => a - b);
  maybe.sort((a, b) => a - b);
  const picked = [...sure, ...maybe].slice(0, k).sort((a, b) => b - a); // oldest (largest distance) first
  return { positions: picked.map((dp) => u16(O - dp)), exact: false };
}

/** Snapshot a split ring. Throws RingError only if the ring itself cannot be read; chain errors are collected. */
export function snapshotSplit(mem: GuestMemoryReader, cfg: RingConfig, opts: SplitOptions = {}): SplitSnapshot {
  const ctx = new WalkContext(mem, cfg, opts);
  const raw = readSplit(ctx);
  return buildSplitSnapshot(ctx, raw, opts);
}

export function buildSplitSnapshot(ctx: WalkContext, raw: SplitRaw, opts: SplitOptions = {}): SplitSnapshot {
  const cfg = ctx.cfg;
  const n = cfg.num;
  const errors: RingError[] = [];
  // The ring arrays are built on first access: enumerable, so they still serialise and compare.
  const avail = withLazyRing<SplitSnapshot['avail']>({ flags: raw.availFlags, idx: raw.availIdx }, () => {
    const a: number[] = new Array(n);
    for (let i = 0; i < n; i++) a[i] = raw.availRing.getUint16(i * 2, true);
    return a;
  });
  const used = withLazyRing<SplitSnapshot['used']>({ flags: raw.usedFlags, idx: raw.usedIdx }, () => {
    const u: { id: number; len: number }[] = new Array(n);
    for (let i = 0; i < n; i++) u[i] = { id: raw.usedRing.getUint32(i * 8, true), len: raw.usedRing.getUint32(i * 8 + 4, true) };
    return u;
  });
  const snap: SplitSnapshot = {
    kind: 'split', vring: cfg.index, num: n, addr: { desc: cfg.desc, avail: cfg.avail, used: cfg.used },
    avail, used,
    inflightCount: u16(raw.availIdx - raw.usedIdx), inflightExact: true, chains: [], errors,
  };
  if (cfg.eventIdx) {
    snap.avail.usedEvent = raw.availRing.getUint16(n * 2, true);
    snap.used.availEvent = raw.usedRing.getUint16(n * 8, true);
  }
  if (snap.inflightCount > n) {
    errors.push(new RingError('idx-jump', cfg.index, `avail idx ${raw.availIdx} is ${snap.inflightCount} ahead of used idx ${raw.usedIdx} (ring size ${n})`));
  }
  let base = cfg.nextAvail;
  if (base !== undefined) {
    const pending = u16(raw.availIdx - base);
    const done = u16(base - raw.usedIdx);
    if (pending <= n && done <= n) snap.pendingCount = pending;
    else base = undefined; // stale hint (the device has moved on since SET_VRING_BASE): ignore it
  }
  const { positions, exact } = splitInflightPositions(raw, n);
  snap.inflightExact = exact && snap.inflightCount <= n;
  for (const p of positions) {
    const head = raw.availRing.getUint16((p % n) * 2, true);
    const c = walkSplitChain(ctx, raw.table, head);
    c.availPos = p;
    if (base !== undefined) c.fetched = u16(p - base) >= u16(raw.availIdx - base);
    if (c.error) errors.push(c.error);
    snap.chains.push(c);
  }
  const usedVisible = Math.min(n, raw.usedIdx, opts.usedHistory ?? n);
  for (let j = usedVisible; j >= 1; j--) {
    const p = u16(raw.usedIdx - j);
    const id = raw.usedRing.getUint32((p % n) * 8, true);
    const len = raw.usedRing.getUint32((p % n) * 8 + 4, true);
    let c: Chain;
    if (id >= n) {
      const e = new RingError('used-id-out-of-range', cfg.index, `used[${p % n}].id ${id} >= ring size ${n}`, { head: id });
      c = { head: id, descs: [], readable: 0, writable: 0, state: 'used', error: e };
    } else {
      c = walkSplitChain(ctx, raw.table, id);
      c.state = 'used';
    }
    c.usedLen = len;
    c.usedPos = p;
    if (c.error) errors.push(c.error);
    snap.chains.push(c);
  }
  if (opts.table) snap.table = decodeSplitTable(raw.table, n);
  return snap;
}
