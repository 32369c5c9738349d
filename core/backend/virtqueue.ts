// Device side of a virtqueue, split (virtio 1.2 2.7) or packed (2.8): pop chains in batches, write used entries, EVENT_IDX and suppression.
import * as fs from 'node:fs';
import { DeviceMemoryError, type DeviceMemory } from './memory';

import {
  DESC_F_NEXT as VRING_DESC_F_NEXT, DESC_F_WRITE as VRING_DESC_F_WRITE, DESC_F_INDIRECT as VRING_DESC_F_INDIRECT,
  USED_F_NO_NOTIFY as VRING_USED_F_NO_NOTIFY, AVAIL_F_NO_INTERRUPT as VRING_AVAIL_F_NO_INTERRUPT,
  PACKED_DESC_F_AVAIL as VRING_PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED as VRING_PACKED_DESC_F_USED,
  MAX_QUEUE_SIZE as MAX_QUEUE, MAX_INDIRECT_ENTRIES as MAX_INDIRECT,
} from '../virtio/ring';

// One definition of the ring's bits (core/virtio/ring.ts), re-exported under the device side's names.
export {
  VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_DESC_F_INDIRECT, VRING_USED_F_NO_NOTIFY, VRING_AVAIL_F_NO_INTERRUPT,
  VRING_PACKED_DESC_F_AVAIL, VRING_PACKED_DESC_F_USED,
};
/** Packed-ring event suppression flags (virtio 1.2 2.8.10). */
export const RING_EVENT_FLAGS_ENABLE = 0;
export const RING_EVENT_FLAGS_DISABLE = 1;
export const RING_EVENT_FLAGS_DESC = 2;
const TWO32 = 4294967296;

/** vring_need_event (virtio 1.2 2.7.7.2): should the other side be notified for new_idx given its event index? */
export const needEvent = (event: number, newIdx: number, old: number): boolean =>
  ((newIdx - event - 1) & 0xffff) < ((newIdx - old) & 0xffff);

/** A ring problem the device cannot work around (the queue stops until it is set up again). */
export class QueueError extends Error {
  override readonly name = 'QueueError';
  /** notReady: the ring lacks configuration or memory (not a fault: it runs once they arrive). */
  constructor(readonly vring: number, message: string, readonly notReady = false) { super(`vring ${vring}: ${message}`); }
}

/** One descriptor chain as the device walks it: its buffers in order, readable ones first (typed arrays, reused). */
export class Chain {
  head = 0;
  n = 0;
  /** Ring slots the chain takes (packed rings: the used element advances by this many). */
  count = 1;
  addr = new Float64Array(8);
  len = new Uint32Array(8);
  write = new Uint8Array(8);
  readable = 0;
  writable = 0;
  /** Set when the chain is malformed (loop, bad index, bad indirect table...): the device must not touch its buffers. */
  error?: string;

  reset(head: number): void {
    this.head = head; this.n = 0; this.readable = 0; this.writable = 0; this.error = undefined; this.count = 1;
  }

  add(addr: number, len: number, write: boolean): void {
    const n = this.n;
    if (n === this.addr.length) {
      const a = new Float64Array(2 * n), l = new Uint32Array(2 * n), w = new Uint8Array(2 * n);
      a.set(this.addr); l.set(this.len); w.set(this.write);
      this.addr = a; this.len = l; this.write = w;
    }
    this.addr[n] = addr; this.len[n] = len; this.write[n] = write ? 1 : 0;
    this.n = n + 1;
    if (write) this.writable += len; else this.readable += len;
  }

  clone(): Chain {
    const d = new Chain();
    d.reset(this.head);
    for (let i = 0; i < this.n; i++) d.add(this.addr[i], this.len[i], this.write[i] === 1);
    d.error = this.error;
    d.count = this.count;
    return d;
  }
}

/** Wakes the other thread's store buffer: a locked instruction is a full fence on x86 (the pwrite before it is ordered). */
const fenceCell = new Int32Array(new SharedArrayBuffer(4));
export const fence = (): void => { Atomics.add(fenceCell, 0, 0); };

const ONE = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);

