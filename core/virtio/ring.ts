// Vring model shared by the split and packed decoders: config, chains, typed RingError, defensive descriptor walking.
import { MemoryError, hexAddr, type GuestMemoryReader } from '../memory/guestMemory';

/** Descriptor flags (virtio 1.2 2.7.5 / 2.8.1; same bits in the packed format). */
export const DESC_F_NEXT = 1;
export const DESC_F_WRITE = 2;
export const DESC_F_INDIRECT = 4;
/** Packed-ring flags: bit positions 7 and 15 (virtio 1.2 2.8.1). */
export const PACKED_DESC_F_AVAIL = 1 << 7;
export const PACKED_DESC_F_USED = 1 << 15;
export const AVAIL_F_NO_INTERRUPT = 1;
export const USED_F_NO_NOTIFY = 1;
export const DESC_SIZE = 16;
/** Split and packed queues are at most 32768 entries (virtio 1.2 2.7 / 2.8). */
export const MAX_QUEUE_SIZE = 32768;
/** An indirect table may hold at most 65536 entries (next is a u16; Linux vhost uses the same bound). */
export const MAX_INDIRECT_ENTRIES = 65536;
const U32_MAX = 0xffff_ffff;
const U64_END = 1n << 64n;

export type RingErrorCode =
  | 'not-configured' // num or addresses not set
  | 'bad-ring-size' // split size not a power of two, zero or > 32768 (packed: zero or > 32768)
  | 'unmapped' // ring area or buffer outside every memory region
  | 'io' // pread failed
  | 'iommu-unsupported' // addresses are IOVAs (VIRTIO_F_ACCESS_PLATFORM)
  | 'desc-index-out-of-range' // head or next >= table size
  | 'loop' // a descriptor visited twice in one chain
  | 'nested-indirect' // INDIRECT inside an indirect table
  | 'indirect-with-next' // INDIRECT and NEXT both set
  | 'indirect-len-invalid' // indirect table length 0, not a multiple of 16, or too large
  | 'indirect-not-negotiated' // INDIRECT used without VIRTIO_F_RING_INDIRECT_DESC
  | 'len-overflow' // addr + len past 2^64, or chain total above 2^32 - 1
  | 'write-before-read' // device-readable descriptor after a device-writable one
  | 'idx-jump' // avail or used index moved by more than the ring size
  | 'used-id-out-of-range' // used element id >= ring size (split)
  | 'unknown-used-id' // used element for a buffer the observer never saw offered
  | 'chain-too-long' // packed chain longer than the ring
  | 'chain-incomplete' // packed chain runs into a descriptor that is not available
  | 'bad-wrap' // packed flags do not fit any single driver position
  | 'budget-exhausted'; // snapshot work limit reached: the rest was not decoded

const RING_ERROR_TEXT: Record<RingErrorCode, string> = {
  'not-configured': 'vring not configured',
  'bad-ring-size': 'invalid ring size',
  'unmapped': 'address outside guest memory',
  'io': 'guest memory I/O error',
  'iommu-unsupported': 'IOVA translation (VIRTIO_F_ACCESS_PLATFORM) is not supported yet',
  'desc-index-out-of-range': 'descriptor index out of range',
  'loop': 'descriptor loop',
  'nested-indirect': 'nested indirect table',
  'indirect-with-next': 'INDIRECT and NEXT both set',
  'indirect-len-invalid': 'invalid indirect table length',
  'indirect-not-negotiated': 'INDIRECT descriptor without VIRTIO_F_RING_INDIRECT_DESC',
  'len-overflow': 'length overflow',
  'write-before-read': 'device-readable descriptor after a device-writable one',
  'idx-jump': 'index moved by more than the ring size',
  'used-id-out-of-range': 'used id out of range',
  'unknown-used-id': 'used id was never seen offered',
  'chain-too-long': 'chain longer than the ring',
  'chain-incomplete': 'chain runs into a descriptor that is not available',
  'bad-wrap': 'inconsistent wrap counters',
  'budget-exhausted': 'decode budget exhausted',
};

