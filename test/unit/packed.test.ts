// Unit tests for the packed-ring decoder: wrap counters, chains, indirect tables, event suppression, hostile rings.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { snapshotPacked, inferPacked } from '../../core/virtio/packed';
import { DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, DescTable, PACKED_DESC_F_AVAIL, PACKED_DESC_F_USED, RingError } from '../../core/virtio/ring';
import { GPA_BASE, PackedRingBuilder, makeMemory } from '../helpers/ringBuilder';

function setup(num = 8) {
  const mem = makeMemory(1 << 20, { record: true });
  const rb = new PackedRingBuilder(mem, num, 3);
  return { mem, rb };
}
const A = PACKED_DESC_F_AVAIL, U = PACKED_DESC_F_USED;

function assertReadsInBounds(mem: ReturnType<typeof makeMemory>): void {
  const size = mem.bytesOf(0).byteLength;
  for (const a of mem.log) assert.ok(a.offset >= 0 && a.offset + a.len <= size, `access ${a.offset}+${a.len} outside region`);
}

test('packed: fresh ring is empty; chains offered show up with ids, slots and totals', () => {
  const { mem, rb } = setup();
  let s = snapshotPacked(mem, rb.cfg);
  assert.deepEqual([s.driver, s.device, s.chains.length, s.used.length, s.errors.length], [{ next: 0, wrap: true }, { usedNext: 0, usedWrap: true }, 0, 0, 0]);
  const a = rb.add([{ len: 16 }, { len: 512, write: true }, { len: 1, write: true }]);
  const b = rb.add([{ len: 60 }]);
  s = snapshotPacked(mem, rb.cfg);
  assert.equal(s.kind, 'packed');
  assert.equal(s.vring, 3);
  assert.deepEqual(s.driver, { next: 4, wrap: true });
  assert.deepEqual(s.errors, []);
  assert.equal(s.inflightCount, 2);
  assert.equal(s.inflightExact, false); // multi-slot chains: stale tails possible once some are used
  assert.deepEqual(s.chains.map((c) => [c.head, c.slot, c.slots, c.readable, c.writable, c.state]), [[a, 0, 3, 16, 513, 'inflight'], [b, 3, 1, 60, 0, 'inflight']]);
  assert.deepEqual(s.chains[0].descs.map((d) => [d.index, d.write, d.flags & (DESC_F_NEXT | DESC_F_WRITE)]), [[0, false, DESC_F_NEXT], [1, true, DESC_F_NEXT | DESC_F_WRITE], [2, true, DESC_F_WRITE]]);
  assertReadsInBounds(mem);
});

test('packed: buffer id taken from the last descriptor', () => {
  const { mem, rb } = setup();
  rb.add([{ len: 1 }, { len: 2 }], { id: 77, idOnlyInLast: true });
  const s = snapshotPacked(mem, rb.cfg);
  assert.equal(s.chains[0].head, 77);
});

test('packed: indirect descriptor carries the buffers in a table of packed descriptors', () => {
  const { mem, rb } = setup();
  const id = rb.add([{ len: 16 }, { len: 4096 }, { len: 1, write: true }], { indirect: true });
  const s = snapshotPacked(mem, rb.cfg);
  const c = s.chains[0];
  assert.equal(c.head, id);
  assert.equal(c.slots, 1);
  assert.equal(c.indirect?.entries, 3);
  assert.deepEqual(c.descs.map((d) => [d.index, d.len, d.write, d.fromIndirect]), [[0, 16, false, true], [1, 4096, false, true], [2, 1, true, true]]);
});

test('packed: used elements, in-order completion, wrap counters across several laps (single-slot chains: exact)', () => {
  const { mem, rb } = setup(5);
  const live: number[] = [];
  for (let round = 0; round < 17; round++) {
    live.push(round % 2 ? rb.add([{ len: 10 }, { len: 1, write: true }], { indirect: true }) : rb.add([{ len: 3 }]));
    if (live.length > 2) rb.use(live.shift()!, 7);
    const s = snapshotPacked(mem, rb.cfg);
    assert.deepEqual(s.driver, { next: rb.next, wrap: rb.wrap }, `round ${round}`);
    assert.deepEqual(s.device, { usedNext: rb.usedNext, usedWrap: rb.usedWrap }, `round ${round}`);
    assert.deepEqual(s.chains.map((c) => c.head), live, `round ${round}`);
    assert.equal(s.inflightExact, true, `round ${round}`);
    assert.deepEqual(s.errors, [], `round ${round}`);
    if (round > 2) assert.ok(s.used.length > 0);
  }
});

