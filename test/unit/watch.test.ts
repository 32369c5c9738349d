// Unit tests for RingWatcher: injected timer and clock, new avail/used events, in-flight tracking, resync, read-only.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RingWatcher, type Scheduler, type WatchEvent } from '../../core/virtio/watch';
import { BufferMemory } from '../../core/memory/bufferMemory';
import { SplitRingBuilder, PackedRingBuilder, makeMemory, GPA_BASE, UVA_DELTA } from '../helpers/ringBuilder';
import * as P from '../helpers/ringPackets';
import type { NetPayload } from '../../core/virtio/net';
import type { BlkPayload } from '../../core/virtio/blk';

class FakeScheduler implements Scheduler {
  pending = new Map<number, { fn: () => void; ms: number }>();
  private id = 0;
  setTimeout(fn: () => void, ms: number): unknown { this.pending.set(++this.id, { fn, ms }); return this.id; }
  clearTimeout(h: unknown): void { this.pending.delete(h as number); }
  /** Run the timers due now (one generation). */
  fire(): void {
    const due = [...this.pending.entries()];
    this.pending.clear();
    for (const [, t] of due) t.fn();
  }
}

function rig(mem: BufferMemory, ring: SplitRingBuilder | PackedRingBuilder, device: 'net' | 'blk' = 'blk') {
  const sched = new FakeScheduler();
  let now = 1000;
  const events: WatchEvent[] = [];
  const w = new RingWatcher({ memory: mem, ring: ring.cfg, device, features: 1n << 32n, scheduler: sched, now: () => now, intervalMs: 5 });
  w.on((e) => events.push(e));
  const tick = (ms = 5): WatchEvent[] => {
    now += ms;
    const before = events.length;
    const writes = mem.writes;
    sched.fire();
    assert.equal(mem.writes, writes, 'the watcher wrote guest memory');
    return events.slice(before);
  };
  return { w, sched, events, tick, advance: (ms: number) => { now += ms; } };
}

const kinds = (evs: WatchEvent[]): string[] => evs.map((e) => e.kind);

test('watch split: timer-driven polls report new avail and used entries with decoded chains and payloads', () => {
  const mem = makeMemory();
  const rb = new SplitRingBuilder(mem, 8, 0);
  const { w, sched, tick } = rig(mem, rb);
  w.start();
  assert.equal(sched.pending.size, 1);
  assert.equal([...sched.pending.values()][0].ms, 5);
  assert.deepEqual(kinds(tick()), ['resync']);
  assert.deepEqual(tick(), []);
  const a = rb.add([{ len: 16, data: P.blkHdr(1, 64n) }, { len: 512 }, { len: 1, write: true }]);
  const b = rb.add([{ len: 16, data: P.blkHdr(0, 8n) }, { len: 4096, write: true }, { len: 1, write: true }]);
  let evs = tick();
  assert.deepEqual(kinds(evs), ['avail', 'avail']);
  const e0 = evs[0] as Extract<WatchEvent, { kind: 'avail' }>;
  assert.equal(e0.chain.head, a);
  assert.equal(e0.pos, 0);
  assert.equal((e0.payload as BlkPayload).summary, 'OUT sector=64 len=512 (in flight)');
  assert.deepEqual(w.inflight().map((e) => e.head), [a, b]);
  rb.use(b, 4097, new Uint8Array([...new Uint8Array(4096), 0]));
  evs = tick(20);
  assert.deepEqual(kinds(evs), ['used']);
  const u = evs[0] as Extract<WatchEvent, { kind: 'used' }>;
  assert.deepEqual([u.id, u.len, u.latencyMs, u.chain?.state, (u.payload as BlkPayload).summary], [b, 4097, 20, 'used', 'IN sector=8 len=4096 status=OK']);
  // What is stuck: a was offered 20 ms ago and never used.
  assert.deepEqual(w.stuck(20).map((e) => e.head), [a]);
  assert.deepEqual(w.stuck(21), []);
  const snap = w.snapshot();
  assert.deepEqual(snap.tracked.map((e) => e.head), [a]);
  assert.equal(snap.chains[0].head, a);
  w.stop();
  assert.equal(sched.pending.size, 0);
  assert.deepEqual(w.stats, { polls: 4, avail: 2, used: 1, errors: 0, resyncs: 0 });
});

