// IOTLB: the IOVA to front-end address map a session builds from IOTLB_MSG, and the device's view of guest memory through it (VIRTIO_F_ACCESS_PLATFORM).
import { FEATURE_BIT, hasBit } from '../protocol/features';
import type { Region } from '../session/session';
import { DEFAULT_MAX_ACCESS, MemoryError, RegionMemory, type GuestMemoryReader, type MemoryOptions, type MemorySegment } from './guestMemory';

const U64_END = 1n << 64n;

export interface IotlbEntry {
  iova: bigint;
  size: bigint;
  /** Front-end virtual address of iova (the same space as the memory regions' userspace_addr). */
  uaddr: bigint;
  /** 1 RO, 2 WO, 3 RW (the device's rights; an observer reads either way). */
  perm: number;
}

/**
 * Most entries kept; an update beyond it drops the oldest, so a hostile front-end cannot grow the map (or the
 * cost of an update, which moves at most this many references) without bound.
 */
export const IOTLB_MAX_ENTRIES = 8192;

interface Entry extends IotlbEntry { dead?: boolean }

/**
 * The map, sorted by IOVA, non-overlapping: an UPDATE replaces whatever it overlaps, an INVALIDATE cuts its range
 * out (splitting an entry it falls inside). `version` changes with every change, so readers can drop caches.
 */
export class Iotlb {
  private list: Entry[] = [];
  /** Insertion order, oldest first; entries cut out since are marked dead and skipped. */
  private fifo: Entry[] = [];
  private head = 0;
  version = 0;

  get entries(): readonly IotlbEntry[] { return this.list; }

  /** Why an UPDATE or INVALIDATE range is malformed, or undefined. */
  static rangeProblem(iova: bigint, size: bigint): string | undefined {
    if (size === 0n) return 'size 0';
    if (iova + size > U64_END) return `iova 0x${iova.toString(16)} + size 0x${size.toString(16)} overflows 64 bits`;
    return undefined;
  }

  /** Map [iova, iova+size) to uaddr; returns how many older entries it dropped to stay within the cap. */
  update(e: IotlbEntry): number {
    if (Iotlb.rangeProblem(e.iova, e.size) || e.uaddr + e.size > U64_END) return 0;
    const at = this.cut(e.iova, e.iova + e.size);
    const entry: Entry = { iova: e.iova, size: e.size, uaddr: e.uaddr, perm: e.perm };
    this.list.splice(at, 0, entry);
    this.fifo.push(entry);
    let dropped = 0;
    while (this.list.length > IOTLB_MAX_ENTRIES) {
      const old = this.fifo[this.head++];
      if (old.dead) continue;
      old.dead = true;
      this.list.splice(this.lowerBound(old.iova), 1);
      dropped++;
    }
    this.compact();
    this.version++;
    return dropped;
  }

  /** Remove [iova, iova+size) from the map. */
  invalidate(iova: bigint, size: bigint): void {
    if (Iotlb.rangeProblem(iova, size)) return;
    this.cut(iova, iova + size);
    this.version++;
  }

  clear(): void {
    if (this.list.length) this.version++;
    this.list = [];
    this.fifo = [];
    this.head = 0;
  }

  /** The entry containing iova, if any. */
  find(iova: bigint): IotlbEntry | undefined {
    const i = this.lowerBound(iova);
    const e = this.list[i];
    return e && e.iova <= iova ? e : undefined;
  }

  /** Drop dead and dropped entries from the drop order once they outnumber the live ones (amortised O(1)). */
  private compact(): void {
    if (this.fifo.length - this.head <= 2 * this.list.length + 1024) return;
    this.fifo = this.fifo.slice(this.head).filter((e) => !e.dead);
    this.head = 0;
  }

