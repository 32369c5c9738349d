// Property tests for the ring decoders: structure-aware and random-byte fuzzing; only typed errors, bounded work, no out-of-region reads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BufferMemory, type BackingAccess } from '../../core/memory/bufferMemory';
import { MemoryError } from '../../core/memory/guestMemory';
import { snapshotSplit } from '../../core/virtio/split';
import { snapshotPacked } from '../../core/virtio/packed';
import { snapshotRing, type RingSnapshot } from '../../core/virtio/snapshot';
import { RingWatcher } from '../../core/virtio/watch';
import { decodePayload } from '../../core/virtio/payload';
import { decodeFsChain, FUSE_OPCODES } from '../../core/virtio/fs';
import { summarizeFrame } from '../../core/virtio/net';
import {
  DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, MAX_INDIRECT_ENTRIES, PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED, RingError, type Chain, type RingConfig,
} from '../../core/virtio/ring';
import { GuestArena, PackedRingBuilder, SplitRingBuilder, UVA_DELTA } from '../helpers/ringBuilder';

const SEED = Number(process.env.VL_SEED ?? Date.now() % 1_000_000);
const SCALE = Number(process.env.VL_SCALE ?? 1);

/** mulberry32 */
function prng(seed: number) {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number): number => Math.floor(next() * n);
  return {
    int, next,
    pick: <T>(xs: readonly T[]): T => xs[int(xs.length)],
    chance: (p: number): boolean => next() < p,
    u16: (): number => int(0x10000),
    u32: (): number => int(0x1_0000_0000),
    bytes: (n: number): Uint8Array => { const b = new Uint8Array(n); for (let i = 0; i < n; i++) b[i] = int(256); return b; },
  };
}
type Rng = ReturnType<typeof prng>;

