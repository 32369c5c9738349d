// Guest memory access: the GuestMemory interface, typed MemoryError, and RegionMemory (bounds-checked pread/pwrite on region fds).
import * as fs from 'node:fs';
import { FEATURE_BIT, hasBit } from '../protocol/features';
import type { Region } from '../session/session';

/** Which address space an access is expressed in: guest-physical or front-end (QEMU) virtual. */
export type AddressSpace = 'gpa' | 'uva';

export type MemoryErrorCode =
  | 'unmapped' // the first byte is in no region
  | 'out-of-bounds' // starts in a region but runs past its end (and no contiguous neighbour continues it)
  | 'overflow' // addr + len wraps past 2^64
  | 'too-large' // len above the per-call cap
  | 'bad-length' // negative or non-integer length
  | 'no-fd' // the region is known but no fd was kept for it (replay)
  | 'io' // pread/pwrite failed or came back short
  | 'read-only' // write on memory opened read-only
  | 'iommu-unsupported' // VIRTIO_F_ACCESS_PLATFORM on memory that has no IOTLB to translate through
  | 'iova-unmapped'; // VIRTIO_F_ACCESS_PLATFORM: the IOVA is in no IOTLB entry

const U64_MAX = 0xffff_ffff_ffff_ffffn;
/** Default per-call cap: hostile lengths cannot make us allocate more than this. */
export const DEFAULT_MAX_ACCESS = 1 << 20;

export const hexAddr = (a: bigint): string => `0x${a.toString(16)}`;

export class MemoryError extends Error {
  override readonly name = 'MemoryError';
  constructor(
    readonly code: MemoryErrorCode,
    readonly space: AddressSpace,
    readonly addr: bigint,
    readonly len: number,
    detail?: string,
  ) {
    super(`${space.toUpperCase()} ${hexAddr(addr)}+${len}: ${MEMORY_ERROR_TEXT[code]}${detail ? ` (${detail})` : ''}`);
  }
}

const MEMORY_ERROR_TEXT: Record<MemoryErrorCode, string> = {
  'unmapped': 'address is in no memory region',
  'out-of-bounds': 'access runs past the end of its memory region',
  'overflow': 'address + length overflows 64 bits',
  'too-large': 'access longer than the per-call limit',
  'bad-length': 'invalid length',
  'no-fd': 'no fd kept for this memory region',
  'io': 'I/O error on the region fd',
  'read-only': 'guest memory is open read-only',
  'iommu-unsupported': 'VIRTIO_F_ACCESS_PLATFORM is negotiated: addresses are IOVAs, and this memory has no IOTLB to translate them',
  'iova-unmapped': 'IOVA not in the IOTLB',
};

/** One piece of an access, entirely inside one region. */
export interface MemorySegment {
  /** Index of the region in the snapshot given to the memory object. */
  region: number;
  /** Offset inside the region (from its start address). */
  offset: bigint;
  /** Offset in the backing file: mmapOffset + offset. */
  fileOffset: bigint;
  len: number;
  fd?: number;
}

/** Read side of guest memory (what the ring decoder and the watcher get: they never write). */
export interface GuestMemoryReader {
  /** Bumped each time the region snapshot changes. */
  readonly generation: number;
  readGpa(addr: bigint, len: number): Uint8Array;
  readUva(addr: bigint, len: number): Uint8Array;
  /** Read len bytes (default: to the end of dst) into dst at dstOff, without allocating. */
  readGpaInto(addr: bigint, dst: Uint8Array, dstOff?: number, len?: number): void;
  readUvaInto(addr: bigint, dst: Uint8Array, dstOff?: number, len?: number): void;
  /** Non-throwing check that [addr, addr+len) is readable; returns the error it would raise. */
  checkGpa(addr: bigint, len: number): MemoryError | undefined;
  checkUva(addr: bigint, len: number): MemoryError | undefined;
  translateGpa(addr: bigint, len: number): MemorySegment[];
  translateUva(addr: bigint, len: number): MemorySegment[];
  gpaToUva(addr: bigint): bigint;
  uvaToGpa(addr: bigint): bigint;
}

export interface GuestMemory extends GuestMemoryReader {
  writeGpa(addr: bigint, data: Uint8Array): void;
}

