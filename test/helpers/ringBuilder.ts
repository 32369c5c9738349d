// Test-only driver-side ring builder over synthetic memory: lays out split and packed rings, adds chains, marks them used.
import { BufferMemory, type BufferMemoryOptions } from '../../core/memory/bufferMemory';
import {
  DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED, type RingConfig,
} from '../../core/virtio/ring';

/** Default layout: one region of `size` bytes at GPA 0x10_0000, mapped by the front-end at UVA = GPA + UVA_DELTA. */
export const GPA_BASE = 0x10_0000n;
export const UVA_DELTA = 0x7f00_0000_0000n;

export interface Buf {
  len: number;
  write?: boolean;
  /** Bytes to place in the buffer (device-readable data, or pre-filled device-writable data). */
  data?: Uint8Array;
  /** Use this GPA instead of allocating (hostile cases). */
  addr?: bigint;
}

export interface ChainOpts {
  /** Put the buffers in an indirect table (one descriptor in the ring). */
  indirect?: boolean;
}

export function makeMemory(size = 4 << 20, opts: BufferMemoryOptions = {}): BufferMemory {
  return new BufferMemory([{ guestPhysAddr: GPA_BASE, userspaceAddr: GPA_BASE + UVA_DELTA, bytes: new Uint8Array(size) }], opts);
}

/** Bump allocator for guest memory in the first region, plus little-endian writers (through writeGpa). */
export class GuestArena {
  private next: bigint;
  readonly end: bigint;
  constructor(readonly mem: BufferMemory, start?: bigint, end?: bigint) {
    const r = mem.mappedRegions[0];
    this.next = start ?? r.gpa;
    this.end = end ?? r.gpaEnd;
  }
  alloc(len: number, align = 16): bigint {
    const a = BigInt(align);
    const at = (this.next + a - 1n) / a * a;
    if (at + BigInt(len) > this.end) throw new Error(`arena exhausted (${len} bytes)`);
    this.next = at + BigInt(len);
    return at;
  }
  write(addr: bigint, data: Uint8Array): void { if (data.byteLength) this.mem.writeGpa(addr, data); }
  u16(addr: bigint, v: number): void { const b = new Uint8Array(2); new DataView(b.buffer).setUint16(0, v, true); this.write(addr, b); }
  u32(addr: bigint, v: number): void { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, v >>> 0, true); this.write(addr, b); }
  u64(addr: bigint, v: bigint): void { const b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, v), true); this.write(addr, b); }
  desc(addr: bigint, d: { addr: bigint; len: number; flags: number; next: number }): void {
    const b = new Uint8Array(16);
    const v = new DataView(b.buffer);
    v.setBigUint64(0, BigInt.asUintN(64, d.addr), true); v.setUint32(8, d.len >>> 0, true); v.setUint16(12, d.flags, true); v.setUint16(14, d.next, true);
    this.write(addr, b);
  }
  read(addr: bigint, len: number): Uint8Array { return this.mem.readGpa(addr, len); }
  /** Allocate and fill the buffers of a chain. */
  buffers(bufs: Buf[]): { addr: bigint; len: number; write: boolean }[] {
    return bufs.map((b) => {
      const addr = b.addr ?? this.alloc(Math.max(1, b.len), 8);
      if (b.data && b.addr === undefined) this.write(addr, b.data.subarray(0, b.len));
      return { addr, len: b.len, write: !!b.write };
    });
  }
}

/** Driver side of a split ring (virtio 1.2 2.7), plus a device-side `use()` to mark chains used. */
export class SplitRingBuilder {
  readonly arena: GuestArena;
  readonly descGpa: bigint;
  readonly availGpa: bigint;
  readonly usedGpa: bigint;
  private free: number[];
  availIdx: number;
  usedIdx: number;
  readonly chains = new Map<number, { descs: number[] }>();

