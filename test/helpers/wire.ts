// Fluent builders for vhost-user wire bytes (header, every payload layout, fds, relay records) so tests read like the spec.
import { Writer } from '../../core/protocol/bytes';
import { specByName, specFor, requester, otherSide, type Channel, type Side, type MessageSpec, type FdRule } from '../../core/protocol/table';
import { HEADER_SIZE, VERSION, FLAG_REPLY, FLAG_NEED_REPLY, type RawMessage } from '../../core/protocol/codec';
import type { Session } from '../../core/session/session';
import type { FdInfo } from '../../core/sys/native';

export type U64 = bigint | number;
const big = (v: U64): bigint => (typeof v === 'bigint' ? v : BigInt(v));

/** The record `Session.ingest` takes (what the relay reports for one message). */
export type IngestRecord = Parameters<Session['ingest']>[0];

/** One guest memory region as written on the wire (32 bytes, 40 with XEN_MMAP). */
export interface RegionFields { gpa: U64; size: U64; uva: U64; offset?: U64; xenFlags?: number; domid?: number }

/** Writes payload layouts field by field, in wire order (host order = little-endian here). */
export class PayloadBuilder {
  private readonly w = new Writer();

  u8(v: number): this { this.w.u8(v); return this; }
  u16(v: number): this { this.w.u16(v); return this; }
  u32(v: number): this { this.w.u32(v); return this; }
  u64(v: U64): this { this.w.u64(big(v)); return this; }
  bytes(b: Uint8Array | number[]): this { this.w.bytes(b instanceof Uint8Array ? b : Uint8Array.from(b)); return this; }
  zeros(n: number): this { this.w.zeros(n); return this; }
  get length(): number { return this.w.len; }

  /** vring state / split vring base: u32 index, u32 num. */
  vringState(index: number, num: number): this { return this.u32(index).u32(num); }
  /** Packed vring base: bits 0-14 avail idx, 15 avail wrap, 16-30 used idx, 31 used wrap. */
  packedBase(index: number, b: { availIdx: number; availWrap: boolean; usedIdx: number; usedWrap: boolean }): this {
    const num = (b.availIdx & 0x7fff) | (b.availWrap ? 0x8000 : 0) | ((b.usedIdx & 0x7fff) << 16) | (b.usedWrap ? 0x80000000 : 0);
    return this.u32(index).u32(num >>> 0);
  }
  /** vring address: u32 index, u32 flags, then desc, USED, AVAIL, log (that order on the wire). */
  vringAddr(a: { index: number; flags?: number; desc: U64; used: U64; avail: U64; log?: U64 }): this {
    return this.u32(a.index).u32(a.flags ?? 0).u64(a.desc).u64(a.used).u64(a.avail).u64(a.log ?? 0);
  }
  /** SET_VRING_KICK/CALL/ERR u64: bits 0-7 index, bit 8 no fd, higher bits reserved. */
  vringFd(index: number, o: { noFd?: boolean; reserved?: U64 } = {}): this {
    return this.u64(BigInt(index & 0xff) | (o.noFd ? 0x100n : 0n) | big(o.reserved ?? 0));
  }
  region(r: RegionFields, xen = false): this {
    this.u64(r.gpa).u64(r.size).u64(r.uva).u64(r.offset ?? 0);
    if (xen) this.u32(r.xenFlags ?? 0).u32(r.domid ?? 0);
    return this;
  }
  /** SET_MEM_TABLE: u32 nregions (defaults to the count given), u32 padding, regions. */
  memTable(regions: RegionFields[], o: { nregions?: number; padding?: number; xen?: boolean } = {}): this {
    this.u32(o.nregions ?? regions.length).u32(o.padding ?? 0);
    for (const r of regions) this.region(r, o.xen);
    return this;
  }
  /** ADD_MEM_REG / REM_MEM_REG: u64 padding, one region. */
  singleRegion(r: RegionFields, o: { padding?: U64; xen?: boolean } = {}): this { return this.u64(o.padding ?? 0).region(r, o.xen); }
  logBase(mmapSize: U64, mmapOffset: U64): this { return this.u64(mmapSize).u64(mmapOffset); }
  /** IOTLB: iova, size, uaddr, u8 perm, u8 type, then padding to 32 bytes (`packed` stops at 26, rust-vmm style). */
  iotlb(m: { iova: U64; size: U64; uaddr: U64; perm: number; type: number }, o: { packed?: boolean } = {}): this {
    this.u64(m.iova).u64(m.size).u64(m.uaddr).u8(m.perm).u8(m.type);
    return o.packed ? this : this.zeros(6);
  }
  /** Config space: u32 offset, u32 size (defaults to data length), u32 flags, data. */
  config(c: { offset?: number; size?: number; flags?: number; data: Uint8Array | number[] }): this {
    const data = c.data instanceof Uint8Array ? c.data : Uint8Array.from(c.data);
    return this.u32(c.offset ?? 0).u32(c.size ?? data.byteLength).u32(c.flags ?? 0).bytes(data);
  }
  /** Vring area (host notifier): u64 index | bit 8 no fd, u64 size, u64 offset. */
  vringArea(a: { index: number; noFd?: boolean; size: U64; offset: U64 }): this {
    return this.u64(BigInt(a.index & 0xff) | (a.noFd ? 0x100n : 0n)).u64(a.size).u64(a.offset);
  }
  /** Inflight description: u64 mmap_size, u64 mmap_offset, u16 num_queues, u16 queue_size, 4 bytes padding. */
  inflight(i: { mmapSize: U64; mmapOffset: U64; numQueues: number; queueSize: number }, o: { packed?: boolean } = {}): this {
    this.u64(i.mmapSize).u64(i.mmapOffset).u16(i.numQueues).u16(i.queueSize);
    return o.packed ? this : this.zeros(4);
  }
  /** VhostUserShared: 16 UUID bytes in text order. */
  uuid(text: string): this {
    const h = text.replace(/-/g, '');
    if (!/^[0-9a-fA-F]{32}$/.test(h)) throw new Error(`bad uuid ${text}`);
    for (let i = 0; i < 16; i++) this.u8(parseInt(h.slice(i * 2, i * 2 + 2), 16));
    return this;
  }
  deviceState(direction: number, phase: number): this { return this.u32(direction).u32(phase); }
  /** GET_SHMEM_CONFIG reply: u32 nregions, u32 padding, u64 memory_sizes[256]. */
  shmemConfig(sizes: U64[], o: { nregions?: number; padding?: number } = {}): this {
    this.u32(o.nregions ?? sizes.length).u32(o.padding ?? 0);
    for (let i = 0; i < 256; i++) this.u64(sizes[i] ?? 0);
    return this;
  }
  /** VhostUserMMap: u8 shmid, 7 bytes padding, fd_offset, shm_offset, len, flags. */
  shmemMap(m: { shmid: number; fdOffset: U64; shmOffset: U64; len: U64; flags: U64 }): this {
    return this.u8(m.shmid).zeros(7).u64(m.fdOffset).u64(m.shmOffset).u64(m.len).u64(m.flags);
  }