export interface QueueStats { popped: number; used: number; calls: number; suppressedCalls: number; kicks: number; kickSignals: number; errors: number }

/**
 * One virtqueue, split (virtio 1.2 2.7) or packed (2.8) once VIRTIO_F_RING_PACKED is negotiated. Addresses come in the front-end's virtual space (SET_VRING_ADDR) and are translated to
 * guest-physical whenever the memory table changes. Nothing here trusts guest memory: every index, length and
 * address is checked before use, and a bad chain is reported on the chain, not thrown.
 */
export class VirtQueue {
  num = 0;
  descUva?: number;
  availUva?: number;
  usedUva?: number;
  logFlag = 0;
  /** Next avail index the device will read (SET_VRING_BASE / GET_VRING_BASE). */
  lastAvail = 0;
  usedIdx = 0;
  kickFd?: number;
  callFd?: number;
  /** Called when new used entries are published, before the driver may be signalled (exact ring capture). */
  onUsed?: () => void;
  errFd?: number;
  /** A kick fd (or "no fd": polling) was given: the ring is started; GET_VRING_BASE stops it. */
  started = false;
  enabled = false;
  eventIdx = false;
  indirectOk = false;
  /** VIRTIO_F_RING_PACKED: descriptor ring with wrap counters; the avail/used addresses are the event areas. */
  packed = false;
  /** Packed: wrap counters and the next used slot. */
  availWrap = true;
  usedWrap = true;
  nextUsed = 0;
  /** Set when the ring cannot be processed (bad addresses, bad index); cleared by reconfiguration. */
  fault?: string;
  readonly stats: QueueStats = { popped: 0, used: 0, calls: 0, suppressedCalls: 0, kicks: 0, kickSignals: 0, errors: 0 };

  private descGpa = 0;
  private availGpa = 0;
  private usedGpa = 0;
  private memGen = -1;
  private syncUsed = true;
  private signalledUsed = 0;
  private signalledValid = false;
  private noNotifySet = false;
  private staged = 0;
  private descBuf = Buffer.alloc(0);
  private desc32 = new Uint32Array(0);
  private desc16 = new Uint16Array(0);
  private ind32 = new Uint32Array(64);
  private ind16 = new Uint16Array(this.ind32.buffer);
  private availBuf = Buffer.alloc(0);
  private usedBuf = Buffer.alloc(0);
  private indBuf = Buffer.from(this.ind32.buffer);
  private readonly small = Buffer.alloc(8);
  private readonly word = Buffer.alloc(8);
  private readonly chains: Chain[] = [];
  /** Packed: ring positions (slot | wrap << 15) where recently popped chains start, for unpop. */
  private starts: number[] = [];
  private stagedCount = new Uint16Array(0);

  constructor(readonly index: number, private readonly mem: DeviceMemory) {}

  setNum(n: number): void {
    if (n === 0 || n > MAX_QUEUE || (n & (n - 1)) !== 0) throw new QueueError(this.index, `invalid ring size ${n} (a power of two up to ${MAX_QUEUE})`);
    this.num = n;
    this.desc32 = new Uint32Array(4 * n);
    this.desc16 = new Uint16Array(this.desc32.buffer);
    this.descBuf = Buffer.from(this.desc32.buffer);
    this.availBuf = Buffer.alloc(2 * n);
    this.usedBuf = Buffer.alloc(8 * n);
    this.stagedCount = new Uint16Array(n);
    this.invalidate();
  }

  setAddr(desc: bigint, used: bigint, avail: bigint, flags: number): void {
    const n = (b: bigint): number => (b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : NaN);
    this.descUva = n(desc); this.usedUva = n(used); this.availUva = n(avail); this.logFlag = flags;
    this.invalidate();
  }

  /**
   * SET_VRING_BASE. Split: the next avail index. Packed: bits 0-14 avail slot, 15 avail wrap, 16-30 used slot,
   * 31 used wrap; a front-end that sends only the avail half has nothing in flight (used = avail).
   */
  setBase(base: number): void {
    if (this.packed) {
      this.lastAvail = base & 0x7fff;
      this.availWrap = (base & 0x8000) !== 0;
      const hi = base >>> 16;
      this.nextUsed = hi ? hi & 0x7fff : this.lastAvail;
      this.usedWrap = hi ? (hi & 0x8000) !== 0 : this.availWrap;
    } else this.lastAvail = base & 0xffff;
    this.invalidate();
  }

