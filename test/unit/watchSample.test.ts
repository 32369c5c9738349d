// RingWatcher sampling: at high rates only the newest entries are decoded per poll, the rest are counted, no false alarms.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RingWatcher, type WatchEvent } from '../../core/virtio/watch';
import { SplitRingBuilder, makeMemory } from '../helpers/ringBuilder';
import { paceDelay } from '../../core/session/rings';
import * as P from '../helpers/ringPackets';

test('more entries than the sample since the last poll: the newest are decoded, the rest counted as skipped', () => {
  const mem = makeMemory();
  const ring = new SplitRingBuilder(mem, 64);
  const events: WatchEvent[] = [];
  const w = new RingWatcher({ memory: mem, ring: ring.cfg, device: 'blk', features: 1n << 32n, sample: 4 });
  w.on((e) => events.push(e));
  w.poll(); // synchronise with the empty ring
  // 40 requests offered and completed between two polls, in order.
  for (let i = 0; i < 40; i++) {
    const head = ring.add([{ len: 16, data: P.blkHdr(0, BigInt(8 * i)) }, { len: 512, write: true }, { len: 1, write: true }]);
    ring.use(head, 513, new Uint8Array(513));
  }
  events.length = 0;
  w.poll();
  const skipped = events.filter((e) => e.kind === 'skipped');
  assert.equal(skipped.length, 1);
  assert.deepEqual(skipped[0].kind === 'skipped' && [skipped[0].avail, skipped[0].used], [36, 36]);
  const used = events.filter((e) => e.kind === 'used');
  assert.equal(events.filter((e) => e.kind === 'avail').length, 4);
  assert.equal(used.length, 4, 'only the newest 4 completions decoded');
  assert.deepEqual(used.map((e) => e.kind === 'used' && Number((e.payload as { sector: bigint }).sector)), [288, 296, 304, 312], 'the newest ones, in order');
  assert.equal(events.filter((e) => e.kind === 'error').length, 0, 'sampling raises no index-jump or unknown-id errors');
  // Back to a low rate: everything is reported again, and in-flight tracking resumes.
  events.length = 0;
  const head = ring.add([{ len: 16, data: P.blkHdr(1, 4096n) }, { len: 512 }, { len: 1, write: true }]);
  w.poll();
  assert.equal(events.filter((e) => e.kind === 'avail').length, 1);
  assert.equal(w.inflight().length, 1);
  ring.use(head, 1, new Uint8Array([0]));
  events.length = 0;
  w.poll();
  const done = events.find((e) => e.kind === 'used');
  assert.ok(done && done.kind === 'used' && done.latencyMs !== undefined, 'a tracked completion has its latency');
  assert.equal(events.filter((e) => e.kind === 'skipped').length, 0);
});

test('pacing: the delay before the next poll comes from the owner, given the measured cost of the last poll', () => {
  const mem = makeMemory();
  const ring = new SplitRingBuilder(mem, 64);
  const timers: number[] = [];
  const fns: (() => void)[] = [];
  let clock = 0;
  const seen: [number, number][] = [];
  const w = new RingWatcher({
    memory: mem, ring: ring.cfg, device: 'blk', features: 1n << 32n, intervalMs: 10,
    scheduler: { setTimeout: (fn, ms) => { timers.push(ms); fns.push(fn); return fns.length; }, clearTimeout: () => undefined },
    // Each reading of the clock advances it 3 ms: a poll "costs" 3 ms.
    monotonic: () => (clock += 3),
    pace: (spent, interval) => { seen.push([spent, interval]); return spent * 20; },
  });
  w.start();
  assert.deepEqual(timers, [10], 'the first poll comes after the interval');
  fns.shift()!();
  assert.deepEqual(seen, [[3, 10]], 'pace got the measured cost and the interval');
  assert.deepEqual(timers, [10, 60], 'and its answer is the next delay');
  w.stop();
});

test('paceDelay: idle rings are polled at the configured rate, busy ones within the CPU budget, never rarer than 1 Hz', () => {
  assert.equal(paceDelay(0.05, 10, 0.02, 1), 10, 'a cheap poll keeps the interval');
  assert.equal(paceDelay(1, 10, 0.02, 1), 49, '1 ms of work within 2% of a core: one poll per 50 ms');
  assert.equal(paceDelay(1, 10, 0.02, 2), 99, 'two rings share the budget');
  assert.equal(paceDelay(50, 10, 0.02, 1), 1000, 'at most a second between polls');
  assert.equal(paceDelay(50, 2000, 0.02, 1), 2000, 'a slower configured rate stays');
  assert.equal(paceDelay(5, 10, 1, 1), 10, 'a budget of a whole core does not pace');
});
