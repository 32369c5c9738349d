// Packed virtqueue decoder: descriptor ring with AVAIL/USED wrap flags, chains, indirect tables, event suppression (virtio 1.2 2.8).
import type { GuestMemoryReader } from '../memory/guestMemory';
import {
  DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, DESC_SIZE, PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED, RingError, WalkContext, addBuffer,
  checkRingConfig, readIndirect, DescTable, type Chain, type DecodeOptions, type RingConfig,
} from './ring';

// Module-level aliases: hot loops read these directly (transpiled imports would go through getters each time).
const F_NEXT = DESC_F_NEXT, F_WRITE = DESC_F_WRITE, F_INDIRECT = DESC_F_INDIRECT;
const F_AVAIL = PACKED_DESC_F_AVAIL, F_USED = PACKED_DESC_F_USED;
const addBuf = addBuffer, readInd = readIndirect;

export interface PackedDesc { slot: number; addr: bigint; len: number; id: number; flags: number; avail: boolean; used: boolean }

/** struct pvirtq_event_suppress: desc_event_off_wrap (bit 15 = wrap counter) and desc_event_flags. */
export interface EventSuppression {
  offWrap: number;
  off: number;
  wrap: boolean;
  flags: number;
  mode: 'enable' | 'disable' | 'desc' | 'reserved';
}

export interface PackedUsedElem { slot: number; id: number; len: number; wrap: boolean; chain?: Chain }

export interface PackedSnapshot {
  kind: 'packed';
  vring: number;
  num: number;
  addr: { desc: bigint; driverEvent: bigint; deviceEvent: bigint };
  /** Driver event suppression (at the 'avail' address): when the device should interrupt. */
  driverEvent: EventSuppression;
  /** Device event suppression (at the 'used' address): when the driver should kick. */
  deviceEvent: EventSuppression;
  /** Inferred from the AVAIL bits: where the driver writes next, and its wrap counter. */
  driver: { next: number; wrap: boolean };
  /** Inferred from the used elements: where the device writes its next used element, and its wrap counter. */
  device: { usedNext: number; usedWrap: boolean };
  /** Chains offered and not yet used (walked from the device's used position to the driver's position). */
  inflightCount: number;
  /**
   * False when the in-flight set from memory alone may be wrong: once multi-slot chains exist, the window can start
   * on the stale tail of a chain the device completed (marked maybeStale when it follows the newest used element
   * with the same id). Even when true it assumes in-order completion: a used element written out of order
   * overwrites the head of a chain still in flight, which memory alone cannot show. The RingWatcher, which
   * sees each step, is exact.
   */
  inflightExact: boolean;
  /** Chains the device has not fetched yet, when its next avail position is known. */
  pendingCount?: number;
  chains: Chain[];
  /** Used elements still visible in the ring, oldest first (their chains only when known, e.g. from the watcher). */
  used: PackedUsedElem[];
  errors: RingError[];
  table?: PackedDesc[];
}

export interface PackedOptions extends DecodeOptions {
  table?: boolean;
  /** Keep at most this many (newest) used elements (default: all visible). */
  usedHistory?: number;
  /** Chains already known by buffer id (from a watcher), attached to used elements. */
  known?: ReadonlyMap<number, Chain>;
}

export const EVENT_MODES: EventSuppression['mode'][] = ['enable', 'disable', 'desc', 'reserved'];

export function decodeEventSuppression(b: Uint8Array): EventSuppression {
  const offWrap = b[0] | (b[1] << 8);
  const flags = b[2] | (b[3] << 8);
  return { offWrap, off: offWrap & 0x7fff, wrap: (offWrap & 0x8000) !== 0, flags, mode: EVENT_MODES[flags & 3] };
}

export const packedFlags = (table: DescTable, slot: number): number => table.at14(slot);
/** Available for a driver whose wrap counter is `wrap`: AVAIL == wrap and USED != wrap. */
export const isAvail = (flags: number, wrap: boolean): boolean => ((flags & F_AVAIL) !== 0) === wrap && ((flags & F_USED) !== 0) !== wrap;
/** Used element written in the lap of wrap counter `wrap`: AVAIL == USED == wrap. */
export const isUsed = (flags: number, wrap: boolean): boolean => ((flags & F_AVAIL) !== 0) === wrap && ((flags & F_USED) !== 0) === wrap;
const aBit = (flags: number): boolean => (flags & F_AVAIL) !== 0;
const usedLooking = (flags: number): boolean => aBit(flags) === ((flags & F_USED) !== 0);

/** An all-zero slot: never written (a fresh ring), not a used element of lap 0. */
const neverWritten = (t: DescTable, slot: number): boolean => t.zero(slot);

export interface PackedRaw { table: DescTable; driverEvent: EventSuppression; deviceEvent: EventSuppression }