  constructor(readonly mem: BufferMemory, readonly num: number, readonly index = 0, opts: { eventIdx?: boolean; startIdx?: number; arena?: GuestArena } = {}) {
    this.arena = opts.arena ?? new GuestArena(mem);
    const n = Math.max(num, 1);
    this.descGpa = this.arena.alloc(16 * n, 16);
    this.availGpa = this.arena.alloc(6 + 2 * n, 2);
    this.usedGpa = this.arena.alloc(6 + 8 * n, 4);
    this.free = Array.from({ length: n }, (_, i) => i);
    this.availIdx = this.usedIdx = opts.startIdx ?? 0;
    this.arena.u16(this.availGpa + 2n, this.availIdx);
    this.arena.u16(this.usedGpa + 2n, this.usedIdx);
    this.eventIdx = opts.eventIdx ?? false;
  }
  eventIdx: boolean;

  get cfg(): RingConfig {
    return { index: this.index, num: this.num, desc: this.descGpa + UVA_DELTA, avail: this.availGpa + UVA_DELTA, used: this.usedGpa + UVA_DELTA, eventIdx: this.eventIdx, indirect: true };
  }

  get freeCount(): number { return this.free.length; }

  /** Write descriptors for a chain (direct or through an indirect table) and return its head, without offering it. */
  build(bufs: Buf[], opts: ChainOpts = {}): number {
    const placed = this.arena.buffers(bufs);
    if (opts.indirect) {
      const table = this.arena.alloc(16 * placed.length, 16);
      placed.forEach((b, i) => this.arena.desc(table + BigInt(16 * i), {
        addr: b.addr, len: b.len, flags: (b.write ? DESC_F_WRITE : 0) | (i < placed.length - 1 ? DESC_F_NEXT : 0), next: i + 1,
      }));
      const head = this.take(1)[0];
      this.setDesc(head, { addr: table, len: 16 * placed.length, flags: DESC_F_INDIRECT, next: 0 });
      this.chains.set(head, { descs: [head] });
      return head;
    }
    const ids = this.take(placed.length);
    placed.forEach((b, i) => this.setDesc(ids[i], {
      addr: b.addr, len: b.len, flags: (b.write ? DESC_F_WRITE : 0) | (i < placed.length - 1 ? DESC_F_NEXT : 0), next: ids[i + 1] ?? 0,
    }));
    this.chains.set(ids[0], { descs: ids });
    return ids[0];
  }

  /** build() + offer(): returns the head. */
  add(bufs: Buf[], opts: ChainOpts = {}): number {
    const head = this.build(bufs, opts);
    this.offer(head);
    return head;
  }

  private take(k: number): number[] {
    if (k > this.free.length) throw new Error(`ring full: need ${k} descriptors, ${this.free.length} free`);
    return this.free.splice(0, k);
  }

  setDesc(i: number, d: { addr: bigint; len: number; flags: number; next: number }): void { this.arena.desc(this.descGpa + BigInt(16 * i), d); }

  /** Put a head in the avail ring and bump avail.idx. */
  offer(head: number): void {
    this.arena.u16(this.availGpa + 4n + BigInt(2 * (this.availIdx % this.num)), head);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.arena.u16(this.availGpa + 2n, this.availIdx);
  }

  /** Device side: write a used element, bump used.idx, return the descriptors to the free list (as the driver would). */
  use(head: number, len: number, data?: Uint8Array): void {
    const c = this.chains.get(head);
    if (data && c) this.fillWritable(head, data);
    const at = this.usedGpa + 4n + BigInt(8 * (this.usedIdx % this.num));
    this.arena.u32(at, head);
    this.arena.u32(at + 4n, len);
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    this.arena.u16(this.usedGpa + 2n, this.usedIdx);
    if (c) { this.free.push(...c.descs); this.chains.delete(head); }
  }

  /** Device side: write data into the chain's writable buffers in order. */
  fillWritable(head: number, data: Uint8Array): void {
    const d = this.readChain(head).filter((x) => x.write);
    let off = 0;
    for (const b of d) {
      if (off >= data.byteLength) break;
      const k = Math.min(b.len, data.byteLength - off);
      this.arena.write(b.addr, data.subarray(off, off + k));
      off += k;
    }
  }