  /** Index of the first entry that ends after iova (the one containing it, or the next one). */
  private lowerBound(iova: bigint): number {
    let lo = 0, hi = this.list.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const e = this.list[mid];
      if (e.iova + e.size <= iova) lo = mid + 1; else hi = mid;
    }
    return lo;
  }

  /** Cut [start, end) out of the map; returns the index where an entry starting at `start` belongs. */
  private cut(start: bigint, end: bigint): number {
    const first = this.lowerBound(start);
    let last = first;
    const parts: Entry[] = [];
    for (; last < this.list.length && this.list[last].iova < end; last++) {
      const e = this.list[last];
      const eEnd = e.iova + e.size;
      e.dead = true;
      // Remnants keep their place in the drop order as fresh entries (they are what is left of a mapping).
      if (e.iova < start) parts.push({ iova: e.iova, size: start - e.iova, uaddr: e.uaddr, perm: e.perm });
      if (eEnd > end) parts.push({ iova: end, size: eEnd - end, uaddr: e.uaddr + (end - e.iova), perm: e.perm });
    }
    if (last === first) return first;
    this.list.splice(first, last - first, ...parts);
    this.fifo.push(...parts);
    this.compact();
    return parts.length && parts[0].iova < start ? first + 1 : first;
  }
}

/**
 * What the device sees under VIRTIO_F_ACCESS_PLATFORM: ring addresses (SET_VRING_ADDR) and descriptor addresses
 * are IOVAs, translated through the session's IOTLB to front-end addresses, then read through the regions' fds.
 * Without the feature it is the plain region memory. Both address spaces of the reader interface mean "device
 * address" here; `regions` reads guest-physical and front-end addresses as they are.
 */
export class DeviceMemory implements GuestMemoryReader {
  private gen = 0;
  private seen = '';
  /** The entry the last access hit, valid for one IOTLB version (accesses cluster: a ring, a chain's buffers). */
  private hit?: IotlbEntry;
  private hitVersion = -1;

  constructor(readonly regions: GuestMemoryReader, private readonly iotlb: () => Iotlb | undefined, private readonly iommu: () => boolean) {}

  get generation(): number {
    const t = this.iotlb();
    const key = `${this.regions.generation}:${this.iommu() ? t?.version ?? 0 : -1}`;
    if (key !== this.seen) { this.seen = key; this.gen++; }
    return this.gen;
  }

  /** The front-end address of [addr, addr+len) when one IOTLB entry holds all of it (the common case), else undefined. */
  private one(addr: bigint, len: number): bigint | undefined {
    const t = this.iotlb();
    if (!t || typeof addr !== 'bigint' || !(len > 0 && len <= DEFAULT_MAX_ACCESS)) return undefined;
    let e = this.hit;
    if (!e || this.hitVersion !== t.version || addr < e.iova || addr >= e.iova + e.size) {
      e = t.find(addr);
      if (!e) return undefined;
      this.hit = e;
      this.hitVersion = t.version;
    }
    return addr + BigInt(len) <= e.iova + e.size ? e.uaddr + (addr - e.iova) : undefined;
  }

  /** The pieces of [addr, addr+len) in front-end address space; throws MemoryError 'iova-unmapped' for a hole. */
  private pieces(space: 'gpa' | 'uva', addr: bigint, len: number): { uva: bigint; len: number }[] {
    if (!Number.isSafeInteger(len) || len < 0) throw new MemoryError('bad-length', space, addr, len);
    if (len > DEFAULT_MAX_ACCESS) throw new MemoryError('too-large', space, addr, len, `limit ${DEFAULT_MAX_ACCESS}`);
    if (typeof addr !== 'bigint' || addr < 0n || addr + BigInt(len) > U64_END) throw new MemoryError('overflow', space, typeof addr === 'bigint' ? BigInt.asUintN(64, addr) : 0n, len);
    const t = this.iotlb();
    const out: { uva: bigint; len: number }[] = [];
    let cur = addr, left = len;
    // Bounded: each step consumes one non-overlapping entry.
    while (left > 0) {
      const e = t?.find(cur);
      if (!e) throw new MemoryError('iova-unmapped', space, addr, len, `IOVA 0x${cur.toString(16)} is in no IOTLB entry (no UPDATE seen for it, or invalidated)`);
      const n = Number(BigInt(left) < e.iova + e.size - cur ? BigInt(left) : e.iova + e.size - cur);
      out.push({ uva: e.uaddr + (cur - e.iova), len: n });
      cur += BigInt(n);
      left -= n;
    }
    return out;
  }

