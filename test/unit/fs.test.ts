// Unit tests for the virtio-fs payload decoder: FUSE requests and replies on synthetic rings, recognition without a device type, disagreements.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { snapshotRing } from '../../core/virtio/snapshot';
import type { FsPayload } from '../../core/virtio/fs';
import type { Payload } from '../../core/virtio/payload';
import { SplitRingBuilder, makeMemory } from '../helpers/ringBuilder';

/** fuse_in_header (len filled in by `request`) followed by the arguments. */
function request(opcode: number, unique: bigint, nodeid: bigint, args: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(40 + args.length);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, b.length, true); dv.setUint32(4, opcode, true);
  dv.setBigUint64(8, unique, true); dv.setBigUint64(16, nodeid, true);
  dv.setUint32(24, 1000, true); dv.setUint32(28, 1000, true); dv.setUint32(32, 42, true);
  b.set(args, 40);
  return b;
}
function reply(unique: bigint, error: number, result: Uint8Array = new Uint8Array(0)): Uint8Array {
  const b = new Uint8Array(16 + result.length);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, b.length, true); dv.setInt32(4, error, true); dv.setBigUint64(8, unique, true);
  b.set(result, 16);
  return b;
}
const cstr = (...s: string[]): Uint8Array => new Uint8Array(Buffer.from(s.map((x) => `${x}\0`).join('')));
function words(spec: [number, 'u32' | 'u64', number | bigint][], size: number): Uint8Array {
  const b = new Uint8Array(size);
  const dv = new DataView(b.buffer);
  for (const [o, k, v] of spec) if (k === 'u32') dv.setUint32(o, Number(v), true); else dv.setBigUint64(o, BigInt(v), true);
  return b;
}
const cat = (...p: Uint8Array[]): Uint8Array => { const o = new Uint8Array(p.reduce((n, x) => n + x.length, 0)); let k = 0; for (const x of p) { o.set(x, k); k += x.length; } return o; };
/** fuse_entry_out for nodeid with a fuse_attr of `size` and `mode`. */
const entryOut = (nodeid: bigint, size: bigint, mode: number): Uint8Array => words([[0, 'u64', nodeid], [40, 'u64', nodeid], [48, 'u64', size], [100, 'u32', mode]], 128);
const fsOf = (p: Payload | unknown): FsPayload => p as FsPayload;

function ring() {
  const mem = makeMemory(1 << 20);
  return { mem, rb: new SplitRingBuilder(mem, 16, 1) };
}

