// Seeded PRNG, a property runner that prints its seed on failure, and random valid payloads for every table layout.
import type { DecodeContext } from '../../core/protocol/payloads';
import { decodeMessage, payloadCodec } from '../../core/protocol/codec';
import { MESSAGES, type MessageSpec } from '../../core/protocol/table';
import { payload, msgCode, fdCountFor, type MessageBuilder, type PayloadBuilder, type RegionFields } from './wire';

/** sfc32: small, fast, deterministic for a given seed. */
export class Rng {
  private a: number; private b: number; private c: number; private d: number;
  constructor(readonly seed: number) {
    this.a = 0x9e3779b9; this.b = 0x243f6a88; this.c = 0xb7e15162; this.d = seed >>> 0;
    for (let i = 0; i < 15; i++) this.u32();
  }
  u32(): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0;
    this.d = (this.d + 1) >>> 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) >>> 0;
    this.c = ((this.c << 21) | (this.c >>> 11)) >>> 0;
    this.c = (this.c + t) >>> 0;
    return t;
  }
  /** 0 .. n-1 */
  int(n: number): number { return n <= 1 ? 0 : Math.floor((this.u32() / 0x100000000) * n); }
  range(lo: number, hi: number): number { return lo + this.int(hi - lo + 1); }
  bool(p = 0.5): boolean { return this.u32() / 0x100000000 < p; }
  pick<T>(xs: readonly T[]): T { return xs[this.int(xs.length)]; }
  u64(): bigint { return (BigInt(this.u32()) << 32n) | BigInt(this.u32()); }
  /** A u64 biased towards interesting values (0, small, max, aligned addresses). */
  u64ish(): bigint {
    switch (this.int(6)) {
      case 0: return 0n;
      case 1: return BigInt(this.int(1000));
      case 2: return 0xffffffffffffffffn - BigInt(this.int(4));
      case 3: return BigInt(this.u32()) << 12n;
      default: return this.u64();
    }
  }
  u32ish(): number { return this.pick([0, 1, 0xffffffff, this.int(300), this.u32()]); }
  bytes(n: number): Uint8Array { const b = new Uint8Array(n); for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff; return b; }
}

/** The seed: VHOST_LENS_SEED when set (to replay a failure), else a fresh one. */
export function chooseSeed(): number {
  const env = process.env.VHOST_LENS_SEED;
  if (env !== undefined && env !== '') return Number(env) >>> 0;
  return (Math.random() * 0x100000000) >>> 0;
}

/**
 * Run `runs` cases from one seed; on failure rethrow with the seed, the case number and how to replay it.
 * Deterministic: the same seed replays the same cases.
 */
export function property(name: string, runs: number, fn: (rng: Rng, run: number) => void, seed = chooseSeed()): void {
  const rng = new Rng(seed);
  for (let run = 0; run < runs; run++) {
    try {
      fn(rng, run);
    } catch (e) {
      const err = e as Error;
      const msg = `property "${name}" failed at run ${run} with seed ${seed} (replay: VHOST_LENS_SEED=${seed})\n${err.message}`;
      // eslint-disable-next-line no-console
      console.error(msg);
      err.message = msg;
      throw err;
    }
  }
}

const MAX64 = 0xffffffffffffffffn;

export function randomRegion(rng: Rng): RegionFields {
  const size = BigInt(rng.range(1, 0x10000)) << 12n;
  const gpa = rng.bool(0.8) ? BigInt(rng.u32()) << 12n : MAX64 - size - (BigInt(rng.int(8)) << 12n);
  const uva = rng.bool(0.8) ? 0x7f0000000000n + (BigInt(rng.u32()) << 12n) : MAX64 - size;
  return { gpa, size, uva, offset: rng.u64ish(), xenFlags: rng.u32(), domid: rng.int(0x10000) };
}