  build(): Uint8Array { return this.w.finish(); }
}

export const payload = (): PayloadBuilder => new PayloadBuilder();

/** 12-byte header: u32 request, u32 flags, u32 size. */
export function header(request: number, flags: number, size: number): Uint8Array {
  return new Writer(HEADER_SIZE).u32(request).u32(flags).u32(size).finish();
}

type PayloadInput = Uint8Array | PayloadBuilder | ((p: PayloadBuilder) => PayloadBuilder);
const toBytes = (p: PayloadInput): Uint8Array =>
  p instanceof Uint8Array ? p : p instanceof PayloadBuilder ? p.build() : p(new PayloadBuilder()).build();

/**
 * One message: header fields, payload, fds, channel and sender. Defaults follow the protocol: version 1,
 * size = payload length, sent by the channel's requester (or the other side for a reply).
 */
export class MessageBuilder {
  private flagBits = VERSION;
  private sizeOverride?: number;
  private body: Uint8Array = new Uint8Array(0);
  private fdKinds: FdInfo['kind'][] = [];
  private sender?: Side;

  constructor(private chan: Channel, private readonly code: number) {}

  get spec(): MessageSpec | undefined { return specFor(this.chan, this.code); }
  get channelName(): Channel { return this.chan; }
  get isReply(): boolean { return (this.flagBits & FLAG_REPLY) !== 0; }
  get fdCount(): number { return this.fdKinds.length; }
  get payloadBytes(): Uint8Array { return this.body; }
  get from(): Side { return this.sender ?? (this.isReply ? otherSide(requester(this.chan)) : requester(this.chan)); }