/** Run body with the seed in any failure message. */
function withSeed(name: string, body: (rng: Rng) => void): void {
  const rng = prng(SEED ^ hash(name));
  try { body(rng); } catch (e) {
    const msg = `${name}: failed with VL_SEED=${SEED} (rerun: VL_SEED=${SEED} node --test out/test/property/rings.test.js)`;
    console.error(msg);
    throw new Error(`${msg}\n${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
}
function hash(s: string): number { let h = 2166136261; for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619); return h >>> 0; }

/**
 * Three regions: two contiguous in GPA and UVA (an access may span them), one apart; every backing access is
 * checked against its region's size and the whole run counts bytes read (bounded work).
 */
function fuzzMemory() {
  const sizes = [256 << 10, 256 << 10, 128 << 10];
  const bytes = sizes.map((s) => new Uint8Array(s));
  const violations: BackingAccess[] = [];
  let bytesRead = 0;
  const mem = new BufferMemory([
    { guestPhysAddr: 0x10_0000n, userspaceAddr: 0x7f00_0010_0000n, bytes: bytes[0] },
    { guestPhysAddr: 0x14_0000n, userspaceAddr: 0x7f00_0014_0000n, bytes: bytes[1] },
    { guestPhysAddr: 0x80_0000n, userspaceAddr: 0x7f00_0080_0000n, bytes: bytes[2] },
  ], {
    onAccess: (a) => {
      if (a.offset < 0 || a.offset + a.len > sizes[a.region] || a.len < 0) violations.push(a);
      if (a.op === 'read') bytesRead += a.len;
    },
  });
  return { mem, bytes, violations, read: () => bytesRead, reset: () => { bytesRead = 0; } };
}

/** Addresses a hostile driver would write: mostly inside memory, some at edges, some nowhere. */
function gpaFor(rng: Rng): bigint {
  switch (rng.int(8)) {
    case 0: return BigInt(rng.u32()) * BigInt(rng.u32());
    case 1: return 0xffff_ffff_ffff_ff00n + BigInt(rng.int(256));
    case 2: return 0x14_0000n - BigInt(rng.int(64)); // straddles the contiguous boundary
    case 3: return 0x82_0000n - BigInt(rng.int(64)); // runs off the last region
    case 4: return 0x40_0000n + BigInt(rng.int(0x1000)); // the gap
    default: return 0x10_0000n + BigInt(rng.int(0x70000));
  }
}

function lenFor(rng: Rng): number {
  switch (rng.int(6)) {
    case 0: return rng.u32();
    case 1: return 16 * rng.int(64);
    case 2: return 0;
    default: return rng.int(2048);
  }
}

function randomDesc(rng: Rng, num: number, packed: boolean): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, BigInt.asUintN(64, gpaFor(rng)), true);
  v.setUint32(8, lenFor(rng) >>> 0, true);
  let flags = (rng.chance(0.5) ? DESC_F_NEXT : 0) | (rng.chance(0.4) ? DESC_F_WRITE : 0) | (rng.chance(0.15) ? DESC_F_INDIRECT : 0);
  if (rng.chance(0.05)) flags = rng.u16();
  if (packed) {
    flags |= (rng.chance(0.5) ? PACKED_DESC_F_AVAIL : 0) | (rng.chance(0.5) ? PACKED_DESC_F_USED : 0);
    v.setUint16(12, rng.chance(0.8) ? rng.int(num + 2) : rng.u16(), true);
    v.setUint16(14, flags, true);
  } else {
    v.setUint16(12, flags, true);
    v.setUint16(14, rng.chance(0.85) ? rng.int(num + 1) : rng.u16(), true);
  }
  return b;
}

/** Every property a snapshot must satisfy, whatever the memory held. */
function checkSnapshot(s: RingSnapshot, cfg: RingConfig, mem: BufferMemory): void {
  assert.equal(s.vring, cfg.index);
  assert.ok(s.chains.length <= 2 * cfg.num, `chains ${s.chains.length} for ring of ${cfg.num}`);
  for (const e of s.errors) { assert.ok(e instanceof RingError); assert.equal(e.vring, cfg.index); }
  const all: Chain[] = [...s.chains];
  if (s.kind === 'packed') for (const u of s.used) if (u.chain) all.push(u.chain);
  for (const c of all) {
    assert.ok(c.descs.length <= cfg.num + MAX_INDIRECT_ENTRIES);
    if (c.error) assert.ok(c.error instanceof RingError);
    const fatal = c.error && c.error.code !== 'write-before-read';
    if (!fatal) {
      assert.ok(c.readable + c.writable <= 0xffff_ffff, 'chain total above u32 without len-overflow');
      for (const d of c.descs) if (d.len > 0) assert.equal(mem.checkGpa(d.addr, d.len), undefined, 'accepted a buffer outside memory');
    }
    if (c.payload !== undefined) assert.equal(typeof (c.payload as { summary?: unknown }).summary, 'string');
  }
}

/** Call fn; it may return or throw a RingError, nothing else. */
function typedOnly<T>(fn: () => T): T | RingError {
  try { return fn(); } catch (e) {
    if (e instanceof RingError) return e;
    throw new Error(`untyped exception escaped: ${e instanceof Error ? e.stack : String(e)}`);
  }
}

const SIZES_SPLIT = [1, 2, 4, 8, 16, 64, 256, 3, 0, 6, 100, 65536];
const DEVICES = ['net', 'blk', 'unknown', 'fs'] as const;

test('random bytes in ring memory: only typed errors, bounded work, no read outside a region', () => {
  withSeed('random-bytes', (rng) => {
    const f = fuzzMemory();
    const arena = new GuestArena(f.mem, 0x10_0000n, 0x18_0000n);
    const iterations = 600 * SCALE;
    for (let it = 0; it < iterations; it++) {
      const packed = rng.chance(0.5);
      const num = packed ? (rng.chance(0.9) ? 1 + rng.int(256) : rng.pick([0, 32769, 40000])) : rng.pick(SIZES_SPLIT);
      const n = Math.max(1, Math.min(num, 256));
      // Fresh ring areas filled with random descriptors and random indices.
      const desc = 0x10_0000n + BigInt(16 * rng.int(0x1000));
      const avail = 0x12_0000n + BigInt(2 * rng.int(0x1000));
      const used = 0x16_0000n + BigInt(4 * rng.int(0x1000));
      for (let i = 0; i < n; i++) {
        const at = desc + BigInt(16 * i);
        if (at + 16n <= 0x18_0000n) arena.write(at, randomDesc(rng, n, packed));
      }
      arena.write(avail, rng.bytes(Math.min(6 + 2 * n, 0x18_0000 - Number(avail))));
      arena.write(used, rng.bytes(Math.min(6 + 8 * n, 0x18_0000 - Number(used))));
      // Sometimes indirect tables: point a few descriptors at random tables of random descriptors.
      if (rng.chance(0.3)) {
        const t = 0x17_0000n + BigInt(16 * rng.int(0x800));
        for (let i = 0; i < 16; i++) arena.write(t + BigInt(16 * i), randomDesc(rng, 16, packed));
      }
      const cfg: RingConfig = {
        index: rng.int(4), num, packed, eventIdx: rng.chance(0.5), indirect: rng.chance(0.9),
        desc: desc + UVA_DELTA, avail: avail + UVA_DELTA, used: used + UVA_DELTA,
        ...(rng.chance(0.3) ? { nextAvail: rng.u16(), nextAvailWrap: rng.chance(0.5) } : {}),
      };
      if (rng.chance(0.05)) cfg.desc = gpaFor(rng) + UVA_DELTA; // ring itself anywhere
      f.reset();
      const r = typedOnly(() => snapshotRing(f.mem, cfg, { device: rng.pick(DEVICES), features: rng.chance(0.5) ? 1n << 32n : 0n, preview: 8 }));
      if (!(r instanceof RingError)) checkSnapshot(r, cfg, f.mem);
      // Work bound: ring areas + at most one table per chain (each <= 1 MiB) + payload reads, far below this.
      assert.ok(f.read() <= 2 * n * (1 << 20) + (1 << 20), `read ${f.read()} bytes for a ring of ${n}`);
    }
    assert.deepEqual(f.violations, []);
  });
});

test('structure-aware: rings built by a driver, then mutated field by field', () => {
  withSeed('structured', (rng) => {
    const iterations = 150 * SCALE;
    for (let it = 0; it < iterations; it++) {
      const f = fuzzMemory();
      const arena = new GuestArena(f.mem, 0x10_0000n, 0x14_0000n + 0x3_0000n); // spans the contiguous pair
      const packed = rng.chance(0.5);
      const num = packed ? 1 + rng.int(64) : 1 << rng.int(7);
      const index = rng.int(4);
      const sb = packed ? undefined : new SplitRingBuilder(f.mem, num, index, { eventIdx: rng.chance(0.5), startIdx: rng.chance(0.3) ? 0xffff - rng.int(8) : 0, arena });
      const pb = packed ? new PackedRingBuilder(f.mem, num, index, { arena }) : undefined;
      const live: number[] = [];
      let free = num;
      let inOrder = true;
      // Operations: offer chains (direct or indirect), complete in or out of order.
      const ops = rng.int(3 * num + 4);
      for (let k = 0; k < ops; k++) {
        if (rng.chance(0.6) && free > 0) {
          const nb = 1 + rng.int(Math.min(4, free));
          const indirect = rng.chance(0.3);
          const bufs = Array.from({ length: nb }, (_, i) => ({ len: 1 + rng.int(600), write: i === nb - 1 ? rng.chance(0.7) : false, data: rng.bytes(16) }));
          try {
            live.push(packed ? pb!.add(bufs, { indirect }) : sb!.add(bufs, { indirect }));
            free -= indirect ? 1 : nb;
          } catch { break; } // arena exhausted
        } else if (live.length) {
          const at = rng.chance(0.5) ? 0 : rng.int(live.length);
          if (at !== 0) inOrder = false;
          const id = live.splice(at, 1)[0];
          const slots = packed ? pb!.chains.get(id)?.slots ?? 1 : sb!.chains.get(id)?.descs.length ?? 1;
          if (packed) pb!.use(id, rng.int(600)); else sb!.use(id, rng.int(600));
          free += slots;
        }
      }
      const cfg = packed ? pb!.cfg : sb!.cfg;
      // Unmutated: decodes without errors (bad-wrap/write-before-read are not expected from a well-behaved driver).
      const clean = typedOnly(() => snapshotRing(f.mem, cfg, { device: rng.pick(DEVICES) }));
      assert.ok(!(clean instanceof RingError), `clean ring failed: ${clean instanceof RingError ? clean.message : ''}`);
      checkSnapshot(clean, cfg, f.mem);
      assert.deepEqual(clean.errors.map((e) => e.message), []);
      if (!packed) {
        // Split: the heads outstanding are always among the in-flight chains.
        const heads = clean.chains.filter((c) => c.state === 'inflight').map((c) => c.head);
        if (inOrder) assert.equal(clean.inflightExact, true);
        if (inOrder) assert.deepEqual([...heads].sort(), [...live].sort());
        else assert.ok(heads.length <= live.length && heads.every((h) => h < num));
      }
      // Mutations: overwrite one field of one descriptor / index / entry, decode again.
      const mutations = 1 + rng.int(6);
      const base = packed ? pb!.descGpa : sb!.descGpa;
      for (let m = 0; m < mutations; m++) {
        const i = rng.int(num);
        const at = base + BigInt(16 * i);
        switch (rng.int(packed ? 6 : 9)) {
          case 0: arena.u64(at, gpaFor(rng)); break;
          case 1: arena.u32(at + 8n, lenFor(rng)); break;
          case 2: arena.u16(at + 12n, packed ? rng.u16() : rng.u16() & 7); break;
          case 3: arena.u16(at + 14n, packed ? rng.u16() : rng.int(num + 2)); break;
          case 4: arena.write(at, randomDesc(rng, num, packed)); break;
          case 5: arena.write(at, rng.bytes(16)); break;
          case 6: sb!.setAvailIdx(rng.chance(0.5) ? sb!.availIdx + rng.int(2 * num + 2) : rng.u16()); break;
          case 7: sb!.setAvailEntry(rng.int(num), rng.chance(0.7) ? rng.int(num + 2) : rng.u16()); break;
          case 8: sb!.setUsedEntry(rng.int(num), rng.chance(0.7) ? rng.int(num + 2) : rng.u32(), rng.u32()); sb!.setUsedIdx(sb!.usedIdx + rng.int(3)); break;
        }
      }
      const r = typedOnly(() => snapshotRing(f.mem, cfg, { device: rng.pick(DEVICES), features: 1n << 32n }));
      if (!(r instanceof RingError)) checkSnapshot(r, cfg, f.mem);
      assert.deepEqual(f.violations, []);
    }
  });
});

test('watcher over hostile memory: poll never throws, emits only typed errors, never writes', () => {
  withSeed('watcher', (rng) => {
    for (let it = 0; it < 40 * SCALE; it++) {
      const f = fuzzMemory();
      const arena = new GuestArena(f.mem, 0x10_0000n, 0x14_0000n);
      const packed = rng.chance(0.5);
      const num = packed ? 1 + rng.int(32) : 1 << rng.int(6);
      const sb = packed ? undefined : new SplitRingBuilder(f.mem, num, 0, { arena });
      const pb = packed ? new PackedRingBuilder(f.mem, num, 0, { arena }) : undefined;
      const w = new RingWatcher({ memory: f.mem, ring: (packed ? pb! : sb!).cfg, device: rng.pick(DEVICES), now: () => it });
      const writes = f.mem.writes;
      let builderWrites = 0;
      const live: number[] = [];
      for (let step = 0; step < 30; step++) {
        const before = f.mem.writes;
        try {
          if (rng.chance(0.5)) live.push(packed ? pb!.add([{ len: 8 + rng.int(64), data: rng.bytes(8) }], { indirect: rng.chance(0.3) }) : sb!.add([{ len: 8 }, { len: 1, write: true }]));
          else if (live.length) { const id = live.splice(rng.int(live.length), 1)[0]; if (packed) pb!.use(id, 1); else sb!.use(id, 1); }
          if (rng.chance(0.3)) arena.write((packed ? pb!.descGpa : sb!.descGpa) + BigInt(16 * rng.int(num)), rng.bytes(16));
          if (!packed && rng.chance(0.1)) sb!.setAvailIdx(rng.u16());
        } catch { /* ring full or arena exhausted: the builder refuses, the watcher keeps going */ }
        builderWrites += f.mem.writes - before;
        const afterBuild = f.mem.writes;
        const evs = w.poll();
        assert.equal(f.mem.writes, afterBuild, 'watcher wrote guest memory');
        for (const e of evs) if (e.kind === 'error') assert.ok(e.error instanceof RingError);
        assert.ok(w.inflight().length <= num, 'tracks more in flight than the ring holds');
      }
      assert.equal(f.mem.writes - writes, builderWrites);
      assert.deepEqual(f.violations, []);
    }
  });
});

test('payload decoders on random bytes: never throw (frame summaries) or only MemoryError (chain decoders)', () => {
  withSeed('payloads', (rng) => {
    const f = fuzzMemory();
    for (let it = 0; it < 2000 * SCALE; it++) {
      const b = rng.bytes(rng.int(200));
      if (b.length > 13 && rng.chance(0.7)) { b[12] = rng.pick([0x08, 0x86, 0x81, 0x88]); b[13] = rng.pick([0x00, 0x06, 0xdd, 0x00, 0xa8]); }
      if (b.length > 14 && rng.chance(0.5)) b[14] = rng.pick([0x45, 0x60, 0x4f, 0x41]);
      const s = summarizeFrame(b, b.length + rng.int(100));
      assert.equal(typeof s.summary, 'string');
      const descs = Array.from({ length: 1 + rng.int(4) }, (_, i) => ({ index: i, addr: gpaFor(rng), len: rng.int(300), flags: 0, write: rng.chance(0.5) }));
      const chain: Chain = { head: 0, descs, readable: 0, writable: 0, state: rng.chance(0.5) ? 'used' : 'inflight', usedLen: rng.u32() };
      for (const d of descs) if (d.write) chain.writable += d.len; else chain.readable += d.len;
      const p = decodePayload(f.mem, chain, rng.int(4), { device: rng.pick(DEVICES), features: rng.chance(0.5) ? 1n << 32n : 0n, ctrlQueue: rng.chance(0.2) ? 2 : undefined });
      assert.equal(typeof p.summary, 'string');
    }
    assert.deepEqual(f.violations, []);
    void MemoryError;
  });
});

test('virtio-fs decoder on FUSE-shaped random chains: a typed payload or MemoryError, never a read outside memory', () => {
  withSeed('fuse', (rng) => {
    const f = fuzzMemory();
    const opcodes = Object.keys(FUSE_OPCODES).map(Number);
    for (let it = 0; it < 2000 * SCALE; it++) {
      // Plausible headers in region 0 (lengths, opcodes and uniques sometimes lying), random bytes after them.
      const descs = Array.from({ length: 1 + rng.int(4) }, (_, i) => {
        const inMem = rng.chance(0.8);
        const addr = inMem ? 0x10_0000n + BigInt(rng.int(0x3f000)) : gpaFor(rng);
        return { index: i, addr, len: rng.chance(0.3) ? rng.int(40) : 40 + rng.int(600), flags: 0, write: i > 0 && rng.chance(0.6) };
      });
      for (const d of descs) {
        const o = Number(d.addr - 0x10_0000n);
        if (o < 0 || o + d.len > f.bytes[0].length) continue;
        const b = f.bytes[0].subarray(o, o + d.len);
        for (let k = 0; k < b.length; k++) b[k] = rng.int(256);
        if (b.length >= 16) {
          const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
          dv.setUint32(0, rng.chance(0.5) ? d.len : rng.u32(), true);
          dv.setUint32(4, d.write ? rng.u32() : rng.chance(0.9) ? rng.pick(opcodes) : rng.u32(), true);
        }
      }
      const chain: Chain = { head: 0, descs, readable: 0, writable: 0, state: rng.chance(0.6) ? 'used' : 'inflight', usedLen: rng.chance(0.5) ? rng.int(700) : rng.u32() };
      for (const d of descs) if (d.write) chain.writable += d.len; else chain.readable += d.len;
      // The FUSE decoder itself may throw MemoryError only (the dispatcher turns that into a payload error).
      try {
        const direct = decodeFsChain(f.mem, chain, { preview: rng.int(40) });
        assert.ok(direct.summary.length < 400 && !direct.summary.includes('\n'), 'summary stays one line');
      } catch (e) { assert.ok(e instanceof MemoryError, `decodeFsChain threw ${(e as Error).name}: ${(e as Error).message}`); }
      const p = decodePayload(f.mem, chain, rng.int(3), { device: 'unknown', preview: rng.int(40) });
      assert.equal(typeof p.summary, 'string');
    }
    assert.deepEqual(f.violations, []);
  });
});

test('decoders stay bounded on worst-case rings (every descriptor chained, maximal indirect tables)', () => {
  const f = fuzzMemory();
  const arena = new GuestArena(f.mem, 0x10_0000n, 0x14_0000n + 0x3_0000n);
  // Split 256: every head in avail is 0, descriptors chain 0->1->...->255 (256 chains of 256 descriptors each).
  const sb = new SplitRingBuilder(f.mem, 256, 0, { arena });
  for (let i = 0; i < 256; i++) sb.setDesc(i, { addr: 0x10_0000n, len: 1, flags: DESC_F_NEXT, next: (i + 1) % 256 });
  for (let i = 0; i < 256; i++) sb.offer(0);
  const s = snapshotSplit(f.mem, sb.cfg);
  assert.ok(s.chains.length <= 256);
  assert.ok(s.errors.every((e) => e.code === 'loop' || e.code === 'budget-exhausted'));
  // Packed 64: every slot an indirect descriptor to the same 4096-entry table.
  const pb = new PackedRingBuilder(f.mem, 64, 1, { arena });
  const table = arena.alloc(16 * 4096);
  for (let i = 0; i < 4096; i++) { arena.u64(table + BigInt(16 * i), 0x10_0000n); arena.u32(table + BigInt(16 * i + 8), 1); }
  for (let i = 0; i < 64; i++) pb.writeDesc(i, { addr: table, len: 16 * 4096, id: i, flags: DESC_F_INDIRECT | PACKED_DESC_F_AVAIL });
  const p = snapshotPacked(f.mem, pb.cfg, { budget: 65536 });
  assert.ok(p.chains.length === 64);
  assert.ok(p.errors.some((e) => e.code === 'budget-exhausted'));
  assert.deepEqual(f.violations, []);
});