export function readPacked(ctx: WalkContext): PackedRaw {
  const cfg = ctx.cfg;
  checkRingConfig(cfg);
  const table = new DescTable(ctx.readRing(cfg.desc, cfg.num * DESC_SIZE, 'descriptor ring'));
  const driverEvent = decodeEventSuppression(ctx.readRing(cfg.avail, 4, 'driver event suppression area'));
  const deviceEvent = decodeEventSuppression(ctx.readRing(cfg.used, 4, 'device event suppression area'));
  return { table, driverEvent, deviceEvent };
}

/**
 * Walk the chain whose first descriptor is at `slot` (virtio 1.2 2.8.6, 2.8.7): NEXT continues in the next slot
 * (wrapping), the buffer id comes from the last descriptor, an INDIRECT descriptor carries the whole buffer in a
 * table of packed descriptors read in sequence (only WRITE counts there). At most `limit` slots (<= ring size).
 */
export function walkPackedChain(ctx: WalkContext, table: DescTable, slot: number, limit: number): Chain {
  const vring = ctx.cfg.index;
  const n = ctx.cfg.num;
  const chain: Chain = { head: -1, slot, slots: 0, descs: [], readable: 0, writable: 0, state: 'inflight' };
  let s = slot;
  let count = 0;
  let id = -1;
  // Bounded by n slots plus one indirect table.
  for (;;) {
    if (count >= n) { chain.error = new RingError('chain-too-long', vring, `NEXT set on ${n} descriptors in a row`, { desc: s }); break; }
    if (count >= limit) { chain.error = new RingError('chain-incomplete', vring, `chain from slot ${slot} runs past the driver's position`, { desc: s }); break; }
    if (ctx.budget <= 0) { chain.error = new RingError('budget-exhausted', vring, undefined, { desc: s }); break; }
    ctx.budget--;
    const addr = table.addr(s);
    const len = table.len(s);
    id = table.at12(s);
    const flags = table.at14(s);
    count++;
    if (flags & F_INDIRECT) {
      const entries = readInd(ctx, chain, s, addr, len, flags, false);
      if (typeof entries !== 'number') { chain.error = entries; break; }
      const tv = ctx.scratchTable();
      for (let e = 0; e < entries; e++) {
        if (ctx.budget <= 0) { chain.error = new RingError('budget-exhausted', vring, undefined, { desc: e, indirect: true }); break; }
        ctx.budget--;
        const ef = tv.at14(e);
        if (ef & F_INDIRECT) { chain.error = new RingError('nested-indirect', vring, undefined, { desc: e, indirect: true }); break; }
        const err = addBuf(ctx, chain, {
          index: e, addr: tv.addr(e), len: tv.len(e), flags: ef, write: (ef & F_WRITE) !== 0, fromIndirect: true,
        }, e, true);
        if (err) { chain.error = err; break; }
      }
      break;
    }
    const err = addBuf(ctx, chain, { index: s, addr, len, flags, write: (flags & F_WRITE) !== 0 }, s, false);
    if (err) { chain.error = err; break; }
    if (!(flags & F_NEXT)) break;
    s = s + 1 === n ? 0 : s + 1;
  }
  chain.head = id < 0 ? 0 : id;
  chain.slots = count;
  return chain;
}

/**
 * Infer positions from the flags alone. The driver writes slots strictly in order, so the AVAIL bits read
 * [w … w, !w … !w]: the driver's next slot is the single place they change (virtio 1.2 2.8.1, 2.8.21).
 * The device writes used elements (AVAIL == USED) in the same order behind it: the slot after the newest
 * used-looking one (in age order) is where the next used element goes. More than one change: 'bad-wrap'.
 */
export function inferPacked(table: DescTable, n: number): { driverNext: number; driverWrap: boolean; usedNext: number; usedWrap: boolean; windowStart: number; changes: number } {
  let first = -1;
  let changes = 0;
  let prev = aBit(packedFlags(table, 0));
  for (let i = 1; i < n; i++) {
    const a = aBit(packedFlags(table, i));
    if (a !== prev) { changes++; if (first < 0) first = i; }
    prev = a;
  }
  const a0 = aBit(packedFlags(table, 0));
  const D = first < 0 ? 0 : first;
  const wd = first < 0 ? !a0 : a0;
  // Virtual positions: age order D .. n + D - 1; slot s is at s (previous lap, s >= D) or n + s (current lap, s < D).
  let windowStart = D;
  for (let v = n + D - 1; v >= D; v--) {
    if (usedLooking(packedFlags(table, v % n))) { windowStart = v + 1; break; }
  }
  return { driverNext: D, driverWrap: wd, usedNext: windowStart % n, usedWrap: windowStart >= n ? wd : !wd, windowStart, changes };
}