/** Region shape every implementation understands (Region from the session is a superset). */
export interface RegionSpec {
  guestPhysAddr: bigint;
  memorySize: bigint;
  userspaceAddr: bigint;
  mmapOffset: bigint;
  fd?: number;
}

/** Internal immutable copy of one region. */
export interface MappedRegion {
  readonly index: number;
  readonly gpa: bigint;
  readonly gpaEnd: bigint;
  readonly uva: bigint;
  readonly uvaEnd: bigint;
  readonly size: bigint;
  readonly mmapOffset: bigint;
  readonly fd?: number;
  /** The bounds as Numbers when exact (below 2^53), else NaN: lets the hot check avoid BigInt arithmetic. */
  readonly gpaN: number;
  readonly gpaEndN: number;
  readonly uvaN: number;
  readonly uvaEndN: number;
}

const SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const num = (b: bigint): number => (b <= SAFE ? Number(b) : NaN);

export interface MemoryOptions {
  /** Per-call length cap (default 1 MiB). */
  maxAccess?: number;
  /** VIRTIO_F_ACCESS_PLATFORM negotiated: every access fails with 'iommu-unsupported'. */
  iommu?: boolean;
  /** Allow writeGpa (default false: the proxy never writes guest memory). */
  writable?: boolean;
}

/** Problems found while taking a region snapshot (such regions are left out, or flagged). */
export interface RegionProblem { region: number; message: string }

/**
 * Address translation and bounds checking over a snapshot of regions; subclasses supply the backing store.
 * An access is served by one region, or by several only when they are contiguous in both GPA and UVA.
 */
export abstract class MappedMemory implements GuestMemory {
  generation = 0;
  protected regions: MappedRegion[] = [];
  problems: RegionProblem[] = [];
  private lastGpa = 0;
  private lastUva = 0;
  readonly maxAccess: number;
  iommu: boolean;
  readonly writable: boolean;

  protected constructor(opts: MemoryOptions = {}) {
    this.maxAccess = opts.maxAccess ?? DEFAULT_MAX_ACCESS;
    this.iommu = opts.iommu ?? false;
    this.writable = opts.writable ?? false;
  }

  /** The current snapshot (copies: mutating them changes nothing). */
  get mappedRegions(): readonly MappedRegion[] { return this.regions; }

  /** Replace the region snapshot; regions no longer present are never touched again. */
  protected setRegions(specs: readonly RegionSpec[]): void {
    const out: MappedRegion[] = [];
    const problems: RegionProblem[] = [];
    specs.forEach((s, i) => {
      const size = s.memorySize;
      if (size <= 0n) { problems.push({ region: i, message: 'memory_size 0: ignored' }); return; }
      if (s.guestPhysAddr + size > U64_MAX + 1n || s.userspaceAddr + size > U64_MAX + 1n || s.mmapOffset + size > U64_MAX + 1n) {
        problems.push({ region: i, message: 'address + memory_size overflows 64 bits: ignored' });
        return;
      }
      for (const o of out) {
        if (s.guestPhysAddr < o.gpaEnd && o.gpa < s.guestPhysAddr + size) problems.push({ region: i, message: `GPA range overlaps region ${o.index}` });
        if (s.userspaceAddr < o.uvaEnd && o.uva < s.userspaceAddr + size) problems.push({ region: i, message: `UVA range overlaps region ${o.index}` });
      }
      out.push(Object.freeze({
        index: i, gpa: s.guestPhysAddr, gpaEnd: s.guestPhysAddr + size, uva: s.userspaceAddr, uvaEnd: s.userspaceAddr + size,
        size, mmapOffset: s.mmapOffset, fd: s.fd,
        gpaN: num(s.guestPhysAddr), gpaEndN: num(s.guestPhysAddr + size), uvaN: num(s.userspaceAddr), uvaEndN: num(s.userspaceAddr + size),
      }));
    });
    this.regions = out;
    this.problems = problems;
    this.lastGpa = 0;
    this.lastUva = 0;
    this.generation++;
  }

  /** Backing-store read of len bytes at offset inside region r into dst[dstOff..]. */
  protected abstract readBacking(r: MappedRegion, offset: bigint, dst: Uint8Array, dstOff: number, len: number, space: AddressSpace, addr: bigint): void;
  protected abstract writeBacking(r: MappedRegion, offset: bigint, src: Uint8Array, srcOff: number, len: number, addr: bigint): void;

