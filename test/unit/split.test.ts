// Unit tests for the split-ring decoder: layout, chains, indirect tables, in-flight accounting and every hostile case.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { snapshotSplit, type SplitSnapshot } from '../../core/virtio/split';
import { DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, RingError, type RingErrorCode } from '../../core/virtio/ring';
import { GPA_BASE, SplitRingBuilder, makeMemory } from '../helpers/ringBuilder';

function setup(num = 8, opts: { eventIdx?: boolean; startIdx?: number } = {}) {
  const mem = makeMemory(1 << 20, { record: true });
  const rb = new SplitRingBuilder(mem, num, 1, opts);
  return { mem, rb };
}

function errorCodes(s: SplitSnapshot): RingErrorCode[] { return s.errors.map((e) => e.code); }

function assertReadsInBounds(mem: ReturnType<typeof makeMemory>): void {
  const size = mem.bytesOf(0).byteLength;
  for (const a of mem.log) assert.ok(a.offset >= 0 && a.offset + a.len <= size, `access ${a.offset}+${a.len} outside region`);
}

test('split: in-flight chains with readable and writable buffers, then used', () => {
  const { mem, rb } = setup();
  const h1 = rb.add([{ len: 16, data: new Uint8Array(16).fill(7) }, { len: 512, write: true }, { len: 1, write: true }]);
  const h2 = rb.add([{ len: 100 }]);
  let s = snapshotSplit(mem, rb.cfg);
  assert.equal(s.kind, 'split');
  assert.equal(s.vring, 1);
  assert.equal(s.avail.idx, 2);
  assert.equal(s.used.idx, 0);
  assert.equal(s.inflightCount, 2);
  assert.equal(s.inflightExact, true);
  assert.deepEqual(s.errors, []);
  assert.deepEqual(s.chains.map((c) => [c.head, c.state, c.readable, c.writable, c.descs.length, c.availPos]), [[h1, 'inflight', 16, 513, 3, 0], [h2, 'inflight', 100, 0, 1, 1]]);
  const d = s.chains[0].descs;
  assert.deepEqual(d.map((x) => [x.len, x.write, x.flags]), [[16, false, DESC_F_NEXT], [512, true, DESC_F_WRITE | DESC_F_NEXT], [1, true, DESC_F_WRITE]]);
  assert.ok(d[0].addr >= GPA_BASE);
  rb.use(h1, 513);
  s = snapshotSplit(mem, rb.cfg);
  assert.equal(s.inflightCount, 1);
  assert.deepEqual(s.chains.map((c) => [c.head, c.state, c.usedLen]), [[h2, 'inflight', undefined], [h1, 'used', 513]]);
  assert.deepEqual(s.used.ring[0], { id: h1, len: 513 });
  assertReadsInBounds(mem);
});

test('split: indirect table entries are decoded as split descriptors', () => {
  const { mem, rb } = setup();
  const h = rb.add([{ len: 16 }, { len: 4096 }, { len: 1, write: true }], { indirect: true });
  const s = snapshotSplit(mem, rb.cfg);
  const c = s.chains[0];
  assert.equal(c.head, h);
  assert.equal(c.indirect?.entries, 3);
  assert.equal(c.indirect?.len, 48);
  assert.deepEqual(c.descs.map((x) => [x.index, x.len, x.write, x.fromIndirect]), [[0, 16, false, true], [1, 4096, false, true], [2, 1, true, true]]);
  assert.equal(c.readable, 4112);
  assert.equal(c.writable, 1);
  assert.equal(rb.freeCount, 7); // one ring descriptor only
});

test('split: EVENT_IDX fields, flags and the raw table', () => {
  const { mem, rb } = setup(4, { eventIdx: true });
  rb.add([{ len: 8 }]);
  rb.setUsedEvent(5);
  rb.setAvailEvent(9);
  const s = snapshotSplit(mem, rb.cfg, { table: true });
  assert.equal(s.avail.usedEvent, 5);
  assert.equal(s.used.availEvent, 9);
  assert.equal(s.table?.length, 4);
  assert.equal(s.table?.[0].len, 8);
});

test('split: free-running indices wrap at 2^16', () => {
  const { mem, rb } = setup(4, { startIdx: 65534 });
  const heads = [rb.add([{ len: 1 }]), rb.add([{ len: 2 }]), rb.add([{ len: 3 }])];
  rb.use(heads[0], 0);
  const s = snapshotSplit(mem, rb.cfg, { usedHistory: 1 });
  assert.equal(s.avail.idx, 1);
  assert.equal(s.used.idx, 65535);
  assert.equal(s.inflightCount, 2);
  assert.deepEqual(s.chains.filter((c) => c.state === 'inflight').map((c) => [c.availPos, c.readable]), [[65535, 2], [0, 3]]);
  assert.deepEqual(s.chains.filter((c) => c.state === 'used').map((c) => [c.usedPos, c.head]), [[65534, heads[0]]]);
});