export class RingError extends Error {
  override readonly name = 'RingError';
  constructor(
    readonly code: RingErrorCode,
    readonly vring: number,
    detail?: string,
    readonly where: { head?: number; desc?: number; indirect?: boolean; slot?: number } = {},
    readonly memory?: MemoryError,
  ) {
    super(`vring ${vring}${where.head !== undefined ? ` chain ${where.head}` : ''}${where.desc !== undefined ? ` ${where.indirect ? 'indirect desc' : 'desc'} ${where.desc}` : ''}${where.slot !== undefined ? ` slot ${where.slot}` : ''}: ${RING_ERROR_TEXT[code]}${detail ? ` (${detail})` : ''}`);
  }
  get head(): number | undefined { return this.where.head; }
  get desc(): number | undefined { return this.where.desc; }
}

/** Turn a memory failure into the ring error that names where it happened. */
export function fromMemoryError(e: MemoryError, vring: number, what: string, where: RingError['where'] = {}): RingError {
  const code: RingErrorCode = e.code === 'io' ? 'io' : e.code === 'iommu-unsupported' ? 'iommu-unsupported' : e.code === 'overflow' ? 'len-overflow' : 'unmapped';
  return new RingError(code, vring, `${what}: ${e.message}`, where, e);
}

/** Everything the decoders need to know about one ring. Ring addresses are in the front-end's virtual space (SET_VRING_ADDR). */
export interface RingConfig {
  index: number;
  num: number;
  desc: bigint;
  /** Split: avail ring. Packed: driver event suppression area. */
  avail: bigint;
  /** Split: used ring. Packed: device event suppression area. */
  used: bigint;
  packed?: boolean;
  /** VIRTIO_F_RING_EVENT_IDX negotiated: used_event / avail_event present. */
  eventIdx?: boolean;
  /** VIRTIO_F_RING_INDIRECT_DESC negotiated (default true: decode, do not complain). */
  indirect?: boolean;
  /** Address space of desc/avail/used: 'uva' as in SET_VRING_ADDR (default), 'gpa' for the built-in back-end. */
  ringSpace?: 'uva' | 'gpa';
  /** Device's next avail index when known (split: SET_VRING_BASE num; packed: avail idx + wrap). */
  nextAvail?: number;
  nextAvailWrap?: boolean;
  /** Packed: device's next used index + wrap when known. */
  nextUsed?: number;
  nextUsedWrap?: boolean;
}

/** One buffer of a chain. */
export interface ChainDesc {
  /** Table index (split), ring slot (packed), or entry in the indirect table when fromIndirect. */
  index: number;
  addr: bigint;
  len: number;
  flags: number;
  write: boolean;
  fromIndirect?: boolean;
}

export interface IndirectInfo { index: number; addr: bigint; len: number; entries: number }

export interface Chain {
  /** Split: head descriptor index. Packed: buffer id (from the last descriptor). */
  head: number;
  /** Packed: ring slot of the first descriptor and number of slots the chain occupies. */
  slot?: number;
  slots?: number;
  descs: ChainDesc[];
  /** Total device-readable and device-writable bytes. */
  readable: number;
  writable: number;
  indirect?: IndirectInfo;
  state: 'inflight' | 'used';
  usedLen?: number;
  /** Split: position (free-running u16) in the avail / used ring. */
  availPos?: number;
  usedPos?: number;
  /** False when the device has not fetched it yet (known only when the device's next avail is known). */
  fetched?: boolean;
  /**
   * Watcher (split): offered and completed between two polls, its descriptors were rewritten for a later chain
   * before they could be read; descs show the later chain's content, so no payload is decoded for it.
   */
  recycled?: boolean;
  /** Packed snapshot only: may be the stale tail of the chain the newest used element completed. */
  maybeStale?: boolean;
  /** First error met while walking; descs holds what was decoded before it. */
  error?: RingError;
  /** Set by the payload decoder when asked. */
  payload?: unknown;
}

export interface DecodeOptions {
  /** Check every buffer is inside guest memory (default true). */
  checkBuffers?: boolean;
  /** Total descriptors (direct + indirect) one snapshot may decode (default max(65536, 64 * num)). */
  budget?: number;
}