test('fs: INIT, LOOKUP, READ, WRITE, CREATE, RENAME in flight, then used with their replies', () => {
  const { mem, rb } = ring();
  const init = rb.add([{ len: 104, data: request(26, 2n, 0n, words([[0, 'u32', 7], [4, 'u32', 38], [8, 'u32', 131072], [12, 'u32', 0x3fffffb]], 64)) }, { len: 80, write: true }]);
  const lookup = rb.add([{ len: 50, data: request(1, 4n, 1n, cstr('hello.txt')) }, { len: 16 + 128, write: true }]);
  const read = rb.add([{ len: 80, data: request(15, 6n, 2n, words([[0, 'u64', 3n], [8, 'u64', 4096n], [16, 'u32', 65536]], 40)) }, { len: 16, write: true }, { len: 65536, write: true }]);
  // WRITE: header and arguments in one descriptor, the data in another.
  const wdata = new Uint8Array(Buffer.from('written by the guest'));
  const write = rb.add([{ len: 80, data: request(16, 8n, 2n, words([[0, 'u64', 3n], [8, 'u64', 0n], [16, 'u32', wdata.length]], 40)).map((x, i) => (i === 0 ? x + wdata.length : x)) }, { len: wdata.length, data: wdata }, { len: 24, write: true }]);
  const create = rb.add([{ len: 64, data: request(35, 10n, 1n, cat(words([[0, 'u32', 0x8241], [4, 'u32', 0o100644]], 16), cstr('out.txt'))) }, { len: 16 + 144, write: true }]);
  const rename = rb.add([{ len: 52, data: request(12, 12n, 1n, cat(words([[0, 'u64', 1n]], 8), cstr('a', 'b'))) }, { len: 16, write: true }]);
  let s = snapshotRing(mem, rb.cfg, { device: 'fs', preview: 8 });
  assert.deepEqual(s.chains.map((c) => fsOf(c.payload).summary), [
    'INIT unique=2 7.38 (in flight)',
    'LOOKUP unique=4 nodeid=1 "hello.txt" (in flight)',
    'READ unique=6 nodeid=2 fh=3 offset=4096 size=65536 (in flight)',
    'WRITE unique=8 nodeid=2 fh=3 offset=0 size=20 (in flight)',
    'CREATE unique=10 nodeid=1 flags=0x8241 mode=0100644 "out.txt" (in flight)',
    'RENAME unique=12 nodeid=1 newdir=1 "a" "b" (in flight)',
  ]);
  const w = fsOf(s.chains[3].payload);
  assert.equal(w.preview, '77726974 74656e20 …', 'the WRITE data, across descriptors');
  assert.deepEqual([w.uid, w.gid, w.pid, w.len], [1000, 1000, 42, 100]);
  assert.equal(w.problems, undefined);

  rb.use(init, 80, reply(2n, 0, words([[0, 'u32', 7], [4, 'u32', 36], [12, 'u32', 0x1], [20, 'u32', 1 << 20]], 64)));
  rb.use(lookup, 144, reply(4n, 0, entryOut(2n, 21n, 0o100644)));
  rb.use(read, 16 + 5, reply(6n, 0, new Uint8Array(Buffer.from('hello'))));
  rb.use(write, 24, reply(8n, 0, words([[0, 'u32', 20]], 8)));
  rb.use(create, 160, reply(10n, 0, cat(entryOut(5n, 0n, 0o100644), words([[0, 'u64', 7n]], 16))));
  rb.use(rename, 16, reply(12n, -2));
  s = snapshotRing(mem, rb.cfg, { device: 'fs', preview: 8 });
  const ps = s.chains.map((c) => fsOf(c.payload));
  assert.deepEqual(ps.map((p) => p.summary), [
    'INIT unique=2 7.38 → 7.36 max_write=1048576',
    'LOOKUP unique=4 nodeid=1 "hello.txt" → nodeid=2 size=21 mode=0100644',
    'READ unique=6 nodeid=2 fh=3 offset=4096 size=65536 → 5 bytes',
    'WRITE unique=8 nodeid=2 fh=3 offset=0 size=20 → written=20',
    'CREATE unique=10 nodeid=1 flags=0x8241 mode=0100644 "out.txt" → nodeid=5 fh=7 size=0 mode=0100644',
    'RENAME unique=12 nodeid=1 newdir=1 "a" "b" → ENOENT',
  ]);
  assert.equal(ps[2].reply?.preview, '68656c6c 6f');
  assert.deepEqual([ps[5].reply?.error, ps[5].reply?.errno], [-2, 'ENOENT']);
  for (const p of ps) assert.equal(p.problems, undefined, p.summary);
});

test('fs: recognised from its FUSE header when the device type is unknown; other chains stay hex', () => {
  const { mem, rb } = ring();
  rb.add([{ len: 40, data: request(3, 2n, 1n).subarray(0, 40) }, { len: 120, write: true }]);
  rb.add([{ len: 40, data: new Uint8Array(40).fill(7) }, { len: 16, write: true }]);
  // A header whose length disagrees with the chain is not taken for FUSE when guessing.
  rb.add([{ len: 64, data: request(1, 4n, 1n, cstr('x')) }, { len: 144, write: true }]);
  const s = snapshotRing(mem, rb.cfg, { device: 'unknown' });
  assert.deepEqual(s.chains.map((c) => (c.payload as Payload).kind), ['fs', 'hex', 'hex']);
  assert.equal(fsOf(s.chains[0].payload).summary, 'GETATTR unique=2 nodeid=1 (in flight)');
});

test('fs: hiprio FORGET has no reply; disagreeing lengths and uniques are reported, decoding goes on', () => {
  const { mem, rb } = ring();
  const forget = rb.add([{ len: 48, data: request(2, 20n, 9n, words([[0, 'u64', 3n]], 8)) }]);
  const lying = rb.add([{ len: 64, data: request(1, 22n, 1n, cstr('f')) }, { len: 144, write: true }]);
  const short = rb.add([{ len: 20, data: new Uint8Array(20) }, { len: 16, write: true }]);
  rb.use(forget, 0);
  rb.use(lying, 150, reply(23n, 0, entryOut(4n, 1n, 0o100600)));
  rb.use(short, 16);
  const ps = snapshotRing(mem, rb.cfg, { device: 'fs' }).chains.map((c) => fsOf(c.payload));
  assert.equal(ps[0].summary, 'FORGET unique=20 nodeid=9 nlookup=3');
  assert.equal(ps[0].reply, undefined);
  assert.deepEqual(ps[1].problems, [
    'fuse_in_header.len 42 but the chain offers 64 readable bytes',
    'reply unique 23 does not match request unique 22',
    'fuse_out_header.len 144 but the device wrote 150 bytes',
  ]);
  assert.match(ps[1].summary, /^LOOKUP unique=22 nodeid=1 "f" → nodeid=4/);
  assert.equal(ps[2].error, 'short header');
});