test('watch split: offer and completion between two polls, head reused, index wrap', () => {
  const mem = makeMemory();
  const rb = new SplitRingBuilder(mem, 4, 0, { startIdx: 65533 });
  const { w, tick } = rig(mem, rb);
  w.start();
  tick();
  const seen: number[] = [];
  for (let round = 0; round < 10; round++) {
    const h = rb.add([{ len: 16, data: P.blkHdr(1, BigInt(round)) }, { len: 1, write: true }]);
    rb.use(h, 1, new Uint8Array([0]));
    const h2 = rb.add([{ len: 16, data: P.blkHdr(0, BigInt(round)) }, { len: 1, write: true }]);
    const evs = tick();
    assert.deepEqual(kinds(evs), ['avail', 'avail', 'used'], `round ${round}`);
    seen.push(h);
    rb.use(h2, 1, new Uint8Array([0]));
    assert.deepEqual(kinds(tick()), ['used']);
    assert.equal(w.inflight().length, 0);
  }
  assert.equal(w.stats.errors, 0);
});

test('watch split: buffers in flight when watching starts are seeded; idx jump and unknown used id are reported', () => {
  const mem = makeMemory();
  const rb = new SplitRingBuilder(mem, 8, 2);
  const a = rb.add([{ len: 8 }]);
  const { w, tick, advance } = rig(mem, rb, 'net');
  w.start();
  const evs = tick();
  assert.deepEqual(kinds(evs), ['resync']);
  assert.deepEqual(w.inflight().map((e) => [e.head, e.seeded]), [[a, true]]);
  advance(100);
  assert.deepEqual(w.stuck(100).map((e) => e.head), [a]);
  rb.use(a, 0);
  const u = tick()[0] as Extract<WatchEvent, { kind: 'used' }>;
  assert.equal(u.latencyMs, undefined); // offer time unknown
  // Unknown used id.
  rb.setUsedEntry(rb.usedIdx, 5, 0);
  rb.setUsedIdx(rb.usedIdx + 1);
  rb.setAvailIdx(rb.availIdx + 1);
  rb.setAvailEntry(rb.availIdx - 1, 6);
  const e2 = tick();
  assert.deepEqual(kinds(e2), ['avail', 'error', 'used', 'resync']);
  assert.equal((e2[1] as Extract<WatchEvent, { kind: 'error' }>).error.code, 'unknown-used-id');
  // avail.idx - used.idx says nothing is in flight: the entry for head 6 (completed under id 5) is dropped.
  assert.deepEqual(w.inflight(), []);
  // Avail index jumping by more than the ring size.
  rb.setAvailIdx(rb.availIdx + 9);
  const e3 = tick();
  assert.deepEqual(kinds(e3), ['error', 'resync']);
  assert.equal((e3[0] as Extract<WatchEvent, { kind: 'error' }>).error.code, 'idx-jump');
  assert.equal(w.stats.resyncs, 2);
});

test('watch: ring not mapped yet -> error events, polling continues, syncs once memory appears', () => {
  const bytes = new Uint8Array(1 << 20);
  const mem = new BufferMemory([]);
  const full = new BufferMemory([{ guestPhysAddr: GPA_BASE, userspaceAddr: GPA_BASE + UVA_DELTA, bytes }]);
  const rb = new SplitRingBuilder(full, 8, 0);
  rb.add([{ len: 4 }]);
  const { w, sched, tick } = rig(mem, rb);
  w.start();
  const e1 = tick();
  assert.deepEqual(kinds(e1), ['error']);
  assert.equal((e1[0] as Extract<WatchEvent, { kind: 'error' }>).error.code, 'unmapped');
  assert.equal(sched.pending.size, 1);
  mem.update([{ guestPhysAddr: GPA_BASE, userspaceAddr: GPA_BASE + UVA_DELTA, bytes }]);
  assert.deepEqual(kinds(tick()), ['resync']);
  assert.equal(w.inflight().length, 1);
  w.setInterval(50);
  tick();
  assert.equal([...sched.pending.values()][0].ms, 50);
});

test('watch: a throwing listener does not stop the watcher', () => {
  const mem = makeMemory();
  const rb = new SplitRingBuilder(mem, 8, 0);
  const { w, tick } = rig(mem, rb);
  w.on(() => { throw new Error('listener bug'); });
  w.start();
  tick();
  rb.add([{ len: 4 }]);
  assert.deepEqual(kinds(tick()), ['avail']);
  assert.match(String(w.lastListenerError), /listener bug/);
});