// Visit stamps shared by every walk (all synchronous): one global counter keeps stamps unique across contexts,
// so the arrays are never cleared or reallocated per snapshot (typed-array allocation dominates small walks).
let SEEN: Uint32Array = new Uint32Array(1024);
let SEEN_IND: Uint32Array = new Uint32Array(1024);
let STAMP = 0;
function growStamps(arr: Uint32Array, n: number): Uint32Array {
  if (arr.length >= n) return arr;
  const next = new Uint32Array(Math.max(n, arr.length * 2));
  next.set(arr);
  return next;
}
let SCRATCH = new Uint8Array(4096);
let SCRATCH_TABLE: DescTable | undefined;

/** Per-snapshot decoding state: bounded work, exact loop detection without per-chain allocation. */
export class WalkContext {
  budget: number;
  readonly checkBuffers: boolean;

  constructor(readonly mem: GuestMemoryReader, readonly cfg: RingConfig, opts: DecodeOptions = {}) {
    checkRingConfig(cfg);
    this.budget = opts.budget ?? Math.max(65536, 64 * cfg.num);
    SEEN = growStamps(SEEN, cfg.num);
    this.checkBuffers = opts.checkBuffers ?? true;
  }

  /** A reusable buffer of at least n bytes (valid until the next call, from any context). */
  scratch(n: number): Uint8Array {
    if (SCRATCH.byteLength < n) { SCRATCH = new Uint8Array(Math.max(n, Math.min(SCRATCH.byteLength * 2, 1 << 20))); SCRATCH_TABLE = undefined; }
    return SCRATCH;
  }
  /** Descriptor view over the scratch buffer (what readIndirect filled). */
  scratchTable(): DescTable { return (SCRATCH_TABLE ??= new DescTable(SCRATCH)); }

  nextStamp(): number {
    if (++STAMP === 0xffff_ffff) { SEEN.fill(0); SEEN_IND.fill(0); STAMP = 1; }
    return STAMP;
  }
  /** Mark index i of the main table (or indirect table) visited; false if already visited in this chain. */
  visit(i: number, indirect: boolean, stamp: number): boolean {
    const arr = indirect ? SEEN_IND : SEEN;
    if (arr[i] === stamp) return false;
    arr[i] = stamp;
    return true;
  }
  sizeIndirect(n: number): void { SEEN_IND = growStamps(SEEN_IND, n); }

  readRing(addr: bigint, len: number, what: string): Uint8Array {
    try {
      return this.cfg.ringSpace === 'gpa' ? this.mem.readGpa(addr, len) : this.mem.readUva(addr, len);
    } catch (e) {
      if (e instanceof MemoryError) throw fromMemoryError(e, this.cfg.index, what);
      throw e;
    }
  }
}

/** Validate a ring config; throws RingError('not-configured' | 'bad-ring-size'). */
export function checkRingConfig(cfg: RingConfig): void {
  const n = cfg.num;
  if (!Number.isInteger(n) || n <= 0 || n > MAX_QUEUE_SIZE) throw new RingError('bad-ring-size', cfg.index, `size ${n}: must be 1..${MAX_QUEUE_SIZE}`);
  if (!cfg.packed && (n & (n - 1)) !== 0) throw new RingError('bad-ring-size', cfg.index, `split ring size ${n} is not a power of two`);
}

export const view = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/**
 * A table of 16-byte descriptors {le64 addr, le32 len, le16 at 12, le16 at 14} (split: flags, next; packed: id,
 * flags). On little-endian hosts it reads through typed arrays (BigUint64Array is ~5x faster than
 * DataView.getBigUint64); elsewhere through a DataView.
 */
export class DescTable {
  readonly count: number;
  private readonly b64?: BigUint64Array;
  private readonly w32?: Uint32Array;
  private readonly w16?: Uint16Array;
  private readonly dv: DataView;