  /** Hook for implementations whose snapshot can go stale (live session memory). */
  protected refresh(): void {}

  private find(space: AddressSpace, addr: bigint): MappedRegion | undefined {
    const rs = this.regions;
    const n = rs.length;
    if (n === 0) return undefined;
    const hint = space === 'gpa' ? this.lastGpa : this.lastUva;
    for (let k = 0; k < n; k++) {
      const i = (hint + k) % n;
      const r = rs[i];
      const start = space === 'gpa' ? r.gpa : r.uva;
      const end = space === 'gpa' ? r.gpaEnd : r.uvaEnd;
      if (addr >= start && addr < end) {
        if (space === 'gpa') this.lastGpa = i; else this.lastUva = i;
        return r;
      }
    }
    return undefined;
  }

  /** The region starting exactly where r ends, in both address spaces. */
  private continuation(r: MappedRegion): MappedRegion | undefined {
    for (const o of this.regions) if (o !== r && o.gpa === r.gpaEnd && o.uva === r.uvaEnd) return o;
    return undefined;
  }

  /** Validate and split an access; returns undefined + error via the callback-free pair. */
  private plan(space: AddressSpace, addr: bigint, len: number): { segs?: { r: MappedRegion; offset: bigint; len: number }[]; err?: MemoryError } {
    this.refresh();
    if (this.iommu) return { err: new MemoryError('iommu-unsupported', space, addr, len) };
    if (!Number.isSafeInteger(len) || len < 0) return { err: new MemoryError('bad-length', space, addr, len) };
    if (typeof addr !== 'bigint' || addr < 0n || addr > U64_MAX) {
      return { err: new MemoryError('overflow', space, typeof addr === 'bigint' ? BigInt.asUintN(64, addr) : 0n, len, 'address not a u64') };
    }
    if (len > this.maxAccess) return { err: new MemoryError('too-large', space, addr, len, `limit ${this.maxAccess}`) };
    if (addr + BigInt(len) > U64_MAX + 1n) return { err: new MemoryError('overflow', space, addr, len) };
    if (len === 0) return { segs: [] };
    let r = this.find(space, addr);
    if (!r) return { err: new MemoryError('unmapped', space, addr, len) };
    const segs: { r: MappedRegion; offset: bigint; len: number }[] = [];
    let cur = addr;
    let left = len;
    // Bounded: each step consumes a distinct region (continuations strictly increase the address).
    for (let guard = 0; guard <= this.regions.length; guard++) {
      const start = space === 'gpa' ? r.gpa : r.uva;
      const end = space === 'gpa' ? r.gpaEnd : r.uvaEnd;
      const offset = cur - start;
      const avail = end - cur;
      if (BigInt(left) <= avail) { segs.push({ r, offset, len: left }); return { segs }; }
      const take = Number(avail);
      segs.push({ r, offset, len: take });
      left -= take;
      cur = end;
      const next = this.continuation(r);
      if (!next) {
        return { err: new MemoryError('out-of-bounds', space, addr, len, `region ${r.index} ends at ${hexAddr(end)}`) };
      }
      r = next;
    }
    return { err: new MemoryError('out-of-bounds', space, addr, len, 'region chain too long') };
  }

  private read(space: AddressSpace, addr: bigint, len: number): Uint8Array {
    const out = new Uint8Array(len > 0 && len <= this.maxAccess && (len | 0) === len ? len : 0);
    this.readInto(space, addr, out, 0, len);
    return out;
  }

  private readInto(space: AddressSpace, addr: bigint, dst: Uint8Array, dstOff: number, len: number): void {
    // Fast path: inside one region (no plan allocation).
    if (!this.iommu && len > 0 && len <= this.maxAccess && (len | 0) === len && typeof addr === 'bigint' && addr >= 0n) {
      this.refresh();
      const r = this.find(space, addr);
      if (r) {
        const start = space === 'gpa' ? r.gpa : r.uva;
        const end = space === 'gpa' ? r.gpaEnd : r.uvaEnd;
        if (end - addr >= BigInt(len)) {
          if (dstOff < 0 || dstOff + len > dst.byteLength) throw new MemoryError('bad-length', space, addr, len, 'destination too small');
          this.readBacking(r, addr - start, dst, dstOff, len, space, addr);
          return;
        }
      }
    }
    const p = this.plan(space, addr, len);
    if (p.err) throw p.err;
    if (dstOff < 0 || dstOff + len > dst.byteLength) throw new MemoryError('bad-length', space, addr, len, 'destination too small');
    let off = dstOff;
    for (const s of p.segs!) {
      this.readBacking(s.r, s.offset, dst, off, s.len, space, addr);
      off += s.len;
    }
  }

