// Payload codecs for every vhost-user payload layout (vhost-user.rst "Message types"); pure, bigint for u64.
import { Reader, Writer, hex } from './bytes';

/** What decoding may depend on, taken from the negotiated session state. */
export interface DecodeContext {
  /** VIRTIO_F_RING_PACKED acked: vring base carries wrap counters. */
  packed?: boolean;
  /** VHOST_USER_PROTOCOL_F_XEN_MMAP acked: memory regions carry xen_mmap_flags and domid. */
  xenMmap?: boolean;
}

export interface PayloadCodec<T = unknown> {
  /** Layout name used in docs and problems, e.g. "vring state". */
  readonly layout: string;
  /** Exact wire size when the layout is fixed (in the default context). */
  readonly size?: number;
  decode(r: Reader, ctx: DecodeContext): T;
  encode(v: T, w: Writer, ctx: DecodeContext): void;
  /** Semantic checks on a decoded value (field ranges); each string becomes a problem. */
  check?(v: T, ctx: DecodeContext): string[];
}

const codec = <T>(c: PayloadCodec<T>): PayloadCodec<T> => c;

export type Empty = Record<string, never>;
export const empty = codec<Empty>({ layout: 'none', size: 0, decode: () => ({}), encode: () => undefined });

/** A u64 payload with a spec-given meaning; the field name says which. */
export function u64(field: string, layout = 'u64'): PayloadCodec<Record<string, bigint>> {
  return codec({
    layout, size: 8,
    decode: (r) => ({ [field]: r.u64() }),
    encode: (v, w) => { w.u64(v[field] ?? 0n); },
  });
}
export const ackU64 = u64('ack', 'u64 (REPLY_ACK: 0 = success)');

export interface VringState { index: number; num: number }
export const vringState = codec<VringState>({
  layout: 'vring state', size: 8,
  decode: (r) => ({ index: r.u32(), num: r.u32() }),
  encode: (v, w) => { w.u32(v.index).u32(v.num); },
});

/** SET_VRING_BASE / GET_VRING_BASE reply: split = next avail idx; packed = idx and wrap counters. */
export interface VringBase extends VringState {
  availIdx?: number; availWrap?: boolean; usedIdx?: number; usedWrap?: boolean;
}
export const vringBase = codec<VringBase>({
  layout: 'vring base', size: 8,
  decode: (r, ctx) => {
    const index = r.u32();
    const num = r.u32();
    if (!ctx.packed) return { index, num };
    return {
      index, num,
      availIdx: num & 0x7fff, availWrap: (num & 0x8000) !== 0,
      usedIdx: (num >>> 16) & 0x7fff, usedWrap: (num & 0x80000000) !== 0,
    };
  },
  encode: (v, w) => { w.u32(v.index).u32(v.num); },
  check: (v, ctx) => (!ctx.packed && v.num > 0xffff ? [`split ring base ${v.num} has reserved bits 16-31 set`] : []),
});

export interface VringAddr { index: number; flags: number; desc: bigint; used: bigint; avail: bigint; log: bigint }
export const vringAddr = codec<VringAddr>({
  layout: 'vring address', size: 40,
  decode: (r) => ({ index: r.u32(), flags: r.u32(), desc: r.u64(), used: r.u64(), avail: r.u64(), log: r.u64() }),
  encode: (v, w) => { w.u32(v.index).u32(v.flags).u64(v.desc).u64(v.used).u64(v.avail).u64(v.log); },
  check: (v) => {
    const p: string[] = [];
    if (v.flags & ~1) p.push(`flags 0x${v.flags.toString(16)} has bits other than VHOST_VRING_F_LOG`);
    if (v.desc % 16n) p.push(`descriptor table 0x${v.desc.toString(16)} is not 16-byte aligned`);
    if (v.avail % 2n) p.push(`avail ring 0x${v.avail.toString(16)} is not 2-byte aligned`);
    if (v.used % 4n) p.push(`used ring 0x${v.used.toString(16)} is not 4-byte aligned`);
    return p;
  },
});

/** SET_VRING_KICK / CALL / ERR: bits 0-7 index, bit 8 = no fd (polling), other bits reserved. */
export interface VringFd { index: number; noFd: boolean; reserved?: bigint }
export const vringFd = codec<VringFd>({
  layout: 'u64 (vring index, bit 8 = no fd)', size: 8,
  decode: (r) => {
    const v = r.u64();
    const reserved = v & ~0x1ffn;
    return reserved ? { index: Number(v & 0xffn), noFd: (v & 0x100n) !== 0n, reserved } : { index: Number(v & 0xffn), noFd: (v & 0x100n) !== 0n };
  },
  encode: (v, w) => { w.u64(BigInt(v.index & 0xff) | (v.noFd ? 0x100n : 0n) | (v.reserved ?? 0n)); },
  check: (v) => (v.reserved ? [`reserved bits set: 0x${v.reserved.toString(16)}`] : []),
});

