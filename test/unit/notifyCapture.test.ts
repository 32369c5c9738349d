// Exact ring capture at kick/call time (relay worker side) over a real memfd, decoded on the host side from the bytes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { FfiNative } from '../../core/node/ffi';
import { NotifyCapture } from '../../core/proxy/notifyCapture';
import { capturedMemory } from '../../core/session/rings';
import { decodePayload } from '../../core/virtio/payload';
import { encodeMessage } from '../../core/protocol/codec';
import { SplitRingBuilder, makeMemory, GPA_BASE, UVA_DELTA } from '../helpers/ringBuilder';
import { blkHdr } from '../helpers/ringPackets';
import type { BlkPayload } from '../../core/virtio/blk';

const SIZE = 1 << 20;
const FEATURES = (1n << 32n) | (1n << 28n); // VERSION_1, INDIRECT_DESC

function rig() {
  const native = new FfiNative();
  const mem = makeMemory(SIZE);
  const ring = new SplitRingBuilder(mem, 16, 0);
  const memfd = native.memfd('guest', SIZE);
  const sync = () => { const b = mem.bytesOf(0); fs.writeSync(memfd, b, 0, b.byteLength, 0); };
  const cap = new NotifyCapture(native);
  const send = (code: number, payload: Record<string, unknown>, fds: number[] = []) =>
    cap.observe(encodeMessage({ channel: 'main', code, payload }), fds);
  send(2, { features: FEATURES });
  send(5, { nregions: 1, padding: 0, regions: [{ guestPhysAddr: GPA_BASE, memorySize: BigInt(SIZE), userspaceAddr: GPA_BASE + UVA_DELTA, mmapOffset: 0n }] }, [memfd]);
  const c = ring.cfg;
  send(8, { index: 0, num: 16 });
  send(9, { index: 0, flags: 0, desc: c.desc, used: c.used, avail: c.avail, log: 0n });
  send(10, { index: 0, num: 0 });
  return { native, mem, ring, memfd, sync, cap };
}

test('a kick captures the offered chain with its readable bytes; a call captures it completed with its status', () => {
  const { native, ring, memfd, sync, cap } = rig();
  const data = new TextEncoder().encode('captured at kick'.padEnd(512, '.'));
  const head = ring.add([{ len: 16, data: blkHdr(1, 2048n) }, { len: 512, data }, { len: 1, write: true }], { indirect: true });
  sync();
  const k = cap.onKick(0, 1)!;
  assert.equal(k.chains.length, 1);
  assert.equal(k.chains[0].head, head);
  assert.equal(k.chains[0].state, 'inflight');
  assert.deepEqual(k.chains[0].descs.map((d) => [d.len, d.write]), [[16, false], [512, false], [1, true]]);
  const out = decodePayload(capturedMemory(k.bytes), k.chains[0], 0, { device: 'blk', features: FEATURES }) as BlkPayload;
  assert.equal(out.type, 'OUT');
  assert.equal(out.sector, 2048n);
  assert.equal(out.len, 512);
  assert.equal(Buffer.from(out.preview!.replace(/[^0-9a-f]/g, ''), 'hex').toString(), 'captured at kick');
  // The device completes it; then the driver recycles the indirect table (which a late poll would have read).
  ring.use(head, 1, new Uint8Array([0]));
  sync();
  const c = cap.onCall(0, 2)!;
  assert.equal(c.chains.length, 1);
  assert.equal(c.chains[0].state, 'used');
  assert.equal(c.chains[0].usedLen, 1);
  const done = decodePayload(capturedMemory(c.bytes), c.chains[0], 0, { device: 'blk', features: FEATURES }) as BlkPayload;
  assert.equal(done.status, 'OK');
  assert.equal(done.sector, 2048n);
  // Nothing new: no chains.
  assert.equal(cap.onKick(0, 3)!.chains.length, 0);
  cap.close();
  native.close(memfd);
  assert.equal(native.ledger.count, 0, 'the capture closed its dups of the memory fd');
  assert.deepEqual(native.ledger.violations, []);
});

test('entries offered without a kick are captured at the next kick; an index jump beyond the ring size is reported', () => {
  const { native, ring, memfd, sync, cap } = rig();
  for (let i = 0; i < 3; i++) ring.add([{ len: 16, data: blkHdr(0, BigInt(8 * i)) }, { len: 4096, write: true }, { len: 1, write: true }]);
  sync();
  const k = cap.onKick(0, 1)!;
  assert.deepEqual(k.chains.map((c) => c.availPos), [0, 1, 2]);
  ring.setAvailIdx(3 + 20);
  sync();
  const j = cap.onKick(0, 2)!;
  assert.match(j.note!, /moved by 20 \(> ring size 16\)/);
  assert.equal(j.chains.length, 16);
  cap.close();
  native.close(memfd);
  assert.equal(native.ledger.count, 0);
});

test('a replaced memory table is never read again; packed rings and unknown rings are left to the poller', () => {
  const { native, memfd, cap } = rig();
  assert.equal(native.ledger.count, 2, 'the memfd and the capture\'s dup');
  cap.observe(encodeMessage({ channel: 'main', code: 5, payload: { nregions: 0, padding: 0, regions: [] } }), []);
  assert.equal(native.ledger.count, 1, 'the dup of the replaced region is closed');
  assert.equal(cap.onKick(0, 1), undefined, 'no memory: nothing to capture');
  assert.equal(cap.onKick(5, 1), undefined, 'vring never configured');
  cap.observe(encodeMessage({ channel: 'main', code: 2, payload: { features: FEATURES | (1n << 34n) } }), []);
  assert.equal(cap.onKick(0, 1), undefined, 'packed ring: polled instead');
  cap.close();
  native.close(memfd);
  assert.equal(native.ledger.count, 0);
});