  readGpa(addr: bigint, len: number): Uint8Array { return this.read('gpa', addr, len); }
  readUva(addr: bigint, len: number): Uint8Array { return this.read('uva', addr, len); }
  readGpaInto(addr: bigint, dst: Uint8Array, dstOff = 0, len = dst.byteLength - dstOff): void { this.readInto('gpa', addr, dst, dstOff, len); }
  readUvaInto(addr: bigint, dst: Uint8Array, dstOff = 0, len = dst.byteLength - dstOff): void { this.readInto('uva', addr, dst, dstOff, len); }

  checkGpa(addr: bigint, len: number): MemoryError | undefined {
    // Hot path (every descriptor of every chain): Number arithmetic when exact, no BigInt allocation.
    if (!this.iommu && len > 0 && len <= this.maxAccess) {
      const a = Number(addr);
      if (a <= Number.MAX_SAFE_INTEGER) {
        this.refresh();
        const rs = this.regions;
        const fdNeeded = this.needsFd();
        for (let k = 0, n = rs.length, i = this.lastGpa; k < n; k++, i = i + 1 === n ? 0 : i + 1) {
          const r = rs[i];
          if (a >= r.gpaN && a < r.gpaEndN) {
            if (a + len <= r.gpaEndN && (r.fd !== undefined || !fdNeeded)) { this.lastGpa = i; return undefined; }
            break;
          }
        }
      }
    }
    return this.check('gpa', addr, len);
  }
  checkUva(addr: bigint, len: number): MemoryError | undefined { return this.check('uva', addr, len); }

  private check(space: AddressSpace, addr: bigint, len: number): MemoryError | undefined {
    // Fast path (no allocation): the access lies inside one region.
    if (!this.iommu && len > 0 && len <= this.maxAccess && (len | 0) === len && typeof addr === 'bigint' && addr >= 0n) {
      this.refresh();
      const r = this.find(space, addr);
      if (r && (space === 'gpa' ? r.gpaEnd : r.uvaEnd) - addr >= BigInt(len) && (r.fd !== undefined || !this.needsFd())) return undefined;
    }
    const p = this.plan(space, addr, len);
    if (p.err) return p.err;
    for (const s of p.segs!) if (s.r.fd === undefined && this.needsFd()) return new MemoryError('no-fd', space, addr, len, `region ${s.r.index}`);
    return undefined;
  }

  /** Whether a region without an fd is unreadable (true for fd-backed memory). */
  protected needsFd(): boolean { return false; }

  writeGpa(addr: bigint, data: Uint8Array): void {
    if (!this.writable) throw new MemoryError('read-only', 'gpa', addr, data.byteLength);
    const p = this.plan('gpa', addr, data.byteLength);
    if (p.err) throw p.err;
    let off = 0;
    for (const s of p.segs!) {
      this.writeBacking(s.r, s.offset, data, off, s.len, addr);
      off += s.len;
    }
  }

  private translate(space: AddressSpace, addr: bigint, len: number): MemorySegment[] {
    const p = this.plan(space, addr, len);
    if (p.err) throw p.err;
    return p.segs!.map((s) => ({ region: s.r.index, offset: s.offset, fileOffset: s.r.mmapOffset + s.offset, len: s.len, fd: s.r.fd }));
  }

  translateGpa(addr: bigint, len: number): MemorySegment[] { return this.translate('gpa', addr, len); }
  translateUva(addr: bigint, len: number): MemorySegment[] { return this.translate('uva', addr, len); }

