// Synthetic guest memory backed by in-process byte arrays (tests, benches, replay); records every backing access.
import { MappedMemory, MemoryError, type AddressSpace, type MappedRegion, type MemoryOptions } from './guestMemory';

export interface BufferRegionSpec {
  guestPhysAddr: bigint;
  userspaceAddr: bigint;
  /** Backing bytes; the region's size is their length unless memorySize says less. */
  bytes: Uint8Array;
  memorySize?: bigint;
  mmapOffset?: bigint;
}

/** One access as it reached a region's bytes: the test checks offset + len <= region size. */
export interface BackingAccess {
  op: 'read' | 'write';
  space: AddressSpace;
  /** The address the caller asked for (start of the whole access). */
  addr: bigint;
  region: number;
  /** Offset in the backing array (mmapOffset + offset in region). */
  offset: number;
  len: number;
}

export interface BufferMemoryOptions extends MemoryOptions {
  /** Keep a log of every backing access (default false). */
  record?: boolean;
  /** Called on every backing access (after bounds checks), e.g. to assert in tests. */
  onAccess?: (a: BackingAccess) => void;
}

export class BufferMemory extends MappedMemory {
  private backing: Uint8Array[] = [];
  readonly log: BackingAccess[] = [];
  private readonly record: boolean;
  private readonly onAccess?: (a: BackingAccess) => void;
  reads = 0;
  writes = 0;

  constructor(regions: readonly BufferRegionSpec[], opts: BufferMemoryOptions = {}) {
    super({ writable: true, ...opts });
    this.record = opts.record ?? false;
    this.onAccess = opts.onAccess;
    this.update(regions);
  }

  /** Convenience: one region where GPA == UVA - uvaDelta (default UVA = GPA + 0x7f00_0000_0000). */
  static single(size: number, gpa = 0n, uva = gpa + 0x7f00_0000_0000n, opts: BufferMemoryOptions = {}): BufferMemory {
    return new BufferMemory([{ guestPhysAddr: gpa, userspaceAddr: uva, bytes: new Uint8Array(size) }], opts);
  }

  update(regions: readonly BufferRegionSpec[]): void {
    this.backing = regions.map((r) => r.bytes);
    this.setRegions(regions.map((r) => ({
      guestPhysAddr: r.guestPhysAddr, userspaceAddr: r.userspaceAddr, mmapOffset: r.mmapOffset ?? 0n,
      memorySize: r.memorySize ?? BigInt(r.bytes.byteLength),
    })));
  }

  /** Backing array of region i (the builder writes through it, bypassing checks on purpose). */
  bytesOf(i: number): Uint8Array { return this.backing[i]; }

  clearLog(): void { this.log.length = 0; }

  private span(r: MappedRegion, offset: bigint, len: number, space: AddressSpace, addr: bigint): number {
    const bytes = this.backing[r.index];
    const start = r.mmapOffset + offset;
    // Defence in depth: the translation layer already bounds-checked; a region larger than its bytes is an I/O error.
    if (start + BigInt(len) > BigInt(bytes.byteLength)) throw new MemoryError('io', space, addr, len, `short read from region ${r.index}`);
    return Number(start);
  }

  private note(a: BackingAccess): void {
    if (this.record) this.log.push(a);
    this.onAccess?.(a);
  }

  protected readBacking(r: MappedRegion, offset: bigint, dst: Uint8Array, dstOff: number, len: number, space: AddressSpace, addr: bigint): void {
    const start = this.span(r, offset, len, space, addr);
    this.reads++;
    this.note({ op: 'read', space, addr, region: r.index, offset: start, len });
    dst.set(this.backing[r.index].subarray(start, start + len), dstOff);
  }

  protected writeBacking(r: MappedRegion, offset: bigint, src: Uint8Array, srcOff: number, len: number, addr: bigint): void {
    const start = this.span(r, offset, len, 'gpa', addr);
    this.writes++;
    this.note({ op: 'write', space: 'gpa', addr, region: r.index, offset: start, len });
    this.backing[r.index].set(src.subarray(srcOff, srcOff + len), start);
  }
}