  constructor(bytes: Uint8Array) {
    let b = bytes;
    if (LITTLE_ENDIAN && b.byteOffset % 8 !== 0) b = b.slice(); // typed views need alignment: copy once
    this.count = Math.floor(b.byteLength / DESC_SIZE);
    this.dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    if (LITTLE_ENDIAN) {
      const words = this.count * 2;
      this.b64 = new BigUint64Array(b.buffer, b.byteOffset, words);
      this.w32 = new Uint32Array(b.buffer, b.byteOffset, words * 2);
      this.w16 = new Uint16Array(b.buffer, b.byteOffset, words * 4);
    }
  }
  addr(i: number): bigint { return this.b64 ? this.b64[i * 2] : this.dv.getBigUint64(i * 16, true); }
  len(i: number): number { return this.w32 ? this.w32[i * 4 + 2] : this.dv.getUint32(i * 16 + 8, true); }
  /** u16 at offset 12: split flags, packed buffer id. */
  at12(i: number): number { return this.w16 ? this.w16[i * 8 + 6] : this.dv.getUint16(i * 16 + 12, true); }
  /** u16 at offset 14: split next, packed flags. */
  at14(i: number): number { return this.w16 ? this.w16[i * 8 + 7] : this.dv.getUint16(i * 16 + 14, true); }
  /** All 16 bytes zero (a never-written packed slot). */
  zero(i: number): boolean { return this.addr(i) === 0n && this.len(i) === 0 && this.at12(i) === 0 && this.at14(i) === 0; }
}

/**
 * Add one buffer to a chain with the checks common to both formats: 64-bit overflow, chain total in u32,
 * readable-before-writable, buffer inside guest memory. Returns an error that ends the walk, if any.
 */
export function addBuffer(ctx: WalkContext, chain: Chain, d: ChainDesc, desc: number, indirect: boolean): RingError | undefined {
  chain.descs.push(d);
  const len = d.len;
  const where = (): RingError['where'] => ({ head: chain.head >= 0 ? chain.head : undefined, desc, indirect });
  // Only addresses in the top 4 GiB can overflow with a u32 length: one comparison on the common path.
  if (d.addr > TOP_4G && d.addr + BigInt(len) > U64_END) {
    return new RingError('len-overflow', ctx.cfg.index, `addr ${hexAddr(d.addr)} + len ${len} passes 2^64`, where());
  }
  if (d.write) chain.writable += len;
  else {
    if (chain.writable > 0 && !chain.error) chain.error = new RingError('write-before-read', ctx.cfg.index, undefined, where());
    chain.readable += len;
  }
  if (chain.readable + chain.writable > U32_MAX) {
    return new RingError('len-overflow', ctx.cfg.index, `chain total ${chain.readable + chain.writable} exceeds 2^32-1`, where());
  }
  if (ctx.checkBuffers && len > 0) {
    const e = ctx.mem.checkGpa(d.addr, len);
    if (e) return fromMemoryError(e, ctx.cfg.index, 'buffer', where());
  }
  return undefined;
}

const TOP_4G = U64_END - (1n << 32n);

/**
 * Read and validate an indirect table referenced by descriptor `index` (same 16-byte layout in both formats).
 * Returns its number of entries, the table being ctx.scratchTable() until the next read, or the error that
 * ends the chain.
 */
export function readIndirect(ctx: WalkContext, chain: Chain, index: number, addr: bigint, len: number, flags: number, inIndirect: boolean): number | RingError {
  const vring = ctx.cfg.index;
  const where = (): RingError['where'] => ({ head: chain.head >= 0 ? chain.head : undefined, desc: index, indirect: inIndirect });
  if (inIndirect) return new RingError('nested-indirect', vring, undefined, where());
  if (flags & DESC_F_NEXT) return new RingError('indirect-with-next', vring, undefined, where());
  if (ctx.cfg.indirect === false) return new RingError('indirect-not-negotiated', vring, undefined, where());
  if (len === 0 || len % DESC_SIZE !== 0 || len / DESC_SIZE > MAX_INDIRECT_ENTRIES) {
    return new RingError('indirect-len-invalid', vring, `len ${len}: must be a non-zero multiple of 16, at most ${MAX_INDIRECT_ENTRIES} entries`, where());
  }
  const entries = len / DESC_SIZE;
  if (entries > ctx.budget) return new RingError('budget-exhausted', vring, `indirect table of ${entries} entries`, where());
  chain.indirect = { index, addr, len, entries };
  try {
    ctx.mem.readGpaInto(addr, ctx.scratch(len), 0, len);
    return entries;
  } catch (e) {
    if (e instanceof MemoryError) return fromMemoryError(e, vring, 'indirect table', where());
    throw e;
  }
}

export const u16 = (x: number): number => x & 0xffff;