export interface MemRegion {
  guestPhysAddr: bigint; memorySize: bigint; userspaceAddr: bigint; mmapOffset: bigint;
  xenMmapFlags?: number; domid?: number;
}
function decodeRegion(r: Reader, ctx: DecodeContext): MemRegion {
  const reg: MemRegion = { guestPhysAddr: r.u64(), memorySize: r.u64(), userspaceAddr: r.u64(), mmapOffset: r.u64() };
  if (ctx.xenMmap) { reg.xenMmapFlags = r.u32(); reg.domid = r.u32(); }
  return reg;
}
function encodeRegion(v: MemRegion, w: Writer, ctx: DecodeContext): void {
  w.u64(v.guestPhysAddr).u64(v.memorySize).u64(v.userspaceAddr).u64(v.mmapOffset);
  if (ctx.xenMmap) w.u32(v.xenMmapFlags ?? 0).u32(v.domid ?? 0);
}
function checkRegion(v: MemRegion): string[] {
  const p: string[] = [];
  if (v.memorySize === 0n) p.push('region has memory_size 0');
  if (v.guestPhysAddr + v.memorySize > 0xffffffffffffffffn) p.push('guest_phys_addr + memory_size overflows 64 bits');
  if (v.userspaceAddr + v.memorySize > 0xffffffffffffffffn) p.push('userspace_addr + memory_size overflows 64 bits');
  return p;
}

export const MAX_TABLE_REGIONS = 8;
export interface MemTable { nregions: number; padding: number; regions: MemRegion[] }
export const memTable = codec<MemTable>({
  layout: 'multiple memory regions',
  decode: (r, ctx) => {
    const nregions = r.u32();
    const padding = r.u32();
    const regions: MemRegion[] = [];
    // Never trust nregions for the loop bound: at most what the bytes hold.
    const slot = ctx.xenMmap ? 40 : 32;
    const n = Math.min(nregions, Math.floor(r.remaining / slot));
    for (let i = 0; i < n; i++) regions.push(decodeRegion(r, ctx));
    return { nregions, padding, regions };
  },
  encode: (v, w, ctx) => { w.u32(v.nregions).u32(v.padding ?? 0); for (const reg of v.regions) encodeRegion(reg, w, ctx); },
  check: (v) => {
    const p: string[] = [];
    if (v.nregions > MAX_TABLE_REGIONS) p.push(`nregions ${v.nregions} exceeds ${MAX_TABLE_REGIONS}`);
    if (v.regions.length < v.nregions) p.push(`nregions ${v.nregions} but only ${v.regions.length} regions present`);
    v.regions.forEach((reg, i) => checkRegion(reg).forEach((m) => p.push(`region ${i}: ${m}`)));
    return p;
  },
});

/** ADD_MEM_REG / REM_MEM_REG: u64 padding, then one region; the region fields are flattened. */
export interface SingleRegion extends MemRegion { padding: bigint }
export const singleRegion = codec<SingleRegion>({
  layout: 'single memory region',
  decode: (r, ctx) => { const padding = r.u64(); return { padding, ...decodeRegion(r, ctx) }; },
  encode: (v, w, ctx) => { w.u64(v.padding ?? 0n); encodeRegion(v, w, ctx); },
  check: (v) => checkRegion(v),
});

export interface LogBase { mmapSize: bigint; mmapOffset: bigint }
export const logBase = codec<LogBase>({
  layout: 'log description', size: 16,
  decode: (r) => ({ mmapSize: r.u64(), mmapOffset: r.u64() }),
  encode: (v, w) => { w.u64(v.mmapSize).u64(v.mmapOffset); },
});

export const IOTLB_TYPES: Record<number, string> = { 1: 'MISS', 2: 'UPDATE', 3: 'INVALIDATE', 4: 'ACCESS_FAIL' };
export const IOTLB_PERMS: Record<number, string> = { 0: 'NONE', 1: 'RO', 2: 'WO', 3: 'RW' };
export interface Iotlb { iova: bigint; size: bigint; uaddr: bigint; perm: number; type: number }
export const iotlb = codec<Iotlb>({
  layout: 'IOTLB message', size: 32,
  decode: (r) => {
    const v = { iova: r.u64(), size: r.u64(), uaddr: r.u64(), perm: r.u8(), type: r.u8() };
    r.take(Math.min(6, r.remaining)); // C struct padding to 32 bytes (absent when packed, rust-vmm); more is trailing
    return v;
  },
  encode: (v, w) => { w.u64(v.iova).u64(v.size).u64(v.uaddr).u8(v.perm).u8(v.type).zeros(6); },
  check: (v) => [
    ...(IOTLB_TYPES[v.type] ? [] : [`unknown IOTLB type ${v.type}`]),
    ...(IOTLB_PERMS[v.perm] ? [] : [`unknown IOTLB permission ${v.perm}`]),
  ],
});