  /** The ring stops (GET_VRING_BASE): returns the device's position in the same encoding as setBase. */
  stop(): number {
    this.started = false;
    this.staged = 0;
    if (this.packed) return (this.lastAvail | (this.availWrap ? 0x8000 : 0) | (this.nextUsed << 16) | (this.usedWrap ? 0x80000000 : 0)) >>> 0;
    return this.lastAvail;
  }

  private invalidate(): void {
    this.memGen = -1;
    this.syncUsed = true;
    this.signalledValid = false;
    this.noNotifySet = false;
    this.fault = undefined;
  }

  /**
   * Ring indices shared with the driver are read and written as one aligned 8-byte access: the kernel copies
   * 8 aligned bytes with a single move, but copies 2 bytes byte by byte, and a torn index (old high byte, new low
   * byte) makes either side see hundreds of phantom entries. Returns the u16 at `gpa` read through that window.
   */
  private load16(gpa: number): number {
    const w = gpa - (gpa % 8);
    if (this.mem.check(w, 8) === undefined) {
      this.mem.read(w, this.word, 0, 8);
      return this.word.readUInt16LE(gpa - w);
    }
    // Fallback (window outside memory): read until two reads agree.
    let prev = -1;
    for (;;) {
      this.mem.read(gpa, this.small, 0, 2);
      const v = this.small.readUInt16LE(0);
      if (v === prev) return v;
      prev = v;
    }
  }

  /** The memory table changed: a ring that faulted on its addresses gets another chance. */
  memoryChanged(): void {
    this.memGen = -1;
    this.fault = undefined;
  }

  /** Whether the device may process this ring now. */
  get runnable(): boolean { return this.started && this.enabled && this.fault === undefined; }

  /** Translate the ring areas for the current memory table; throws QueueError (and sets fault) when impossible. */
  prepare(): void {
    if (this.memGen === this.mem.generation) return;
    try {
      if (!this.num) throw new QueueError(this.index, 'ring size not set (SET_VRING_NUM)', true);
      if (this.descUva === undefined || this.availUva === undefined || this.usedUva === undefined) throw new QueueError(this.index, 'ring addresses not set (SET_VRING_ADDR)', true);
      if (this.mem.empty) throw new QueueError(this.index, 'no guest memory (SET_MEM_TABLE / ADD_MEM_REG)', true);
      const area = (what: string, uva: number, len: number): number => {
        if (Number.isNaN(uva)) throw new QueueError(this.index, `${what} address beyond 2^53`);
        try { return this.mem.uvaToGpa(uva, len); } catch (e) {
          throw new QueueError(this.index, `${what} ring outside guest memory: ${(e as Error).message}`);
        }
      };
      this.descGpa = area('descriptor', this.descUva, 16 * this.num);
      this.availGpa = area(this.packed ? 'driver event' : 'avail', this.availUva, this.packed ? 4 : 6 + 2 * this.num);
      this.usedGpa = area(this.packed ? 'device event' : 'used', this.usedUva, this.packed ? 4 : 6 + 8 * this.num);
      this.memGen = this.mem.generation;
      if (this.syncUsed && !this.packed) {
        this.usedIdx = this.load16(this.usedGpa + 2);
        this.syncUsed = false;
      }
    } catch (e) {
      this.memGen = -1;
      const qe = e instanceof QueueError ? e : new QueueError(this.index, (e as Error).message);
      if (!qe.notReady) this.fault = qe.message;
      throw qe;
    }
  }

  /** Chains the driver has made available and the device has not taken. */
  availCount(): number {
    if (this.packed) return this.availPacked(64);
    const idx = this.load16(this.availGpa + 2);
    const n = (idx - this.lastAvail) & 0xffff;
    if (n > this.num) {
      this.fault = `avail index ${idx} is ${n} ahead of the device's ${this.lastAvail}, more than the ring size ${this.num}`;
      throw new QueueError(this.index, this.fault);
    }
    return n;
  }