  private readInto(space: 'gpa' | 'uva', addr: bigint, dst: Uint8Array, dstOff: number, len: number): void {
    if (!this.iommu()) {
      if (space === 'gpa') this.regions.readGpaInto(addr, dst, dstOff, len); else this.regions.readUvaInto(addr, dst, dstOff, len);
      return;
    }
    const u = this.one(addr, len);
    if (u !== undefined) { this.regions.readUvaInto(u, dst, dstOff, len); return; }
    const pieces = this.pieces(space, addr, len);
    if (dstOff < 0 || dstOff + len > dst.byteLength) throw new MemoryError('bad-length', space, addr, len, 'destination too small');
    let off = dstOff;
    for (const p of pieces) { this.regions.readUvaInto(p.uva, dst, off, p.len); off += p.len; }
  }

  private read(space: 'gpa' | 'uva', addr: bigint, len: number): Uint8Array {
    if (!this.iommu()) return space === 'gpa' ? this.regions.readGpa(addr, len) : this.regions.readUva(addr, len);
    const out = new Uint8Array(Number.isSafeInteger(len) && len > 0 && len <= DEFAULT_MAX_ACCESS ? len : 0);
    this.readInto(space, addr, out, 0, len);
    return out;
  }

  private check(space: 'gpa' | 'uva', addr: bigint, len: number): MemoryError | undefined {
    if (!this.iommu()) return space === 'gpa' ? this.regions.checkGpa(addr, len) : this.regions.checkUva(addr, len);
    const u = this.one(addr, len);
    if (u !== undefined) return this.regions.checkUva(u, len);
    try {
      for (const p of this.pieces(space, addr, len)) { const e = this.regions.checkUva(p.uva, p.len); if (e) return e; }
      return undefined;
    } catch (e) {
      if (e instanceof MemoryError) return e;
      throw e;
    }
  }

  private translate(space: 'gpa' | 'uva', addr: bigint, len: number): MemorySegment[] {
    if (!this.iommu()) return space === 'gpa' ? this.regions.translateGpa(addr, len) : this.regions.translateUva(addr, len);
    return this.pieces(space, addr, len).flatMap((p) => this.regions.translateUva(p.uva, p.len));
  }

  readGpa(addr: bigint, len: number): Uint8Array { return this.read('gpa', addr, len); }
  readUva(addr: bigint, len: number): Uint8Array { return this.read('uva', addr, len); }
  readGpaInto(addr: bigint, dst: Uint8Array, dstOff = 0, len = dst.byteLength - dstOff): void { this.readInto('gpa', addr, dst, dstOff, len); }
  readUvaInto(addr: bigint, dst: Uint8Array, dstOff = 0, len = dst.byteLength - dstOff): void { this.readInto('uva', addr, dst, dstOff, len); }
  checkGpa(addr: bigint, len: number): MemoryError | undefined { return this.check('gpa', addr, len); }
  checkUva(addr: bigint, len: number): MemoryError | undefined { return this.check('uva', addr, len); }
  translateGpa(addr: bigint, len: number): MemorySegment[] { return this.translate('gpa', addr, len); }
  translateUva(addr: bigint, len: number): MemorySegment[] { return this.translate('uva', addr, len); }

  /** Under the IOMMU: the front-end address of a device address (the IOVA), else gpa to uva. */
  gpaToUva(addr: bigint): bigint {
    if (!this.iommu()) return this.regions.gpaToUva(addr);
    return this.pieces('gpa', addr, 1)[0].uva;
  }

  /** Under the IOMMU: the first IOVA that maps this front-end address. */
  uvaToGpa(addr: bigint): bigint {
    if (!this.iommu()) return this.regions.uvaToGpa(addr);
    for (const e of this.iotlb()?.entries ?? []) if (addr >= e.uaddr && addr < e.uaddr + e.size) return e.iova + (addr - e.uaddr);
    throw new MemoryError('iova-unmapped', 'uva', addr, 0, 'no IOTLB entry maps this front-end address');
  }
}

/**
 * The device's view of a session's memory: its regions (live) and, while VIRTIO_F_ACCESS_PLATFORM is acked,
 * addresses translated through the session's IOTLB.
 */
export function sessionMemory(state: { memory: readonly Region[]; features: { acked?: bigint }; iotlb?: Iotlb }, opts: MemoryOptions = {}): DeviceMemory {
  return new DeviceMemory(RegionMemory.live(() => state.memory, opts), () => state.iotlb, () => hasBit(state.features.acked, FEATURE_BIT.ACCESS_PLATFORM));
}