test('packed: multi-slot chains over several laps: driver position exact, every live chain found', () => {
  const { mem, rb } = setup(7);
  const live: number[] = [];
  let id = 100;
  for (let round = 0; round < 20; round++) {
    const len = 1 + (round % 3);
    live.push(rb.add(Array.from({ length: len }, (_, i) => ({ len: 10 + i })), { id: id++ }));
    if (live.length > 1) rb.use(live.shift()!, 7);
    const s = snapshotPacked(mem, rb.cfg);
    assert.deepEqual(s.driver, { next: rb.next, wrap: rb.wrap }, `round ${round}`);
    const heads = s.chains.map((c) => c.head);
    for (const h of live) assert.ok(heads.includes(h), `round ${round}: ${h} in ${heads}`);
    assert.deepEqual(s.errors, [], `round ${round}`);
  }
});

test('packed: chain crossing the end of the ring flips the wrap counter', () => {
  const { mem, rb } = setup(4);
  const a = rb.add([{ len: 1 }, { len: 1 }, { len: 1 }], { id: 1 });
  rb.use(a, 0);
  const b = rb.add([{ len: 1 }, { len: 2 }, { len: 3 }], { id: 2 }); // slots 3, 0, 1
  const s = snapshotPacked(mem, rb.cfg);
  assert.deepEqual(s.driver, { next: 2, wrap: false });
  const c = s.chains.find((x) => x.head === b)!;
  assert.deepEqual([c.slot, c.slots, c.readable], [3, 3, 6]);
  // The used element at slot 0 was overwritten by b: slot 2 (a's stale tail) cannot be told from a chain in flight.
  assert.deepEqual(s.used, []);
  assert.deepEqual(s.chains.map((x) => x.head), [a, b]);
  assert.equal(s.inflightExact, false);
});

test('packed: stale tail after a used multi-slot chain is flagged, not silently counted', () => {
  const { mem, rb } = setup(8);
  const a = rb.add([{ len: 1 }, { len: 1 }, { len: 1 }]);
  const b = rb.add([{ len: 1 }]);
  rb.use(a, 5);
  const s = snapshotPacked(mem, rb.cfg);
  assert.deepEqual(s.used.map((u) => [u.slot, u.id, u.len, u.wrap]), [[0, a, 5, true]]);
  const real = s.chains.filter((c) => !c.maybeStale).map((c) => c.head);
  assert.deepEqual(real, [b]);
  assert.equal(s.inflightExact, false);
  // With the chain known (as the watcher knows it), the used element carries it.
  const known = new Map([[a, { head: a, descs: [], readable: 3, writable: 0, state: 'inflight' as const }]]);
  const s2 = snapshotPacked(mem, rb.cfg, { known });
  assert.equal(s2.used[0].chain?.state, 'used');
  assert.equal(s2.used[0].chain?.usedLen, 5);
});

test('packed: event suppression areas (driver at avail address, device at used address)', () => {
  const { mem, rb } = setup();
  rb.setDriverEvent(0x8000 | 5, 2);
  rb.setDeviceEvent(3, 1);
  const s = snapshotPacked(mem, rb.cfg);
  assert.deepEqual(s.driverEvent, { offWrap: 0x8005, off: 5, wrap: true, flags: 2, mode: 'desc' });
  assert.deepEqual(s.deviceEvent, { offWrap: 3, off: 3, wrap: false, flags: 1, mode: 'disable' });
});

test('packed: device next-avail hint gives pending chains', () => {
  const { mem, rb } = setup();
  rb.add([{ len: 1 }]); rb.add([{ len: 1 }, { len: 1 }]); rb.add([{ len: 1 }]);
  const s = snapshotPacked(mem, { ...rb.cfg, nextAvail: 1, nextAvailWrap: true });
  assert.equal(s.pendingCount, 2);
  assert.deepEqual(s.chains.map((c) => c.fetched), [true, false, false]);
  const stale = snapshotPacked(mem, { ...rb.cfg, nextAvail: 6, nextAvailWrap: false });
  assert.equal(stale.pendingCount, undefined);
});