  /**
   * Take up to `max` available chains (batched: one read for the avail entries, one for the descriptor table).
   * The returned chains are reused by the next pop.
   */
  pop(max: number, base = 0): Chain[] {
    if (this.packed) return this.popPacked(max, base);
    const count = Math.min(this.availCount(), max, this.num);
    if (count === 0) return [];
    const num = this.num, mask = num - 1;
    const start = this.lastAvail & mask;
    const first = Math.min(count, num - start);
    this.mem.read(this.availGpa + 4 + 2 * start, this.availBuf, 0, 2 * first);
    if (first < count) this.mem.read(this.availGpa + 4, this.availBuf, 2 * first, 2 * (count - first));
    this.mem.read(this.descGpa, this.descBuf, 0, 16 * num);
    const out: Chain[] = [];
    for (let i = 0; i < count; i++) {
      let c = this.chains[base + i];
      if (!c) { c = new Chain(); this.chains[base + i] = c; }
      this.walk(this.availBuf.readUInt16LE(2 * i), c);
      out.push(c);
    }
    this.lastAvail = (this.lastAvail + count) & 0xffff;
    this.stats.popped += count;
    return out;
  }

  private walk(head: number, c: Chain): void {
    c.reset(head);
    if (head >= this.num) { c.error = `head ${head} out of range (ring size ${this.num})`; return; }
    // Descriptors read through little-endian typed views (x86_64 and aarch64 are little-endian hosts).
    let t32 = this.desc32, t16 = this.desc16, size = this.num, i = head, ttl = this.num, indirect = false, sawWrite = false, total = 0;
    for (;;) {
      if (ttl-- <= 0) { c.error = indirect ? 'indirect table loops' : 'descriptor loop'; return; }
      const lo = t32[4 * i], hi = t32[4 * i + 1], len = t32[4 * i + 2], flags = t16[8 * i + 6], next = t16[8 * i + 7];
      if (flags & VRING_DESC_F_INDIRECT) {
        if (indirect) { c.error = `nested indirect table at descriptor ${i}`; return; }
        if (!this.indirectOk) { c.error = `INDIRECT descriptor ${i} without VIRTIO_F_RING_INDIRECT_DESC`; return; }
        if (flags & VRING_DESC_F_NEXT) { c.error = `descriptor ${i} has both INDIRECT and NEXT`; return; }
        if (len === 0 || len % 16 || len / 16 > MAX_INDIRECT) { c.error = `indirect table length ${len} invalid`; return; }
        if (hi >= 0x200000) { c.error = `indirect table at 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')} beyond guest memory`; return; }
        const addr = hi * TWO32 + lo;
        const why = this.mem.check(addr, len);
        if (why) { c.error = `indirect table 0x${addr.toString(16)}+${len}: ${why}`; return; }
        if (this.indBuf.length < len) {
          this.ind32 = new Uint32Array(Math.max(len, 2 * this.indBuf.length) / 4);
          this.ind16 = new Uint16Array(this.ind32.buffer);
          this.indBuf = Buffer.from(this.ind32.buffer);
        }
        this.mem.read(addr, this.indBuf, 0, len);
        t32 = this.ind32; t16 = this.ind16; size = len / 16; i = 0; ttl = size; indirect = true;
        continue;
      }
      const w = (flags & VRING_DESC_F_WRITE) !== 0;
      if (w) sawWrite = true;
      else if (sawWrite) { c.error = `device-readable descriptor ${i} after a device-writable one`; return; }
      total += len;
      if (total > 0xffffffff) { c.error = 'chain length above 4 GiB'; return; }
      c.add(hi >= 0x200000 ? NaN : hi * TWO32 + lo, len, w);
      if (!(flags & VRING_DESC_F_NEXT)) return;
      i = next;
      if (i >= size) { c.error = `next index ${i} out of range (${indirect ? 'indirect table' : 'ring'} size ${size})`; return; }
    }
  }

