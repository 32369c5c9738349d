// A minimal driver side of split and packed virtqueues over fd-backed guest memory: lays out rings, offers chains, reads used.
// Used by the back-end's tests and benches (and by the scripted front-end) to play the guest; never by the device itself.
import { DeviceMemory } from './memory';
import { VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_PACKED_DESC_F_AVAIL, VRING_PACKED_DESC_F_USED } from './virtqueue';

export interface DriverBuf {
  len: number;
  write?: boolean;
  data?: Uint8Array;
  /** Use this guest-physical address instead of allocating (hostile cases). */
  addr?: number;
}

/** Bump allocator over one guest memory region. */
export class Arena {
  private next: number;
  constructor(readonly mem: DeviceMemory, start: number, readonly end: number) { this.next = start; }
  alloc(len: number, align = 16): number {
    const at = Math.ceil(this.next / align) * align;
    if (at + len > this.end) throw new Error(`arena exhausted (${len} bytes)`);
    this.next = at + len;
    return at;
  }
}

export class SplitDriver {
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  availIdx = 0;
  usedSeen = 0;
  private free: number[];
  private readonly heads = new Map<number, number[]>();
  private readonly b2 = Buffer.alloc(2);

  constructor(readonly mem: DeviceMemory, readonly arena: Arena, readonly num: number) {
    this.desc = arena.alloc(16 * num, 16);
    this.avail = arena.alloc(6 + 2 * num, 4);
    this.used = arena.alloc(6 + 8 * num, 4096);
    this.free = Array.from({ length: num }, (_, i) => i);
    mem.write(this.avail, Buffer.alloc(6 + 2 * num), 0, 6 + 2 * num);
    mem.write(this.used, Buffer.alloc(6 + 8 * num), 0, 6 + 8 * num);
  }

  private u16(addr: number, v: number): void { this.b2.writeUInt16LE(v & 0xffff); this.mem.write(addr, this.b2, 0, 2); }
  private r16(addr: number): number { this.mem.read(addr, this.b2, 0, 2); return this.b2.readUInt16LE(0); }

  writeDesc(table: number, i: number, addr: number, len: number, flags: number, next: number): void {
    const b = Buffer.alloc(16);
    b.writeBigUInt64LE(BigInt(addr), 0);
    b.writeUInt32LE(len >>> 0, 8);
    b.writeUInt16LE(flags, 12);
    b.writeUInt16LE(next, 14);
    this.mem.write(table + 16 * i, b, 0, 16);
  }

  /** Allocate buffers (filling readable ones), write the chain (optionally through an indirect table), offer it. */
  add(bufs: DriverBuf[], opts: { indirect?: boolean; offer?: boolean } = {}): { head: number; addrs: number[] } {
    const addrs = bufs.map((b) => {
      const a = b.addr ?? this.arena.alloc(Math.max(1, b.len), 8);
      if (b.data && b.addr === undefined) this.mem.write(a, b.data, 0, Math.min(b.len, b.data.byteLength));
      return a;
    });
    let head: number;
    if (opts.indirect) {
      const table = this.arena.alloc(16 * bufs.length, 16);
      bufs.forEach((b, i) => this.writeDesc(table, i, addrs[i], b.len, (b.write ? VRING_DESC_F_WRITE : 0) | (i + 1 < bufs.length ? VRING_DESC_F_NEXT : 0), i + 1));
      head = this.take(1)[0];
      this.writeDesc(this.desc, head, table, 16 * bufs.length, VRING_DESC_F_INDIRECT, 0);
      this.heads.set(head, [head]);
    } else {
      const ids = this.take(bufs.length);
      bufs.forEach((b, i) => this.writeDesc(this.desc, ids[i], addrs[i], b.len, (b.write ? VRING_DESC_F_WRITE : 0) | (i + 1 < bufs.length ? VRING_DESC_F_NEXT : 0), ids[i + 1] ?? 0));
      head = ids[0];
      this.heads.set(head, ids);
    }
    if (opts.offer !== false) this.offer(head);
    return { head, addrs };
  }

  private take(n: number): number[] {
    if (this.free.length < n) throw new Error(`ring full (${n} descriptors wanted, ${this.free.length} free)`);
    return this.free.splice(0, n);
  }

  /** Put a head in the avail ring and publish the new avail index. */
  offer(head: number): void {
    this.u16(this.avail + 4 + 2 * (this.availIdx % this.num), head);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.u16(this.avail + 2, this.availIdx);
  }

  /** Publish an arbitrary avail index (hostile cases). */
  setAvailIdx(v: number): void { this.availIdx = v & 0xffff; this.u16(this.avail + 2, this.availIdx); }
  setAvailFlags(v: number): void { this.u16(this.avail, v); }
  /** used_event (EVENT_IDX): the device should call when the used index passes it. */
  setUsedEvent(v: number): void { this.u16(this.avail + 4 + 2 * this.num, v); }
  usedFlags(): number { return this.r16(this.used); }
  usedIdx(): number { return this.r16(this.used + 2); }
  availEvent(): number { return this.r16(this.used + 4 + 8 * this.num); }