  channel(c: Channel): this { this.chan = c; return this; }
  sentBy(s: Side): this { this.sender = s; return this; }
  /** Replace the whole flags word (version bits included). */
  flags(f: number): this { this.flagBits = f >>> 0; return this; }
  version(v: number): this { this.flagBits = ((this.flagBits & ~3) | (v & 3)) >>> 0; return this; }
  reply(on = true): this { this.flagBits = on ? this.flagBits | FLAG_REPLY : this.flagBits & ~FLAG_REPLY; return this; }
  needReply(on = true): this { this.flagBits = on ? this.flagBits | FLAG_NEED_REPLY : this.flagBits & ~FLAG_NEED_REPLY; return this; }
  /** Make the header's size field lie (default: the payload length). */
  size(n: number): this { this.sizeOverride = n; return this; }
  payload(p: PayloadInput): this { this.body = toBytes(p); return this; }
  /** Shorthand for the many u64 payloads. */
  u64(v: U64): this { return this.payload(payload().u64(v)); }
  fds(n: number, kind: FdInfo['kind'] = 'eventfd'): this { this.fdKinds = Array.from({ length: n }, () => kind); return this; }

  header(): Uint8Array { return header(this.code, this.flagBits, this.sizeOverride ?? this.body.byteLength); }
  bytes(): Uint8Array {
    const h = this.header();
    const out = new Uint8Array(h.byteLength + this.body.byteLength);
    out.set(h);
    out.set(this.body, h.byteLength);
    return out;
  }
  /** What `decodeMessage` takes. */
  raw(): RawMessage { return { channel: this.chan, from: this.from, header: this.header(), payload: this.body, fdCount: this.fdKinds.length }; }
  /** What `Session.ingest` takes. */
  record(seq: number, o: { time?: number; kept?: number[]; relayProblems?: string[] } = {}): IngestRecord {
    const r: IngestRecord = {
      seq, time: o.time ?? 1_700_000_000_000_000 + seq, channel: this.chan, from: this.from, bytes: this.bytes(),
      fds: this.fdKinds.map((kind) => ({ kind })),
    };
    if (o.kept) r.kept = o.kept;
    if (o.relayProblems) r.relayProblems = o.relayProblems;
    return r;
  }
}

/** A message by name (current or old, with or without VHOST_USER_); the channel comes from the table. */
export function msg(name: string): MessageBuilder {
  const spec = specByName(name);
  if (!spec) throw new Error(`no message named ${name}`);
  return new MessageBuilder(spec.channel, spec.code);
}
/** A message by channel and code (unknown codes allowed). */
export const msgCode = (channel: Channel, code: number): MessageBuilder => new MessageBuilder(channel, code);

/** How many fds a valid message carries under a table fd rule, given its payload fields. */
export function fdCountFor(rule: FdRule, fields: Record<string, unknown> | undefined): number {
  switch (rule) {
    case 'none': return 0;
    case 'one': case 'optional': return 1;
    case 'up-to-8': return 2;
    case 'per-region': return Number(fields?.nregions ?? 0);
    case 'unless-nofd': return fields?.noFd ? 0 : 1;
  }
}

/**
 * Fake fd numbers with ledger-style accounting of the session's `closeFd` hook: every fd handed in must be
 * closed exactly once, never an fd nobody handed in.
 */
export class FakeFds {
  private next: number;
  readonly handedIn = new Set<number>();
  readonly closed = new Map<number, number>();
  readonly violations: string[] = [];
  constructor(first = 1000) { this.next = first; }

  alloc(n: number): number[] {
    const out = Array.from({ length: n }, () => this.next++);
    for (const fd of out) this.handedIn.add(fd);
    return out;
  }
  readonly closeFd = (fd: number): void => {
    if (!this.handedIn.has(fd)) this.violations.push(`closeFd(${fd}): never handed in`);
    const n = (this.closed.get(fd) ?? 0) + 1;
    if (n > 1) this.violations.push(`closeFd(${fd}) called ${n} times`);
    this.closed.set(fd, n);
  };
  isOpen(fd: number): boolean { return this.handedIn.has(fd) && !this.closed.has(fd); }
  get open(): number[] { return [...this.handedIn].filter((fd) => !this.closed.has(fd)); }
}

/**
 * The relay's header-level fd policy: memory fds (SET_MEM_TABLE, ADD_MEM_REG requests from the front-end on
 * the main socket) are dup'ed and handed to the session as `kept`.
 */
export function keptByRelay(b: MessageBuilder, fds: FakeFds): number[] | undefined {
  if (b.channelName !== 'main' || b.from !== 'frontend' || b.isReply || b.spec?.relay !== 'keep-memory-fds') return undefined;
  return fds.alloc(b.fdCount);
}

/** Feeds builders to a session in order with increasing seq numbers and relay-style kept fds. */
export class Feeder {
  seq = 0;
  constructor(readonly session: Session, readonly fds: FakeFds) {}
  feed(b: MessageBuilder, o: { kept?: number[] } = {}): ReturnType<Session['ingest']> {
    const kept = o.kept ?? keptByRelay(b, this.fds);
    return this.session.ingest(b.record(++this.seq, { kept }));
  }
}