  /** Follow a well-formed chain (builder's own, for fillWritable). */
  readChain(head: number): { addr: bigint; len: number; write: boolean }[] {
    const out: { addr: bigint; len: number; write: boolean }[] = [];
    let i = head;
    for (let k = 0; k < this.num; k++) {
      const v = new DataView(this.arena.read(this.descGpa + BigInt(16 * i), 16).buffer);
      const addr = v.getBigUint64(0, true), len = v.getUint32(8, true), flags = v.getUint16(12, true), next = v.getUint16(14, true);
      if (flags & DESC_F_INDIRECT) {
        for (let j = 0; j < len / 16; j++) {
          const e = new DataView(this.arena.read(addr + BigInt(16 * j), 16).buffer);
          out.push({ addr: e.getBigUint64(0, true), len: e.getUint32(8, true), write: (e.getUint16(12, true) & DESC_F_WRITE) !== 0 });
        }
        break;
      }
      out.push({ addr, len, write: (flags & DESC_F_WRITE) !== 0 });
      if (!(flags & DESC_F_NEXT)) break;
      i = next;
    }
    return out;
  }

  setAvailIdx(v: number): void { this.availIdx = v & 0xffff; this.arena.u16(this.availGpa + 2n, this.availIdx); }
  setUsedIdx(v: number): void { this.usedIdx = v & 0xffff; this.arena.u16(this.usedGpa + 2n, this.usedIdx); }
  setAvailEntry(pos: number, head: number): void { this.arena.u16(this.availGpa + 4n + BigInt(2 * (pos % this.num)), head); }
  setUsedEntry(pos: number, id: number, len: number): void {
    const at = this.usedGpa + 4n + BigInt(8 * (pos % this.num));
    this.arena.u32(at, id);
    this.arena.u32(at + 4n, len);
  }
  setUsedEvent(v: number): void { this.arena.u16(this.availGpa + 4n + BigInt(2 * this.num), v); }
  setAvailEvent(v: number): void { this.arena.u16(this.usedGpa + 4n + BigInt(8 * this.num), v); }
}

/** Driver side of a packed ring (virtio 1.2 2.8), plus device-side `use()`. */
export class PackedRingBuilder {
  readonly arena: GuestArena;
  readonly descGpa: bigint;
  readonly driverEventGpa: bigint;
  readonly deviceEventGpa: bigint;
  /** Driver: next slot and wrap counter (starts at 1). */
  next = 0;
  wrap = true;
  /** Device: next used slot and wrap counter. */
  usedNext = 0;
  usedWrap = true;
  private nextId = 0;
  private freeIds: number[] = [];
  readonly chains = new Map<number, { slot: number; slots: number; wrap: boolean }>();

  constructor(readonly mem: BufferMemory, readonly num: number, readonly index = 0, opts: { arena?: GuestArena } = {}) {
    this.arena = opts.arena ?? new GuestArena(mem);
    this.descGpa = this.arena.alloc(16 * Math.max(num, 1), 16);
    this.driverEventGpa = this.arena.alloc(4, 4);
    this.deviceEventGpa = this.arena.alloc(4, 4);
  }

  get cfg(): RingConfig {
    return { index: this.index, num: this.num, desc: this.descGpa + UVA_DELTA, avail: this.driverEventGpa + UVA_DELTA, used: this.deviceEventGpa + UVA_DELTA, packed: true, indirect: true };
  }

  private flagsFor(wrap: boolean): number { return wrap ? PACKED_DESC_F_AVAIL : PACKED_DESC_F_USED; }

  writeDesc(slot: number, d: { addr: bigint; len: number; id: number; flags: number }): void {
    const b = new Uint8Array(16);
    const v = new DataView(b.buffer);
    v.setBigUint64(0, BigInt.asUintN(64, d.addr), true); v.setUint32(8, d.len >>> 0, true); v.setUint16(12, d.id, true); v.setUint16(14, d.flags, true);
    this.arena.write(this.descGpa + BigInt(16 * slot), b);
  }