test('split: out-of-order completion is detected and the in-flight guess excludes completed heads', () => {
  const { mem, rb } = setup(8);
  const a = rb.add([{ len: 1 }]);
  const b = rb.add([{ len: 2 }]);
  const c = rb.add([{ len: 3 }]);
  rb.use(b, 0);
  const s = snapshotSplit(mem, rb.cfg, { usedHistory: 0 });
  assert.equal(s.inflightExact, false);
  assert.deepEqual(s.chains.map((x) => x.head).sort(), [a, c].sort());
});

test('split: device next avail hint gives pending count and fetched flags; a stale hint is ignored', () => {
  const { mem, rb } = setup(8);
  for (let i = 0; i < 4; i++) rb.add([{ len: 1 }]);
  let s = snapshotSplit(mem, { ...rb.cfg, nextAvail: 1 });
  assert.equal(s.pendingCount, 3);
  assert.deepEqual(s.chains.map((c) => c.fetched), [true, false, false, false]);
  s = snapshotSplit(mem, { ...rb.cfg, nextAvail: 40000 });
  assert.equal(s.pendingCount, undefined);
});

// ---- hostile memory ----------------------------------------------------------------------------------------------

test('hostile: buffer outside every region -> unmapped, naming vring and descriptor; next chain still decoded', () => {
  const { mem, rb } = setup();
  const bad = rb.add([{ len: 16 }, { len: 64, addr: 0xdead_0000n, write: true }]);
  const good = rb.add([{ len: 32 }]);
  const s = snapshotSplit(mem, rb.cfg);
  assert.equal(s.chains.length, 2);
  const e = s.chains[0].error!;
  assert.ok(e instanceof RingError);
  assert.equal(e.code, 'unmapped');
  assert.equal(e.vring, 1);
  assert.equal(e.head, bad);
  assert.equal(e.desc, rb.chains.get(bad)!.descs[1]);
  assert.match(e.message, /^vring 1 chain \d+ desc \d+: address outside guest memory/);
  assert.equal(e.memory?.code, 'unmapped');
  assert.equal(s.chains[1].head, good);
  assert.equal(s.chains[1].error, undefined);
  assertReadsInBounds(mem);
});

test('hostile: buffer straddling the region end -> unmapped (out-of-bounds), nothing read outside', () => {
  const { mem, rb } = setup();
  const end = mem.mappedRegions[0].gpaEnd;
  rb.add([{ len: 64, addr: end - 16n }]);
  const s = snapshotSplit(mem, rb.cfg);
  assert.equal(s.chains[0].error?.code, 'unmapped');
  assert.equal(s.chains[0].error?.memory?.code, 'out-of-bounds');
  assertReadsInBounds(mem);
});

test('hostile: ring areas outside guest memory -> snapshot throws RingError unmapped', () => {
  const { mem, rb } = setup();
  for (const k of ['desc', 'avail', 'used'] as const) {
    const cfg = { ...rb.cfg, [k]: 0x1234_0000n };
    assert.throws(() => snapshotSplit(mem, cfg), (e: unknown) => e instanceof RingError && e.code === 'unmapped' && e.vring === 1);
  }
  // Descriptor table running off the end of the region.
  const end = mem.mappedRegions[0].uvaEnd;
  assert.throws(() => snapshotSplit(mem, { ...rb.cfg, desc: end - 64n }), (e: unknown) => e instanceof RingError && e.code === 'unmapped');
  assertReadsInBounds(mem);
});

test('hostile: length overflow (addr + len past 2^64, chain total past 2^32)', () => {
  const { mem, rb } = setup();
  rb.add([{ len: 0x100, addr: 0xffff_ffff_ffff_ff80n }]);
  const big = GPA_BASE;
  const h = rb.build([{ len: 1 }, { len: 1 }]);
  const ids = rb.chains.get(h)!.descs;
  rb.setDesc(ids[0], { addr: big, len: 0xffff_fff0, flags: DESC_F_NEXT, next: ids[1] });
  rb.setDesc(ids[1], { addr: big, len: 0x20, flags: 0, next: 0 });
  rb.offer(h);
  const s = snapshotSplit(mem, rb.cfg, { checkBuffers: false });
  assert.deepEqual(errorCodes(s), ['len-overflow', 'len-overflow']);
  assert.match(s.errors[1].message, /exceeds 2\^32-1/);
});

test('hostile: descriptor loops (self, two-cycle, long cycle) -> loop with the descriptor index', () => {
  const { mem, rb } = setup(8);
  const addr = GPA_BASE;
  rb.setDesc(0, { addr, len: 1, flags: DESC_F_NEXT, next: 0 });
  rb.setDesc(1, { addr, len: 1, flags: DESC_F_NEXT, next: 2 });
  rb.setDesc(2, { addr, len: 1, flags: DESC_F_NEXT, next: 1 });
  for (let i = 3; i < 8; i++) rb.setDesc(i, { addr, len: 1, flags: DESC_F_NEXT, next: i === 7 ? 4 : i + 1 });
  rb.offer(0); rb.offer(1); rb.offer(3);
  const s = snapshotSplit(mem, rb.cfg);
  assert.deepEqual(errorCodes(s), ['loop', 'loop', 'loop']);
  assert.deepEqual(s.errors.map((e) => e.desc), [0, 1, 4]);
  assert.deepEqual(s.chains.map((c) => c.descs.length), [1, 2, 5]);
});

