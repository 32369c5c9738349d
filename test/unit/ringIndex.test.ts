// Ring indices are read through one aligned 8-byte window (a 2-byte pread can tear), with a fallback at memory edges.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BufferMemory } from '../../core/memory/bufferMemory';
import { WalkContext } from '../../core/virtio/ring';
import { readIndex16, readSplitIndices } from '../../core/virtio/split';

test('split indices come from aligned 8-byte reads', () => {
  const bytes = new Uint8Array(4096);
  const mem = new BufferMemory([{ guestPhysAddr: 0x1000n, userspaceAddr: 0x7000_0000n, bytes }], { record: true });
  const avail = 0x7000_0402n, used = 0x7000_0806n; // 2- and 6-aligned, idx at +2
  new DataView(bytes.buffer).setUint16(0x404, 0x1234, true);
  new DataView(bytes.buffer).setUint16(0x808, 0xff00, true);
  const ctx = new WalkContext(mem, { index: 0, num: 8, desc: 0x7000_0000n, avail, used });
  mem.clearLog();
  assert.deepEqual(readSplitIndices(ctx), { availIdx: 0x1234, usedIdx: 0xff00 });
  assert.deepEqual(mem.log.map((a) => [a.len, a.offset % 8]), [[8, 0], [8, 0]], 'each index read as one aligned 8-byte access');
});

test('at the very end of guest memory the window would leave it: two agreeing 2-byte reads instead', () => {
  const bytes = new Uint8Array(4096);
  const mem = new BufferMemory([{ guestPhysAddr: 0x1000n, userspaceAddr: 0x7000_0000n, bytes }], { record: true });
  new DataView(bytes.buffer).setUint16(4094, 0xbeef, true);
  const ctx = new WalkContext(mem, { index: 0, num: 8, desc: 0x7000_0000n, avail: 0x7000_0000n, used: 0x7000_0000n });
  mem.clearLog();
  // 4094 is in the window [4088, 4096): still inside. Shrink memory so the window crosses the end.
  assert.equal(readIndex16(ctx, 0x7000_0000n + 4094n, 'idx'), 0xbeef);
  const small = new BufferMemory([{ guestPhysAddr: 0x1000n, userspaceAddr: 0x7000_0000n, bytes: bytes.subarray(0, 4090) }], { record: true });
  new DataView(bytes.buffer).setUint16(4088, 0xcafe, true);
  const ctx2 = new WalkContext(small, { index: 0, num: 8, desc: 0x7000_0000n, avail: 0x7000_0000n, used: 0x7000_0000n });
  small.clearLog();
  assert.equal(readIndex16(ctx2, 0x7000_0000n + 4088n, 'idx'), 0xcafe);
  assert.ok(small.log.length >= 2 && small.log.every((a) => a.len === 2), 'fallback reads agree twice');
});