test('packed ring size need not be a power of two; zero or > 32768 is bad-ring-size', () => {
  const { mem, rb } = setup(3);
  rb.add([{ len: 1 }]);
  assert.equal(snapshotPacked(mem, rb.cfg).chains.length, 1);
  for (const num of [0, 32769]) {
    assert.throws(() => snapshotPacked(mem, { ...rb.cfg, num }), (e: unknown) => e instanceof RingError && e.code === 'bad-ring-size');
  }
});

// ---- hostile ----------------------------------------------------------------------------------------------------

test('hostile packed: NEXT on every descriptor -> chain-too-long / chain-incomplete, bounded', () => {
  const { mem, rb } = setup(4);
  for (let s = 0; s < 4; s++) rb.writeDesc(s, { addr: GPA_BASE, len: 1, id: s, flags: DESC_F_NEXT | A });
  const s = snapshotPacked(mem, rb.cfg);
  assert.equal(s.chains.length, 1);
  assert.equal(s.chains[0].error?.code, 'chain-too-long');
  assert.equal(s.chains[0].descs.length, 4);
  // A chain running into the driver's position.
  const { mem: m2, rb: r2 } = setup(8);
  r2.writeDesc(1, { addr: GPA_BASE, len: 1, id: 0, flags: DESC_F_NEXT | A });
  r2.writeDesc(0, { addr: GPA_BASE, len: 1, id: 0, flags: DESC_F_NEXT | A });
  const s2 = snapshotPacked(m2, r2.cfg);
  assert.equal(s2.chains[0].error?.code, 'chain-incomplete');
});

test('hostile packed: nested indirect, indirect with NEXT, invalid indirect length, unmapped buffer and table', () => {
  const { mem, rb } = setup(8);
  const t = rb.arena.alloc(32);
  rb.arena.u64(t, t); rb.arena.u32(t + 8n, 16); rb.arena.u16(t + 14n, DESC_F_INDIRECT); // packed layout: flags at 14
  const slots: [bigint, number, number][] = [
    [t, 32, DESC_F_INDIRECT], // nested inside
    [t, 32, DESC_F_INDIRECT | DESC_F_NEXT], // indirect with next
    [t, 24, DESC_F_INDIRECT], // len not a multiple of 16
    [0xbad0_0000n, 32, DESC_F_INDIRECT], // table unmapped
    [0xbad0_0000n, 8, 0], // buffer unmapped
    [0xffff_ffff_ffff_fff0n, 0x20, 0], // addr + len > 2^64
  ];
  // Write as one run of single-slot chains (the one with NEXT swallows the next slot).
  slots.forEach(([addr, len, flags], i) => rb.writeDesc(i, { addr, len, id: i, flags: flags | A }));
  const s = snapshotPacked(mem, rb.cfg);
  assert.deepEqual(s.errors.map((e) => e.code), ['nested-indirect', 'indirect-with-next', 'indirect-len-invalid', 'unmapped', 'unmapped', 'len-overflow']);
  assert.ok(s.errors.every((e) => e instanceof RingError && e.vring === 3));
  assert.match(s.errors[0].message, /^vring 3 indirect desc 0: nested indirect table/);
  assertReadsInBounds(mem);
});

test('hostile packed: descriptor ring or event areas unmapped -> RingError unmapped', () => {
  const { mem, rb } = setup(8);
  for (const k of ['desc', 'avail', 'used'] as const) {
    assert.throws(() => snapshotPacked(mem, { ...rb.cfg, [k]: 0x42n }), (e: unknown) => e instanceof RingError && e.code === 'unmapped');
  }
});

test('hostile packed: AVAIL bits that fit no driver position -> bad-wrap, still bounded', () => {
  const { mem, rb } = setup(8);
  for (let s = 0; s < 8; s++) rb.writeDesc(s, { addr: GPA_BASE, len: 1, id: s, flags: s % 2 ? A : U });
  const s = snapshotPacked(mem, rb.cfg);
  assert.ok(s.errors.some((e) => e.code === 'bad-wrap'));
  assert.ok(s.chains.length <= 8);
});

test('inferPacked: positions from flags', () => {
  const { mem, rb } = setup(4);
  rb.add([{ len: 1 }]); rb.add([{ len: 1 }]);
  const t = new DescTable(mem.readGpa(rb.descGpa, 64));
  assert.deepEqual(inferPacked(t, 4), { driverNext: 2, driverWrap: true, usedNext: 0, usedWrap: true, windowStart: 4, changes: 1 });
});