  /** New used elements since the last call (descriptors go back to the free list). */
  takeUsed(): { id: number; len: number }[] {
    const out: { id: number; len: number }[] = [];
    const idx = this.usedIdx();
    const b = Buffer.alloc(8);
    while (this.usedSeen !== idx) {
      this.mem.read(this.used + 4 + 8 * (this.usedSeen % this.num), b, 0, 8);
      const id = b.readUInt32LE(0), len = b.readUInt32LE(4);
      out.push({ id, len });
      const ids = this.heads.get(id);
      if (ids) { this.free.push(...ids); this.heads.delete(id); }
      this.usedSeen = (this.usedSeen + 1) & 0xffff;
    }
    return out;
  }
}

/** Driver side of a packed virtqueue (virtio 1.2 2.8): descriptors with wrap counters, event suppression areas. */
export class PackedDriver {
  readonly desc: number;
  /** Driver event suppression area (what SET_VRING_ADDR calls "avail"). */
  readonly driverEvent: number;
  /** Device event suppression area ("used"). */
  readonly deviceEvent: number;
  private next = 0;
  private wrap = true;
  private usedPos = 0;
  private usedWrap = true;
  private nextId = 0;
  private readonly sizes = new Map<number, number>();

  constructor(readonly mem: DeviceMemory, readonly arena: Arena, readonly num: number) {
    this.desc = arena.alloc(16 * num, 16);
    this.driverEvent = arena.alloc(4, 4);
    this.deviceEvent = arena.alloc(4, 4);
    mem.write(this.desc, Buffer.alloc(16 * num), 0, 16 * num);
    mem.write(this.driverEvent, Buffer.alloc(4), 0, 4);
    mem.write(this.deviceEvent, Buffer.alloc(4), 0, 4);
  }

  private flagsFor(wrap: boolean): number { return wrap ? VRING_PACKED_DESC_F_AVAIL : VRING_PACKED_DESC_F_USED; }

  /** Offer a chain; the first descriptor's flags are written last, as a driver must. Returns its buffer id. */
  add(bufs: DriverBuf[], opts: { indirect?: boolean } = {}): { id: number; addrs: number[] } {
    const id = this.nextId++ & 0x7fff;
    const addrs = bufs.map((b) => {
      const a = b.addr ?? this.arena.alloc(Math.max(1, b.len), 8);
      if (b.data && b.addr === undefined) this.mem.write(a, b.data, 0, Math.min(b.len, b.data.byteLength));
      return a;
    });
    const entries: { addr: number; len: number; flags: number }[] = [];
    if (opts.indirect) {
      const table = this.arena.alloc(16 * bufs.length, 16);
      bufs.forEach((b, i) => this.put(table + 16 * i, addrs[i], b.len, 0, b.write ? VRING_DESC_F_WRITE : 0));
      entries.push({ addr: table, len: 16 * bufs.length, flags: VRING_DESC_F_INDIRECT });
    } else bufs.forEach((b, i) => entries.push({ addr: addrs[i], len: b.len, flags: (b.write ? VRING_DESC_F_WRITE : 0) | (i + 1 < bufs.length ? VRING_DESC_F_NEXT : 0) }));
    const first = this.next, firstFlags = entries[0].flags | this.flagsFor(this.wrap);
    entries.forEach((e, i) => {
      const f = e.flags | this.flagsFor(this.wrap);
      this.put(this.desc + 16 * this.next, e.addr, e.len, id, i === 0 ? 0 : f, i === 0);
      if (++this.next === this.num) { this.next = 0; this.wrap = !this.wrap; }
    });
    const b = Buffer.alloc(2);
    b.writeUInt16LE(firstFlags);
    this.mem.write(this.desc + 16 * first + 14, b, 0, 2);
    this.sizes.set(id, entries.length);
    return { id, addrs };
  }

  private put(at: number, addr: number, len: number, id: number, flags: number, skipFlags = false): void {
    const b = Buffer.alloc(16);
    b.writeBigUInt64LE(BigInt(addr), 0);
    b.writeUInt32LE(len >>> 0, 8);
    b.writeUInt16LE(id, 12);
    b.writeUInt16LE(flags, 14);
    this.mem.write(at, b, 0, skipFlags ? 14 : 16);
  }

  /** Driver event suppression: flags (0 enable, 1 disable, 2 desc) and the off_wrap for DESC mode. */
  setDriverEvent(flags: number, offWrap = 0): void {
    const b = Buffer.alloc(4);
    b.writeUInt16LE(offWrap, 0);
    b.writeUInt16LE(flags, 2);
    this.mem.write(this.driverEvent, b, 0, 4);
  }

  deviceEventFlags(): number { const b = Buffer.alloc(4); this.mem.read(this.deviceEvent, b, 0, 4); return b.readUInt16LE(2); }

  /** Used descriptors since the last call, in order. */
  takeUsed(): { id: number; len: number }[] {
    const out: { id: number; len: number }[] = [];
    const b = Buffer.alloc(16);
    for (;;) {
      this.mem.read(this.desc + 16 * this.usedPos, b, 0, 16);
      const flags = b.readUInt16LE(14);
      const avail = (flags & VRING_PACKED_DESC_F_AVAIL) !== 0, used = (flags & VRING_PACKED_DESC_F_USED) !== 0;
      if (avail !== this.usedWrap || used !== this.usedWrap) return out;
      const id = b.readUInt16LE(12);
      out.push({ id, len: b.readUInt32LE(8) });
      this.usedPos += this.sizes.get(id) ?? 1;
      this.sizes.delete(id);
      if (this.usedPos >= this.num) { this.usedPos -= this.num; this.usedWrap = !this.usedWrap; }
    }
  }
}