  /** Give back the last `k` popped chains untouched (the device could not use them yet). */
  unpop(k: number): void {
    if (k <= 0) return;
    if (this.packed) {
      const at = this.starts[this.starts.length - k];
      this.starts.length -= k;
      this.lastAvail = at & 0x7fff;
      this.availWrap = (at & 0x8000) !== 0;
      this.stats.popped -= k;
      return;
    }
    this.lastAvail = (this.lastAvail - k) & 0xffff;
    this.stats.popped -= k;
  }

  /** Stage a used element; written by flush(). */
  push(head: number, len: number, count = 1): void {
    if (this.staged >= this.num) this.flush();
    this.stagedCount[this.staged] = count;
    const o = 8 * this.staged++;
    this.usedBuf.writeUInt32LE(head, o);
    this.usedBuf.writeUInt32LE(len >>> 0, o + 4);
  }

  /** Write staged used elements and the new used index, then notify the driver if it wants it. */
  /** Stage a used element for a popped chain (its buffer id and, on packed rings, its slot count). */
  use(c: Chain, len: number): void { this.push(c.head, len, c.count); }

  flush(): void {
    const n = this.staged;
    if (!n) return;
    this.staged = 0;
    if (this.packed) { this.flushPacked(n); return; }
    const mask = this.num - 1;
    const start = this.usedIdx & mask;
    const first = Math.min(n, this.num - start);
    this.mem.write(this.usedGpa + 4 + 8 * start, this.usedBuf, 0, 8 * first);
    if (first < n) this.mem.write(this.usedGpa + 4, this.usedBuf, 8 * first, 8 * (n - first));
    this.usedIdx = (this.usedIdx + n) & 0xffff;
    this.store16(this.usedGpa + 2, this.usedIdx);
    this.stats.used += n;
    fence();
    this.onUsed?.();
    if (this.shouldCall()) this.call();
    else this.stats.suppressedCalls++;
  }

  /**
   * Publish a device-written u16 of the used ring (idx) with one 8-byte store: the window starts at the used ring
   * (flags, idx, first element: only the device writes them), read first so the other bytes keep their values.
   */
  private store16(gpa: number, v: number): void {
    const w = this.usedGpa;
    if (gpa - w + 2 <= 8 && this.mem.check(w, 8) === undefined && (w % 64) <= 56) {
      this.mem.read(w, this.word, 0, 8);
      this.word.writeUInt16LE(v, gpa - w);
      this.mem.write(w, this.word, 0, 8);
      return;
    }
    this.small.writeUInt16LE(v, 0);
    this.mem.write(gpa, this.small, 0, 2);
  }