  gpaToUva(addr: bigint): bigint {
    this.refresh();
    if (this.iommu) throw new MemoryError('iommu-unsupported', 'gpa', addr, 0);
    const r = this.find('gpa', addr);
    if (!r) throw new MemoryError('unmapped', 'gpa', addr, 0);
    return r.uva + (addr - r.gpa);
  }

  uvaToGpa(addr: bigint): bigint {
    this.refresh();
    if (this.iommu) throw new MemoryError('iommu-unsupported', 'uva', addr, 0);
    const r = this.find('uva', addr);
    if (!r) throw new MemoryError('unmapped', 'uva', addr, 0);
    return r.gpa + (addr - r.uva);
  }
}

/**
 * Guest memory read with pread (fs.readSync) on each region's fd; never mmap (Electron forbids external buffers).
 * Takes a snapshot of the regions: call update() when the memory table changes, before the old fds are closed,
 * or build it with RegionMemory.live() so it re-snapshots whenever the session's region list changes.
 */
export class RegionMemory extends MappedMemory {
  private source?: () => readonly RegionSpec[];
  private seen: readonly RegionSpec[] = [];

  constructor(regions: readonly RegionSpec[], opts: MemoryOptions = {}) {
    super(opts);
    this.update(regions);
  }

  /** Memory that follows a live region list (e.g. () => session.state.memory), checked before every access. */
  static live(source: () => readonly RegionSpec[], opts: MemoryOptions = {}): RegionMemory {
    const m = new RegionMemory(source(), opts);
    m.source = source;
    return m;
  }


  /** Replace the snapshot. Regions not in the new list are never read again. */
  update(regions: readonly RegionSpec[]): void {
    this.seen = [...regions];
    this.setRegions(this.seen);
  }

  /** Re-snapshot if the live source changed (by array identity of its elements, or length). */
  protected override refresh(): void {
    if (!this.source) return;
    const now = this.source();
    let same = now.length === this.seen.length;
    for (let i = 0; same && i < now.length; i++) {
      const a = now[i], b = this.seen[i];
      same = a === b && a.fd === b.fd;
    }
    if (!same) this.update(now);
  }

  protected override needsFd(): boolean { return true; }

  protected readBacking(r: MappedRegion, offset: bigint, dst: Uint8Array, dstOff: number, len: number, space: AddressSpace, addr: bigint): void {
    if (r.fd === undefined) throw new MemoryError('no-fd', space, addr, len, `region ${r.index}`);
    const pos = r.mmapOffset + offset;
    const position = pos <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(pos) : pos;
    let done = 0;
    // Bounded: each iteration reads at least one byte or stops.
    while (done < len) {
      let n: number;
      try {
        n = fs.readSync(r.fd, dst, dstOff + done, len - done, typeof position === 'number' ? position + done : position + BigInt(done));
      } catch (e) {
        throw new MemoryError('io', space, addr, len, `pread fd ${r.fd}: ${(e as Error).message}`);
      }
      if (n <= 0) throw new MemoryError('io', space, addr, len, `short read from fd ${r.fd} at offset ${hexAddr(pos)} (${done} of ${len})`);
      done += n;
    }
  }

  protected writeBacking(r: MappedRegion, offset: bigint, src: Uint8Array, srcOff: number, len: number, addr: bigint): void {
    if (r.fd === undefined) throw new MemoryError('no-fd', 'gpa', addr, len, `region ${r.index}`);
    const pos = r.mmapOffset + offset;
    // fs.writeSync takes only a number position (anything else means "current position"): refuse, never guess.
    if (pos + BigInt(len) > BigInt(Number.MAX_SAFE_INTEGER)) throw new MemoryError('io', 'gpa', addr, len, 'file offset beyond 2^53 for pwrite');
    let done = 0;
    while (done < len) {
      let n: number;
      try {
        n = fs.writeSync(r.fd, src, srcOff + done, len - done, Number(pos) + done);
      } catch (e) {
        throw new MemoryError('io', 'gpa', addr, len, `pwrite fd ${r.fd}: ${(e as Error).message}`);
      }
      if (n <= 0) throw new MemoryError('io', 'gpa', addr, len, `short write to fd ${r.fd}`);
      done += n;
    }
  }
}

/** Type guard used by decoders that must let only typed errors out. */
export const isMemoryError = (e: unknown): e is MemoryError => e instanceof MemoryError;