/** mulberry32: small seeded PRNG. */
function prng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) / 4294967296) * n | 0;
  };
}

/** Random driver/device operations on a packed ring; `poll` decides when the watcher looks. */
function packedWorkload(seed: number, steps: number, poll: (step: number) => boolean, check: (step: number, live: Map<number, number>, w: RingWatcher) => void) {
  const mem = makeMemory();
  const rb = new PackedRingBuilder(mem, 7, 1);
  const r = rig(mem, rb, 'net');
  r.w.start();
  r.tick();
  const rnd = prng(seed);
  const live = new Map<number, number>(); // id -> slots
  let freeSlots = 7;
  const use = (id: number): void => { rb.use(id, 0); freeSlots += live.get(id)!; live.delete(id); };
  for (let step = 0; step < steps; step++) {
    if (rnd(3) < 2 && freeSlots > 0) {
      const nb = 1 + rnd(Math.min(3, freeSlots));
      const indirect = rnd(4) === 0;
      const frame = P.withHdr(P.arpRequest('52:54:00:00:00:02', '10.0.0.2', `10.0.0.${100 + (step % 100)}`));
      const id = rb.add([{ len: frame.length, data: frame }, ...Array.from({ length: nb - 1 }, () => ({ len: 8 }))], { indirect });
      live.set(id, indirect ? 1 : nb);
      freeSlots -= indirect ? 1 : nb;
    } else if (live.size) {
      const ids = [...live.keys()];
      use(rnd(2) ? ids[0] : ids[rnd(ids.length)]); // oldest, or any (out of order)
    }
    if (poll(step)) { r.tick(); check(step, live, r.w); }
  }
  return { ...r, rb, live, use };
}

const sortNum = (xs: number[]): number[] => [...xs].sort((a, b) => a - b);

test('watch packed: watcher faster than the ring: every offer and completion seen, in-flight set exact after every step', () => {
  const { w, events } = packedWorkload(7, 400, () => true, (step, live, w) => {
    assert.deepEqual(sortNum(w.inflight().map((e) => e.head)), sortNum([...live.keys()]), `step ${step}`);
  });
  for (const e of events) {
    if (e.kind === 'avail') assert.match((e.payload as NetPayload).summary, /^ARP who-has 10\.0\.0\.\d+ tell 10\.0\.0\.2$/);
    assert.ok(e.kind !== 'error' && (e.kind !== 'resync' || e.reason === 'start'), JSON.stringify(e, (_, v) => (typeof v === 'bigint' ? String(v) : v)).slice(0, 300));
  }
  assert.ok(w.stats.used > 100, String(w.stats.used));
});

test('watch packed: sparse polling misses steps, resynchronises, and becomes exact again', () => {
  for (let seed = 1; seed <= 12; seed++) {
    const run = packedWorkload(seed, 300, (step) => step % 4 === 0, () => {});
    for (const id of [...run.live.keys()]) run.use(id);
    run.tick();
    // With completions missed out of order, the flags alone can leave phantoms (seeded, never with a latency).
    assert.ok(run.w.inflight().every((e) => e.seeded), `seed ${seed}`);
    // Completions seen afterwards move the used cursor past them: a lap of round trips clears them all.
    for (let k = 0; k < 7; k++) {
      const id = run.rb.add([{ len: 8 }]);
      run.tick();
      assert.ok(run.w.inflight().some((e) => e.head === id && !e.seeded), `seed ${seed} round ${k}`);
      run.rb.use(id, 0);
      run.tick();
    }
    assert.deepEqual(run.w.inflight(), [], `seed ${seed}`);
    assert.ok(run.events.every((e) => e.kind !== 'error' || e.error.code === 'unknown-used-id'), `seed ${seed}`);
  }
});