export const MAX_CONFIG_SIZE = 256;
export interface ConfigSpace { offset: number; size: number; flags: number; data: Uint8Array }
export const config = codec<ConfigSpace>({
  layout: 'device config space',
  decode: (r) => ({ offset: r.u32(), size: r.u32(), flags: r.u32(), data: r.rest() }),
  encode: (v, w) => { w.u32(v.offset).u32(v.size).u32(v.flags).bytes(v.data); },
  check: (v) => {
    const p: string[] = [];
    if (v.size > MAX_CONFIG_SIZE) p.push(`config size ${v.size} exceeds ${MAX_CONFIG_SIZE}`);
    if (v.data.byteLength !== v.size) p.push(`config size field ${v.size} but ${v.data.byteLength} data bytes`);
    if (v.flags & ~3) p.push(`config flags 0x${v.flags.toString(16)} has unknown bits`);
    return p;
  },
});

export interface VringArea { index: number; noFd: boolean; size: bigint; offset: bigint }
export const vringArea = codec<VringArea>({
  layout: 'vring area description', size: 24,
  decode: (r) => { const u = r.u64(); return { index: Number(u & 0xffn), noFd: (u & 0x100n) !== 0n, size: r.u64(), offset: r.u64() }; },
  encode: (v, w) => { w.u64(BigInt(v.index & 0xff) | (v.noFd ? 0x100n : 0n)).u64(v.size).u64(v.offset); },
});

export interface Inflight { mmapSize: bigint; mmapOffset: bigint; numQueues: number; queueSize: number }
export const inflight = codec<Inflight>({
  layout: 'inflight description', size: 24,
  decode: (r) => {
    const v = { mmapSize: r.u64(), mmapOffset: r.u64(), numQueues: r.u16(), queueSize: r.u16() };
    r.take(Math.min(4, r.remaining)); // C struct padding to 24 bytes (absent when packed, rust-vmm); more is trailing
    return v;
  },
  encode: (v, w) => { w.u64(v.mmapSize).u64(v.mmapOffset).u16(v.numQueues).u16(v.queueSize).zeros(4); },
});

export interface SharedObject { uuid: string }
export const sharedObject = codec<SharedObject>({
  layout: 'shared object (UUID)', size: 16,
  decode: (r) => {
    const h = hex(r.take(16));
    return { uuid: `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}` };
  },
  encode: (v, w) => {
    const h = v.uuid.replace(/-/g, '').padEnd(32, '0');
    for (let i = 0; i < 16; i++) w.u8(parseInt(h.substr(i * 2, 2), 16) || 0);
  },
});

export interface DeviceStateParams { direction: number; phase: number }
export const deviceStateParams = codec<DeviceStateParams>({
  layout: 'device state transfer parameters', size: 8,
  decode: (r) => ({ direction: r.u32(), phase: r.u32() }),
  encode: (v, w) => { w.u32(v.direction).u32(v.phase); },
  check: (v) => [...(v.direction > 1 ? [`unknown direction ${v.direction}`] : []), ...(v.phase !== 0 ? [`unknown phase ${v.phase}`] : [])],
});

export const SHMEM_MAX_REGIONS = 256;
export interface ShmemConfig { nregions: number; padding: number; memorySizes: bigint[] }
export const shmemConfig = codec<ShmemConfig>({
  layout: 'shared memory config', size: 8 + 8 * SHMEM_MAX_REGIONS,
  decode: (r) => {
    const nregions = r.u32();
    const padding = r.u32();
    const memorySizes: bigint[] = [];
    // Fixed layout (rust-vmm VhostUserShMemConfig): all 256 sizes are on the wire; fewer is a truncated payload.
    for (let i = 0; i < SHMEM_MAX_REGIONS; i++) memorySizes.push(r.u64());
    return { nregions, padding, memorySizes };
  },
  encode: (v, w) => {
    w.u32(v.nregions).u32(v.padding ?? 0);
    for (let i = 0; i < SHMEM_MAX_REGIONS; i++) w.u64(v.memorySizes[i] ?? 0n);
  },
  check: (v) => (v.nregions > SHMEM_MAX_REGIONS ? [`nregions ${v.nregions} exceeds ${SHMEM_MAX_REGIONS}`] : []),
});

export interface ShmemMap { shmid: number; fdOffset: bigint; shmOffset: bigint; len: bigint; flags: bigint }
export const shmemMap = codec<ShmemMap>({
  layout: 'shared memory mapping (VhostUserMMap)', size: 40,
  decode: (r) => { const shmid = r.u8(); r.take(7); return { shmid, fdOffset: r.u64(), shmOffset: r.u64(), len: r.u64(), flags: r.u64() }; },
  encode: (v, w) => { w.u8(v.shmid).zeros(7).u64(v.fdOffset).u64(v.shmOffset).u64(v.len).u64(v.flags); },
});

/** Layouts this tool does not interpret (crypto sessions, proposed MEM_READ/WRITE): kept as bytes. */
export interface Opaque { bytes: Uint8Array }
export const opaque = (layout: string): PayloadCodec<Opaque> => codec<Opaque>({
  layout, decode: (r) => ({ bytes: r.rest() }), encode: (v, w) => { w.bytes(v.bytes); },
});