  /** Offer a chain at the driver's position (head flags written last); returns its buffer id. */
  add(bufs: Buf[], opts: ChainOpts & { id?: number; idOnlyInLast?: boolean } = {}): number {
    const placed = this.arena.buffers(bufs);
    const id = opts.id ?? this.freeIds.shift() ?? this.nextId++;
    const items = opts.indirect ? [(() => {
      const table = this.arena.alloc(16 * placed.length, 16);
      placed.forEach((b, i) => {
        const e = new Uint8Array(16);
        const v = new DataView(e.buffer);
        v.setBigUint64(0, b.addr, true); v.setUint32(8, b.len, true); v.setUint16(12, 0, true); v.setUint16(14, b.write ? DESC_F_WRITE : 0, true);
        this.arena.write(table + BigInt(16 * i), e);
      });
      return { addr: table, len: 16 * placed.length, flags: DESC_F_INDIRECT };
    })()] : placed.map((b, i) => ({ addr: b.addr, len: b.len, flags: (b.write ? DESC_F_WRITE : 0) | (i < placed.length - 1 ? DESC_F_NEXT : 0) }));
    if (items.length > this.num) throw new Error('chain longer than the ring');
    const headSlot = this.next, headWrap = this.wrap;
    let headDesc: { addr: bigint; len: number; id: number; flags: number } | undefined;
    items.forEach((it, i) => {
      const d = { addr: it.addr, len: it.len, id: opts.idOnlyInLast && i < items.length - 1 ? 0 : id, flags: it.flags | this.flagsFor(this.wrap) };
      if (i === 0) headDesc = d; else this.writeDesc(this.next, d);
      this.next++;
      if (this.next === this.num) { this.next = 0; this.wrap = !this.wrap; }
    });
    this.writeDesc(headSlot, headDesc!);
    this.chains.set(id, { slot: headSlot, slots: items.length, wrap: headWrap });
    return id;
  }

  /** Device side: write a used element for buffer `id` at the used position; skip the slots its chain took. */
  use(id: number, len: number, data?: Uint8Array): void {
    const c = this.chains.get(id);
    if (data) this.fillWritable(id, data);
    const f = this.usedWrap ? PACKED_DESC_F_AVAIL | PACKED_DESC_F_USED : 0;
    const v = new DataView(this.arena.read(this.descGpa + BigInt(16 * this.usedNext), 16).buffer);
    this.writeDesc(this.usedNext, { addr: v.getBigUint64(0, true), len, id, flags: f });
    this.usedNext += c?.slots ?? 1;
    if (this.usedNext >= this.num) { this.usedNext -= this.num; this.usedWrap = !this.usedWrap; }
    if (c) { this.chains.delete(id); this.freeIds.push(id); }
  }

  /** Device side: fill the writable buffers of a chain before use() overwrites its head. */
  fillWritable(id: number, data: Uint8Array): void {
    const c = this.chains.get(id);
    if (!c) return;
    const bufs: { addr: bigint; len: number }[] = [];
    let s = c.slot;
    for (let k = 0; k < c.slots; k++) {
      const v = new DataView(this.arena.read(this.descGpa + BigInt(16 * s), 16).buffer);
      const addr = v.getBigUint64(0, true), len = v.getUint32(8, true), flags = v.getUint16(14, true);
      if (flags & DESC_F_INDIRECT) {
        for (let j = 0; j < len / 16; j++) {
          const e = new DataView(this.arena.read(addr + BigInt(16 * j), 16).buffer);
          if (e.getUint16(14, true) & DESC_F_WRITE) bufs.push({ addr: e.getBigUint64(0, true), len: e.getUint32(8, true) });
        }
      } else if (flags & DESC_F_WRITE) bufs.push({ addr, len });
      s = (s + 1) % this.num;
    }
    let off = 0;
    for (const b of bufs) {
      if (off >= data.byteLength) break;
      const k = Math.min(b.len, data.byteLength - off);
      this.arena.write(b.addr, data.subarray(off, off + k));
      off += k;
    }
  }

  setDriverEvent(offWrap: number, flags: number): void { this.arena.u16(this.driverEventGpa, offWrap); this.arena.u16(this.driverEventGpa + 2n, flags); }
  setDeviceEvent(offWrap: number, flags: number): void { this.arena.u16(this.deviceEventGpa, offWrap); this.arena.u16(this.deviceEventGpa + 2n, flags); }
}