test('hostile: head or next index out of range', () => {
  const { mem, rb } = setup(8);
  rb.setDesc(0, { addr: GPA_BASE, len: 1, flags: DESC_F_NEXT, next: 8 });
  rb.offer(0);
  rb.offer(200); // head out of range
  const s = snapshotSplit(mem, rb.cfg);
  assert.deepEqual(errorCodes(s), ['desc-index-out-of-range', 'desc-index-out-of-range']);
  assert.match(s.errors[0].message, /next 8 >= ring size 8/);
  assert.equal(s.errors[1].head, 200);
});

test('hostile: nested indirect, indirect with NEXT, invalid indirect lengths, indirect not negotiated', () => {
  const { mem, rb } = setup(8);
  const t = rb.arena.alloc(64);
  rb.arena.desc(t, { addr: t, len: 32, flags: DESC_F_INDIRECT, next: 0 }); // nested
  rb.setDesc(0, { addr: t, len: 32, flags: DESC_F_INDIRECT, next: 0 });
  rb.setDesc(1, { addr: t, len: 32, flags: DESC_F_INDIRECT | DESC_F_NEXT, next: 2 });
  rb.setDesc(2, { addr: t, len: 0, flags: DESC_F_INDIRECT, next: 0 });
  rb.setDesc(3, { addr: t, len: 17, flags: DESC_F_INDIRECT, next: 0 });
  rb.setDesc(4, { addr: t, len: 0x10_0010, flags: DESC_F_INDIRECT, next: 0 });
  rb.setDesc(5, { addr: 0xbad0_0000n, len: 32, flags: DESC_F_INDIRECT, next: 0 });
  for (let i = 0; i < 6; i++) rb.offer(i);
  const s = snapshotSplit(mem, rb.cfg);
  assert.deepEqual(errorCodes(s), ['nested-indirect', 'indirect-with-next', 'indirect-len-invalid', 'indirect-len-invalid', 'indirect-len-invalid', 'unmapped']);
  assert.equal(s.errors[0].where.indirect, true);
  assert.match(s.errors[0].message, /indirect desc 0/);
  const s2 = snapshotSplit(mem, { ...rb.cfg, indirect: false });
  assert.equal(s2.errors[0].code, 'indirect-not-negotiated');
  assertReadsInBounds(mem);
});

test('hostile: avail index more than the ring size ahead of used -> idx-jump, bounded decode', () => {
  const { mem, rb } = setup(8);
  rb.add([{ len: 1 }]);
  rb.setAvailIdx(9);
  const s = snapshotSplit(mem, rb.cfg);
  assert.ok(errorCodes(s).includes('idx-jump'));
  assert.ok(s.chains.length <= 8);
  assert.equal(s.inflightExact, false);
});

test('hostile: used id out of range, write-before-read', () => {
  const { mem, rb } = setup(8);
  rb.add([{ len: 4, write: true }, { len: 4 }]);
  rb.setUsedEntry(0, 999, 4);
  rb.setUsedIdx(1);
  const s = snapshotSplit(mem, rb.cfg);
  assert.ok(errorCodes(s).includes('used-id-out-of-range'));
  assert.equal(s.chains.length, 1); // avail 1 - used 1 = nothing in flight, one used element
  const s2 = snapshotSplit(mem, { ...rb.cfg });
  assert.equal(s2.chains[0].error?.code, 'used-id-out-of-range');
  rb.setUsedIdx(0);
  const s3 = snapshotSplit(mem, rb.cfg);
  assert.equal(s3.chains[0].error?.code, 'write-before-read');
  assert.equal(s3.chains[0].descs.length, 2); // not fatal: the chain is decoded in full
});

test('hostile: split ring size not a power of two, zero, or above 32768 -> bad-ring-size', () => {
  const { mem, rb } = setup(8);
  for (const num of [3, 0, 6, 65536, 32769, -1]) {
    assert.throws(() => snapshotSplit(mem, { ...rb.cfg, num }), (e: unknown) => e instanceof RingError && e.code === 'bad-ring-size' && /vring 1/.test(e.message));
  }
});

test('hostile: decode budget bounds the work of one snapshot', () => {
  const { mem, rb } = setup(16);
  for (let i = 0; i < 8; i++) rb.add([{ len: 1 }, { len: 1 }]);
  const s = snapshotSplit(mem, rb.cfg, { budget: 5 });
  assert.ok(errorCodes(s).includes('budget-exhausted'));
  assert.equal(s.chains.length, 8);
});