/** Random valid payload bytes for a layout (every field within what the codec's checks accept). */
export const RANDOM: Record<string, (rng: Rng, ctx: DecodeContext) => PayloadBuilder> = {
  'none': () => payload(),
  'u64': (rng) => payload().u64(rng.u64ish()),
  'u64 (REPLY_ACK: 0 = success)': (rng) => payload().u64(rng.bool(0.8) ? 0n : rng.u64ish()),
  'vring state': (rng) => payload().vringState(rng.u32ish(), rng.u32ish()),
  'vring base': (rng, ctx) => payload().vringState(rng.u32ish(), ctx.packed ? rng.u32() : rng.int(0x10000)),
  'vring address': (rng) => payload().vringAddr({
    index: rng.u32ish(), flags: rng.int(2), desc: rng.u64() & ~15n, used: rng.u64() & ~3n, avail: rng.u64() & ~1n, log: rng.u64ish(),
  }),
  'u64 (vring index, bit 8 = no fd)': (rng) => payload().vringFd(rng.int(256), { noFd: rng.bool() }),
  'multiple memory regions': (rng, ctx) => {
    const regions = Array.from({ length: rng.range(0, 8) }, () => randomRegion(rng));
    return payload().memTable(regions, { padding: rng.bool(0.9) ? 0 : rng.u32(), xen: ctx.xenMmap });
  },
  'single memory region': (rng, ctx) => payload().singleRegion(randomRegion(rng), { padding: rng.bool(0.9) ? 0n : rng.u64(), xen: ctx.xenMmap }),
  'log description': (rng) => payload().logBase(rng.u64ish(), rng.u64ish()),
  'IOTLB message': (rng) => payload().iotlb({ iova: rng.u64ish(), size: rng.u64ish(), uaddr: rng.u64ish(), perm: rng.int(4), type: rng.range(1, 4) }),
  'device config space': (rng) => payload().config({ offset: rng.int(256), flags: rng.int(4), data: rng.bytes(rng.int(257)) }),
  'crypto session': (rng) => payload().bytes(rng.bytes(rng.int(64))),
  'userfaultfd reply': (rng) => payload().bytes(rng.bytes(rng.pick([0, 0, 8]))),
  'inflight description': (rng) => payload().inflight({ mmapSize: rng.u64ish(), mmapOffset: rng.u64ish(), numQueues: rng.int(0x10000), queueSize: rng.int(0x10000) }),
  'shared object (UUID)': (rng) => payload().bytes(rng.bytes(16)),
  'device state transfer parameters': (rng) => payload().deviceState(rng.int(2), 0),
  'shared memory config': (rng) => {
    const n = rng.int(257);
    return payload().shmemConfig(Array.from({ length: n }, () => rng.u64ish()), { nregions: rng.bool(0.8) ? n : rng.int(257), padding: rng.bool(0.9) ? 0 : rng.u32() });
  },
  'vring area description': (rng) => payload().vringArea({ index: rng.int(256), noFd: rng.bool(), size: rng.u64ish(), offset: rng.u64ish() }),
  'shared memory mapping (VhostUserMMap)': (rng) => payload().shmemMap({ shmid: rng.int(256), fdOffset: rng.u64ish(), shmOffset: rng.u64ish(), len: rng.u64ish(), flags: rng.u64ish() }),
  'memory read request': (rng) => payload().bytes(rng.bytes(rng.int(40))),
  'memory read reply': (rng) => payload().bytes(rng.bytes(rng.int(200))),
  'memory write request': (rng) => payload().bytes(rng.bytes(rng.int(200))),
};

export function randomPayload(layout: string, rng: Rng, ctx: DecodeContext): Uint8Array {
  const g = RANDOM[layout];
  if (!g) throw new Error(`no random generator for layout "${layout}": add one to test/helpers/wireRandom.ts`);
  return g(rng, ctx).build();
}

/** A random valid message of any table row: request, layout reply or ack, with the fds its rule wants. */
export function randomValidMessage(rng: Rng, ctx: DecodeContext, only?: (m: MessageSpec) => boolean): { spec: MessageSpec; b: MessageBuilder } {
  const rows = only ? MESSAGES.filter(only) : MESSAGES;
  for (;;) {
    const spec = rng.pick(rows);
    const kinds: ('request' | 'layout-reply' | 'ack')[] = ['request'];
    if (spec.reply) kinds.push('layout-reply');
    if (spec.replyRule !== 'always') kinds.push('ack');
    const kind = rng.pick(kinds);
    const reply = kind !== 'request';
    const layout = kind === 'request' ? spec.request.layout : kind === 'ack' ? 'u64 (REPLY_ACK: 0 = success)' : spec.reply!.layout;
    const body = randomPayload(layout, rng, ctx);
    // A layout reply that happens to be 8 bytes reads as an ack (SET_MEM_TABLE with no regions): pick again.
    if (kind === 'layout-reply' && payloadCodec(spec, true, body.byteLength) !== spec.reply) continue;
    const b = msgCode(spec.channel, spec.code).payload(body).reply(reply).needReply(!reply && rng.bool(0.3));
    const fields = decodeMessage(b.raw(), ctx).payload;
    const rule = reply ? spec.replyFds : spec.fds;
    b.fds(rule === 'optional' ? rng.int(2) : fdCountFor(rule, fields), rule === 'per-region' || spec.relay === 'keep-memory-fds' ? 'memfd' : 'eventfd');
    return { spec, b };
  }
}