  /** libvhost-user's rule: with EVENT_IDX, compare against the used index at the previous check (signalled or not). */
  private shouldCall(): boolean {
    if (this.eventIdx) {
      const usedEvent = this.load16(this.availGpa + 4 + 2 * this.num);
      const valid = this.signalledValid, old = this.signalledUsed;
      this.signalledValid = true;
      this.signalledUsed = this.usedIdx;
      return !valid || needEvent(usedEvent, this.usedIdx, old);
    }
    return (this.load16(this.availGpa) & VRING_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /** Signal the call eventfd (no fd: the driver polls). */
  call(): void {
    if (this.callFd === undefined) return;
    try { fs.writeSync(this.callFd, ONE, 0, 8); this.stats.calls++; } catch { /* EAGAIN: counter saturated, the driver is signalled anyway */ }
  }

  /** Signal the error eventfd, if any. */
  signalError(): void {
    this.stats.errors++;
    if (this.errFd === undefined) return;
    try { fs.writeSync(this.errFd, ONE, 0, 8); } catch { /* best effort */ }
  }

  /**
   * Ask for kicks (enable) or tell the driver it need not kick (disable) while the device is busy with the ring.
   * EVENT_IDX: avail_event = next avail index; otherwise the used ring's NO_NOTIFY flag.
   */
  notifyOn(enable: boolean): void {
    if (this.packed) {
      // Device event suppression: off_wrap (next avail slot + wrap) then flags.
      const flags = !enable ? RING_EVENT_FLAGS_DISABLE : this.eventIdx ? RING_EVENT_FLAGS_DESC : RING_EVENT_FLAGS_ENABLE;
      if (!enable && this.noNotifySet) return;
      this.noNotifySet = !enable;
      this.small.writeUInt16LE(this.lastAvail | (this.availWrap ? 0x8000 : 0), 0);
      this.small.writeUInt16LE(flags, 2);
      this.mem.write(this.usedGpa, this.small, 0, 4);
      return;
    }
    if (this.eventIdx) {
      if (!enable) return;
      this.small.writeUInt16LE(this.lastAvail, 0);
      this.mem.write(this.usedGpa + 4 + 8 * this.num, this.small, 0, 2);
      return;
    }
    if (this.noNotifySet === !enable) return;
    this.noNotifySet = !enable;
    this.store16(this.usedGpa, enable ? 0 : VRING_USED_F_NO_NOTIFY);
  }

  /**
   * Run `handle` over every available chain until the ring is empty with kicks re-enabled (no lost wakeup).
   * `handle` returns false to stop early (e.g. no room downstream); the loop then leaves kicks enabled.
   * With `pollUs`, the device keeps kicks disabled and polls the avail index until it has been idle that long
   * (busy polling after a kick, as vhost-net's busyloop does). After `sliceUs` of work the call returns with
   * `yielded` set, kicks enabled, so the caller can let other fds run and come back.
   */
  drain(handle: (chains: Chain[]) => boolean, batch = 64, pollUs = 0, sliceUs = Infinity): { total: number; yielded: boolean } {
    this.prepare();
    let total = 0;
    const t0 = pollUs > 0 || sliceUs !== Infinity ? performance.now() : 0;
    for (;;) {
      this.notifyOn(false);
      let idleSince = -1;
      for (;;) {
        const chains = this.pop(batch);
        if (!chains.length) {
          if (pollUs <= 0) break;
          const now = performance.now();
          if (idleSince < 0) idleSince = now;
          else if ((now - idleSince) * 1000 >= pollUs) break;
          if ((now - t0) * 1000 >= sliceUs) break;
          continue;
        }
        idleSince = -1;
        total += chains.length;
        const more = handle(chains);
        this.flush();
        if (!more) { this.notifyOn(true); return { total, yielded: false }; }
        if (sliceUs !== Infinity && (performance.now() - t0) * 1000 >= sliceUs) {
          this.notifyOn(true);
          return { total, yielded: true };
        }
      }
      this.notifyOn(true);
      fence();
      if (this.availCount() === 0) return { total, yielded: false };
      if (sliceUs !== Infinity && (performance.now() - t0) * 1000 >= sliceUs) return { total, yielded: true };
    }
  }

  // ---- packed ring (virtio 1.2 2.8) ----------------------------------------------------------------------

  private isAvail(flags: number, wrap: boolean): boolean {
    return ((flags & VRING_PACKED_DESC_F_AVAIL) !== 0) === wrap && ((flags & VRING_PACKED_DESC_F_USED) !== 0) !== wrap;
  }

  /** Chains available from the device's position, counted up to `max` (reads the descriptor ring once). */
  private availPacked(max: number): number {
    this.mem.read(this.descGpa, this.descBuf, 0, 16 * this.num);
    let pos = this.lastAvail, wrap = this.availWrap, n = 0;
    for (let k = 0; k < this.num && n < max; k++) {
      const flags = this.desc16[8 * pos + 7];
      if (!this.isAvail(flags, wrap)) break;
      if (!(flags & VRING_DESC_F_NEXT)) n++;
      if (++pos === this.num) { pos = 0; wrap = !wrap; }
    }
    return n;
  }

  private popPacked(max: number, base: number): Chain[] {
    const out: Chain[] = [];
    if (max <= 0) return out;
    this.mem.read(this.descGpa, this.descBuf, 0, 16 * this.num);
    if (this.starts.length > 2 * this.num) this.starts.splice(0, this.starts.length - this.num);
    for (let i = 0; i < max; i++) {
      const flags = this.desc16[8 * this.lastAvail + 7];
      if (!this.isAvail(flags, this.availWrap)) break;
      let c = this.chains[base + i];
      if (!c) { c = new Chain(); this.chains[base + i] = c; }
      this.starts.push(this.lastAvail | (this.availWrap ? 0x8000 : 0));
      this.walkPacked(c);
      out.push(c);
    }
    this.stats.popped += out.length;
    return out;
  }

  /** Walk the chain at the device's position and advance past it. A chain that cannot be delimited faults the ring. */
  private walkPacked(c: Chain): void {
    c.reset(0);
    const num = this.num, t32 = this.desc32, t16 = this.desc16;
    let pos = this.lastAvail, wrap = this.availWrap, count = 0, sawWrite = false, id = 0;
    const fail = (why: string): never => {
      this.fault = `packed chain at slot ${this.lastAvail}: ${why}`;
      throw new QueueError(this.index, this.fault);
    };
    for (;;) {
      const lo = t32[4 * pos], hi = t32[4 * pos + 1], len = t32[4 * pos + 2], flags = t16[8 * pos + 7];
      id = t16[8 * pos + 6];
      if (count > 0 && !this.isAvail(flags, wrap)) fail('runs into a descriptor that is not available');
      if (++count > num) fail('longer than the ring');
      if (flags & VRING_DESC_F_INDIRECT) {
        if (count > 1 || (flags & VRING_DESC_F_NEXT)) fail('INDIRECT descriptor inside a chain');
        if (!this.indirectOk) fail('INDIRECT descriptor without VIRTIO_F_RING_INDIRECT_DESC');
        if (len === 0 || len % 16 || len / 16 > MAX_INDIRECT) fail(`indirect table length ${len} invalid`);
        if (hi >= 0x200000) fail('indirect table beyond guest memory');
        const addr = hi * TWO32 + lo;
        const why = this.mem.check(addr, len);
        if (why) { c.error = `indirect table 0x${addr.toString(16)}+${len}: ${why}`; }
        else {
          if (this.indBuf.length < len) {
            this.ind32 = new Uint32Array(Math.max(len, 2 * this.indBuf.length) / 4);
            this.ind16 = new Uint16Array(this.ind32.buffer);
            this.indBuf = Buffer.from(this.ind32.buffer);
          }
          this.mem.read(addr, this.indBuf, 0, len);
          for (let k = 0; k < len / 16 && !c.error; k++) {
            const w = (this.ind16[8 * k + 7] & VRING_DESC_F_WRITE) !== 0;
            if (w) sawWrite = true;
            else if (sawWrite) { c.error = `device-readable indirect descriptor ${k} after a device-writable one`; break; }
            const h = this.ind32[4 * k + 1];
            c.add(h >= 0x200000 ? NaN : h * TWO32 + this.ind32[4 * k], this.ind32[4 * k + 2], w);
          }
        }
      } else {
        const w = (flags & VRING_DESC_F_WRITE) !== 0;
        if (w) sawWrite = true;
        else if (sawWrite && !c.error) c.error = `device-readable descriptor at slot ${pos} after a device-writable one`;
        c.add(hi >= 0x200000 ? NaN : hi * TWO32 + lo, len, w);
      }
      if (++pos === num) { pos = 0; wrap = !wrap; }
      if (!(flags & VRING_DESC_F_NEXT)) break;
    }
    if (c.readable + c.writable > 0xffffffff && !c.error) c.error = 'chain length above 4 GiB';
    c.head = id;
    c.count = count;
    this.lastAvail = pos;
    this.availWrap = wrap;
  }

  /** Write used descriptors: all but the first in full, then the first's id/len, then its flags (publishes the batch). */
  private flushPacked(n: number): void {
    const num = this.num;
    const firstPos = this.nextUsed;
    let pos = this.nextUsed, wrap = this.usedWrap;
    const ubuf = this.usedBuf;
    const d = this.word;
    const first = this.small;
    for (let i = 0; i < n; i++) {
      const id = ubuf.readUInt32LE(8 * i), len = ubuf.readUInt32LE(8 * i + 4);
      d.writeUInt32LE(len, 0);
      d.writeUInt16LE(id & 0xffff, 4);
      d.writeUInt16LE(wrap ? VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED : 0, 6);
      // len, id and flags land in one aligned 8-byte store: the driver never sees flags before len and id.
      if (i === 0) d.copy(first, 0, 0, 8);
      else this.mem.write(this.descGpa + 16 * pos + 8, d, 0, 8);
      pos += this.stagedCount[i];
      while (pos >= num) { pos -= num; wrap = !wrap; }
    }
    this.mem.write(this.descGpa + 16 * firstPos + 8, first, 0, 8); // the first one last: it publishes the batch
    this.nextUsed = pos;
    this.usedWrap = wrap;
    this.stats.used += n;
    fence();
    if (this.shouldCallPacked()) this.call();
    else this.stats.suppressedCalls++;
  }

  /** Driver event suppression (DPDK's rule for DESC mode, positions in ring slots). */
  private shouldCallPacked(): boolean {
    this.mem.read(this.availGpa, this.small, 0, 4);
    const offWrap = this.small.readUInt16LE(0), flags = this.small.readUInt16LE(2);
    const valid = this.signalledValid;
    let old = this.signalledUsed;
    const now = this.nextUsed;
    this.signalledValid = true;
    this.signalledUsed = now;
    if (flags !== RING_EVENT_FLAGS_DESC) return flags !== RING_EVENT_FLAGS_DISABLE;
    if (!valid) return true;
    let off = offWrap & 0x7fff;
    if (now <= old) old -= this.num;
    if ((this.usedWrap ? 1 : 0) !== offWrap >> 15) off -= this.num;
    return needEvent(off, now, old);
  }

  /** Guest-physical ring areas (for reports). */
  areas(): { desc: number; avail: number; used: number } { return { desc: this.descGpa, avail: this.availGpa, used: this.usedGpa }; }
}

/** Copy between a chain's buffers and a flat byte range: which buffers, which offsets. */
export function chainCopyCheck(mem: DeviceMemory, c: Chain): string | undefined {
  for (let i = 0; i < c.n; i++) {
    if (c.len[i] === 0) continue;
    const a = c.addr[i];
    if (Number.isNaN(a)) return `buffer ${i} address beyond guest memory`;
    const why = mem.check(a, c.len[i]);
    if (why) return `buffer ${i} (0x${a.toString(16)}+${c.len[i]}): ${why}`;
  }
  return undefined;
}

/** Read `len` bytes of the chain's readable part starting at `from` into dst (one gather). Throws DeviceMemoryError. */
export function readChain(mem: DeviceMemory, c: Chain, from: number, dst: Uint8Array, dstOff: number, len: number): void {
  const { addrs, lens } = mem.segs();
  let skip = from, got = 0;
  for (let i = 0; i < c.n && got < len; i++) {
    if (c.write[i]) break;
    const l = c.len[i];
    if (skip >= l) { skip -= l; continue; }
    const n = Math.min(l - skip, len - got);
    const a = c.addr[i];
    if (Number.isNaN(a)) throw new DeviceMemoryError('gpa', a, n, 'buffer address beyond guest memory');
    addrs.push(a + skip);
    lens.push(n);
    got += n;
    skip = 0;
  }
  if (got < len) throw new DeviceMemoryError('gpa', 0, len, `chain has only ${c.readable} readable bytes`);
  mem.readSegs(addrs, lens, addrs.length, dst, dstOff);
}

/** Write len bytes from src into the chain's writable part starting at `from` (one scatter). Throws DeviceMemoryError. */
export function writeChain(mem: DeviceMemory, c: Chain, from: number, src: Uint8Array, srcOff: number, len: number): void {
  const { addrs, lens } = mem.segs();
  let skip = from, put = 0;
  for (let i = 0; i < c.n && put < len; i++) {
    if (!c.write[i]) continue;
    const l = c.len[i];
    if (skip >= l) { skip -= l; continue; }
    const n = Math.min(l - skip, len - put);
    const a = c.addr[i];
    if (Number.isNaN(a)) throw new DeviceMemoryError('gpa', a, n, 'buffer address beyond guest memory');
    addrs.push(a + skip);
    lens.push(n);
    put += n;
    skip = 0;
  }
  if (put < len) throw new DeviceMemoryError('gpa', 0, len, `chain has only ${c.writable} writable bytes`);
  mem.writeSegs(addrs, lens, addrs.length, src, srcOff);
}