/** Snapshot a packed ring. Throws RingError only if the ring itself cannot be read; chain errors are collected. */
export function snapshotPacked(mem: GuestMemoryReader, cfg: RingConfig, opts: PackedOptions = {}): PackedSnapshot {
  const ctx = new WalkContext(mem, { ...cfg, packed: true }, opts);
  const raw = readPacked(ctx);
  return buildPackedSnapshot(ctx, raw, opts);
}

export function buildPackedSnapshot(ctx: WalkContext, raw: PackedRaw, opts: PackedOptions = {}): PackedSnapshot {
  const cfg = ctx.cfg;
  const n = cfg.num;
  const t = raw.table;
  const errors: RingError[] = [];
  const inf = inferPacked(t, n);
  if (inf.changes > 1) {
    errors.push(new RingError('bad-wrap', cfg.index, `AVAIL bits change ${inf.changes} times around the ring (driver mid-update, or corrupt ring)`));
  }
  const D = inf.driverNext, wd = inf.driverWrap;
  const end = n + D; // virtual position of the driver's next slot
  const snap: PackedSnapshot = {
    kind: 'packed', vring: cfg.index, num: n, addr: { desc: cfg.desc, driverEvent: cfg.avail, deviceEvent: cfg.used },
    driverEvent: raw.driverEvent, deviceEvent: raw.deviceEvent,
    driver: { next: D, wrap: wd }, device: { usedNext: inf.usedNext, usedWrap: inf.usedWrap },
    inflightCount: 0, inflightExact: true, chains: [], used: [], errors,
  };
  // The newest used element, right before the window: a chain after it with its id may be its stale tail.
  const lastUsedSlot = (inf.windowStart - 1) % n;
  const lastUsedId = inf.windowStart > D && !neverWritten(t, lastUsedSlot) ? t.at12(lastUsedSlot) : -1;
  // Without multi-slot chains there are no stale tails; with them, the window may start on one.
  for (let s = 0; s < n && snap.inflightExact; s++) if (packedFlags(t, s) & DESC_F_NEXT) snap.inflightExact = false;
  // The device's next avail position as a virtual position, if the hint fits the window.
  let hint: number | undefined;
  if (cfg.nextAvail !== undefined && cfg.nextAvailWrap !== undefined && cfg.nextAvail < n) {
    const v = cfg.nextAvailWrap === wd ? (cfg.nextAvail <= D ? n + cfg.nextAvail : undefined) : (cfg.nextAvail >= D ? cfg.nextAvail : undefined);
    if (v !== undefined && v >= inf.windowStart && v <= end) hint = v;
  }
  let pending = 0;
  // Bounded: v strictly increases (every chain takes >= 1 slot) and stops at the driver's position.
  for (let v = inf.windowStart; v < end;) {
    const slot = v % n;
    const wrap = v >= n ? wd : !wd;
    const f = packedFlags(t, slot);
    if (!isAvail(f, wrap)) {
      errors.push(new RingError('bad-wrap', cfg.index, `slot ${slot} inside the in-flight window is not available (flags 0x${f.toString(16)})`, { slot }));
      break;
    }
    const c = walkPackedChain(ctx, t, slot, end - v);
    if (hint !== undefined) { c.fetched = v < hint; if (!c.fetched) pending++; }
    if (v === inf.windowStart && c.head === lastUsedId && (c.slots ?? 1) > 0) { c.maybeStale = true; snap.inflightExact = false; }
    if (c.error) errors.push(c.error);
    snap.chains.push(c);
    v += Math.max(1, c.slots ?? 1);
  }
  snap.inflightCount = snap.chains.length;
  if (hint !== undefined) snap.pendingCount = pending;
  for (let v = D; v < inf.windowStart; v++) {
    const slot = v % n;
    const f = packedFlags(t, slot);
    if (!usedLooking(f)) continue;
    if (neverWritten(t, slot)) continue; // fresh, zeroed ring: not a used element
    const el: PackedUsedElem = { slot, id: t.at12(slot), len: t.len(slot), wrap: aBit(f) };
    const known = opts.known?.get(el.id);
    if (known) el.chain = { ...known, state: 'used', usedLen: el.len };
    snap.used.push(el);
  }
  if (opts.usedHistory !== undefined && snap.used.length > opts.usedHistory) snap.used = snap.used.slice(snap.used.length - opts.usedHistory);
  if (opts.table) {
    snap.table = [];
    for (let s = 0; s < n; s++) {
      const flags = t.at14(s);
      snap.table.push({ slot: s, addr: t.addr(s), len: t.len(s), id: t.at12(s), flags, avail: aBit(flags), used: (flags & F_USED) !== 0 });
    }
  }
  return snap;
}