test('watch packed: offers completed between polls are caught up by a resync from the flags', () => {
  const mem = makeMemory();
  const rb = new PackedRingBuilder(mem, 8, 1);
  const { w, tick } = rig(mem, rb);
  w.start();
  tick();
  const a = rb.add([{ len: 16, data: P.blkHdr(1, 0n) }, { len: 1, write: true }]);
  rb.use(a, 1);
  const b = rb.add([{ len: 16, data: P.blkHdr(1, 1n) }]);
  const evs = tick();
  assert.ok(kinds(evs).includes('resync'), kinds(evs).join());
  // From flags alone, slot 1 (a's stale tail, same id as the used element before it) may still be in flight: flagged.
  assert.deepEqual(w.inflight().filter((e) => !e.chain.maybeStale).map((e) => [e.head, e.pos]), [[b, 2]]);
  rb.use(b, 1);
  const e2 = tick();
  assert.ok(kinds(e2).includes('used'), kinds(e2).join());
  assert.deepEqual(w.inflight(), []);
  const c = rb.add([{ len: 16, data: P.blkHdr(1, 2n) }]);
  assert.deepEqual(kinds(tick()), ['avail']);
  assert.deepEqual(w.inflight().map((e) => e.head), [c]);
});

test('watch split: a chain offered, completed and its descriptors reused between two polls is flagged recycled, not mis-decoded', () => {
  const mem = makeMemory();
  const rb = new SplitRingBuilder(mem, 4, 0);
  const { w, tick } = rig(mem, rb);
  w.start();
  tick();
  const a = rb.add([{ len: 16, data: P.blkHdr(1, 9000n) }, { len: 512 }, { len: 1, write: true }]); // descriptors 0, 1, 2
  rb.use(a, 1, new Uint8Array([0]));
  const b = rb.add([{ len: 16, data: P.blkHdr(0, 3000n) }, { len: 512, write: true }, { len: 1, write: true }]); // 3, 0, 1
  const evs = tick();
  assert.deepEqual(kinds(evs), ['avail', 'avail', 'used']);
  const [ea, eb, eu] = evs as [Extract<WatchEvent, { kind: 'avail' }>, Extract<WatchEvent, { kind: 'avail' }>, Extract<WatchEvent, { kind: 'used' }>];
  assert.deepEqual([ea.chain.head, ea.chain.recycled, ea.payload], [a, true, undefined]);
  assert.deepEqual([eb.chain.head, eb.chain.recycled, (eb.payload as BlkPayload).summary], [b, undefined, 'IN sector=3000 len=512 (in flight)']);
  assert.deepEqual([eu.id, eu.chain?.recycled, eu.payload], [a, true, undefined]);
  assert.deepEqual(w.inflight().map((e) => e.head), [b]);
});

test('watch: a completed chain the device only reads keeps what was decoded when it was offered; one it writes is decoded at completion', () => {
  const mem = makeMemory();
  const rb = new SplitRingBuilder(mem, 8, 1);
  const { w, tick } = rig(mem, rb, 'net');
  w.start();
  tick();
  const frame = P.withHdr(P.arpRequest('52:54:00:00:00:02', '10.0.0.2', '10.0.0.1'));
  const tx = rb.add([{ len: frame.length, data: frame }]);
  const offered = tick().find((e) => e.kind === 'avail') as Extract<WatchEvent, { kind: 'avail' }>;
  assert.equal((offered.payload as NetPayload).summary, 'ARP who-has 10.0.0.1 tell 10.0.0.2');
  // Completed, then the driver freed the pages and reused them before the next poll: zeros now.
  rb.use(tx, 0);
  const addr = Number(offered.chain.descs[0].addr - GPA_BASE);
  mem.bytesOf(0).fill(0, addr, addr + frame.length);
  const used = tick().find((e) => e.kind === 'used') as Extract<WatchEvent, { kind: 'used' }>;
  assert.equal((used.payload as NetPayload).summary, 'ARP who-has 10.0.0.1 tell 10.0.0.2', 'the frame as it was offered');
  // A buffer the device writes (RX, vring 0) is only meaningful once used: decoded then.
  const mem0 = makeMemory();
  const rb0 = new SplitRingBuilder(mem0, 8, 0);
  const r0 = rig(mem0, rb0, 'net');
  r0.w.start();
  r0.tick();
  const rx = rb0.add([{ len: 1526, write: true }]);
  r0.tick();
  rb0.use(rx, 12 + 42, new Uint8Array([...P.netHdr(12), ...P.arpReply('52:54:00:00:00:01', '10.0.0.1', '52:54:00:00:00:02', '10.0.0.2')]));
  const rxUsed = r0.tick().find((e) => e.kind === 'used') as Extract<WatchEvent, { kind: 'used' }>;
  assert.equal((rxUsed.payload as NetPayload).summary, 'ARP reply 10.0.0.1 is-at 52:54:00:00:00:01');
});
