// Unit tests for guest memory: RegionMemory over real files (pread/pwrite), BufferMemory, bounds and typed errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { MemoryError, RegionMemory, DEFAULT_MAX_ACCESS, type RegionSpec } from '../../core/memory/guestMemory';
import { BufferMemory } from '../../core/memory/bufferMemory';

const dir = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();

/** A file of `size` bytes where byte i = i & 0xff, opened read-write; removed at exit. */
function backingFile(size: number): { fd: number; close: () => void } {
  const p = path.join(dir, `vhost-lens-mem-${process.pid}-${Math.random().toString(36).slice(2)}`);
  const b = new Uint8Array(size);
  for (let i = 0; i < size; i++) b[i] = i & 0xff;
  fs.writeFileSync(p, b);
  const fd = fs.openSync(p, 'r+');
  fs.unlinkSync(p);
  return { fd, close: () => fs.closeSync(fd) };
}

function expectMemError(fn: () => unknown, code: MemoryError['code']): MemoryError {
  try { fn(); } catch (e) {
    assert.ok(e instanceof MemoryError, `expected MemoryError, got ${e}`);
    assert.equal(e.code, code, e.message);
    return e;
  }
  assert.fail(`expected MemoryError ${code}`);
}

test('RegionMemory reads with pread at mmapOffset + (addr - base), in both address spaces', () => {
  const f = backingFile(0x3000);
  try {
    const m = new RegionMemory([{ guestPhysAddr: 0x10000n, memorySize: 0x2000n, userspaceAddr: 0x7f0000000000n, mmapOffset: 0x1000n, fd: f.fd }]);
    const a = m.readGpa(0x10010n, 4);
    assert.deepEqual([...a], [0x10, 0x11, 0x12, 0x13]); // file offset 0x1010
    const b = m.readUva(0x7f0000000010n, 4);
    assert.deepEqual([...b], [...a]);
    assert.equal(m.gpaToUva(0x10010n), 0x7f0000000010n);
    assert.equal(m.uvaToGpa(0x7f0000001fffn), 0x11fffn);
    const seg = m.translateGpa(0x11ff0n, 16);
    assert.deepEqual(seg, [{ region: 0, offset: 0x1ff0n, fileOffset: 0x2ff0n, len: 16, fd: f.fd }]);
    assert.equal(m.readGpa(0x10000n, 0).byteLength, 0);
  } finally { f.close(); }
});

test('RegionMemory errors: unmapped, out-of-bounds, overflow, too-large, bad-length, no-fd, io, read-only', () => {
  const f = backingFile(0x1000);
  try {
    const regions: RegionSpec[] = [
      { guestPhysAddr: 0x10000n, memorySize: 0x1000n, userspaceAddr: 0x50000n, mmapOffset: 0n, fd: f.fd },
      { guestPhysAddr: 0x20000n, memorySize: 0x1000n, userspaceAddr: 0x60000n, mmapOffset: 0n }, // no fd kept
      { guestPhysAddr: 0x30000n, memorySize: 0x2000n, userspaceAddr: 0x70000n, mmapOffset: 0n, fd: f.fd }, // file too short
      { guestPhysAddr: 0xffff_ffff_ffff_f000n, memorySize: 0x1000n, userspaceAddr: 0x90000n, mmapOffset: 0n, fd: f.fd },
    ];
    const m = new RegionMemory(regions);
    const e = expectMemError(() => m.readGpa(0x9000n, 4), 'unmapped');
    assert.equal(e.addr, 0x9000n);
    assert.equal(e.len, 4);
    assert.match(e.message, /GPA 0x9000\+4/);
    expectMemError(() => m.readGpa(0x10ffcn, 8), 'out-of-bounds');
    expectMemError(() => m.readGpa(0xffff_ffff_ffff_fff0n, 32), 'overflow');
    assert.equal(m.readGpa(0xffff_ffff_ffff_fff0n, 16).byteLength, 16); // up to exactly 2^64 is fine
    expectMemError(() => m.readGpa(0x10000n, DEFAULT_MAX_ACCESS + 1), 'too-large');
    expectMemError(() => m.readGpa(0x10000n, -1), 'bad-length');
    expectMemError(() => m.readGpa(0x10000n, 1.5), 'bad-length');
    expectMemError(() => m.readGpa(0x20000n, 4), 'no-fd');
    assert.equal(m.checkGpa(0x20000n, 4)?.code, 'no-fd');
    expectMemError(() => m.readGpa(0x31800n, 16), 'io'); // beyond the end of the 4 KiB file
    expectMemError(() => m.writeGpa(0x10000n, new Uint8Array(1)), 'read-only');
    expectMemError(() => m.uvaToGpa(0x1n), 'unmapped');
    assert.equal(m.checkGpa(0x10000n, 16), undefined);
    assert.equal(m.checkUva(0x50ff0n, 32)?.code, 'out-of-bounds');
  } finally { f.close(); }
});

test('RegionMemory writes with pwrite when writable', () => {
  const f = backingFile(0x1000);
  try {
    const m = new RegionMemory([{ guestPhysAddr: 0n, memorySize: 0x1000n, userspaceAddr: 0x1000n, mmapOffset: 0n, fd: f.fd }], { writable: true });
    m.writeGpa(0x100n, new Uint8Array([1, 2, 3]));
    assert.deepEqual([...m.readUva(0x1100n, 3)], [1, 2, 3]);
    expectMemError(() => m.writeGpa(0xfffn, new Uint8Array(2)), 'out-of-bounds');
  } finally { f.close(); }
});

test('an access may span regions only when they are contiguous in GPA and UVA', () => {
  const a = new Uint8Array(0x100).fill(1), b = new Uint8Array(0x100).fill(2), c = new Uint8Array(0x100).fill(3);
  const m = new BufferMemory([
    { guestPhysAddr: 0x1000n, userspaceAddr: 0x9000n, bytes: a },
    { guestPhysAddr: 0x1100n, userspaceAddr: 0x9100n, bytes: b }, // contiguous with a in both spaces
    { guestPhysAddr: 0x1200n, userspaceAddr: 0xa000n, bytes: c }, // contiguous with b in GPA only
  ], { record: true });
  const r = m.readGpa(0x10f0n, 0x20);
  assert.deepEqual([...r], [...new Array(16).fill(1), ...new Array(16).fill(2)]);
  assert.equal(m.translateGpa(0x10f0n, 0x20).length, 2);
  assert.deepEqual([...m.readUva(0x90f8n, 16)], [...new Array(8).fill(1), ...new Array(8).fill(2)]);
  expectMemError(() => m.readGpa(0x11f0n, 0x20), 'out-of-bounds');
  for (const x of m.log) assert.ok(x.offset + x.len <= 0x100);
});

test('update() replaces the snapshot: a removed region is never read again', () => {
  const f1 = backingFile(0x1000), f2 = backingFile(0x1000);
  try {
    const r1: RegionSpec = { guestPhysAddr: 0n, memorySize: 0x1000n, userspaceAddr: 0x1000n, mmapOffset: 0n, fd: f1.fd };
    const m = new RegionMemory([r1]);
    const g0 = m.generation;
    assert.equal(m.readGpa(0x10n, 1)[0], 0x10);
    m.update([{ guestPhysAddr: 0x8000n, memorySize: 0x1000n, userspaceAddr: 0x9000n, mmapOffset: 0x100n, fd: f2.fd }]);
    assert.ok(m.generation > g0);
    expectMemError(() => m.readGpa(0x10n, 1), 'unmapped');
    assert.equal(m.readGpa(0x8000n, 1)[0], 0x00); // file offset 0x100
    // Mutating the caller's object after the snapshot changes nothing.
    r1.guestPhysAddr = 0x8000n;
    assert.equal(m.readGpa(0x8001n, 1)[0], 0x01);
  } finally { f1.close(); f2.close(); }
});

test('live() follows a session-like region list (add, remove)', () => {
  const f = backingFile(0x1000);
  try {
    const state = { memory: [] as RegionSpec[] };
    const m = RegionMemory.live(() => state.memory);
    expectMemError(() => m.readGpa(0n, 1), 'unmapped');
    state.memory.push({ guestPhysAddr: 0n, memorySize: 0x1000n, userspaceAddr: 0x1000n, mmapOffset: 0n, fd: f.fd });
    assert.equal(m.readGpa(5n, 1)[0], 5);
    state.memory.splice(0, 1);
    expectMemError(() => m.readGpa(5n, 1), 'unmapped');
  } finally { f.close(); }
});

test('VIRTIO_F_ACCESS_PLATFORM on memory without an IOTLB: every access says it cannot translate', () => {
  const m = new RegionMemory([{ guestPhysAddr: 0n, memorySize: 0x1000n, userspaceAddr: 0x1000n, mmapOffset: 0n, fd: 0 }], { iommu: true });
  const e = expectMemError(() => m.readGpa(0n, 4), 'iommu-unsupported');
  assert.match(e.message, /no IOTLB to translate/);
  expectMemError(() => m.readUva(0x1000n, 4), 'iommu-unsupported');
  expectMemError(() => m.gpaToUva(0n), 'iommu-unsupported');
});

test('region snapshot problems: zero size and 64-bit overflow are left out, overlaps flagged', () => {
  const m = new BufferMemory([
    { guestPhysAddr: 0n, userspaceAddr: 0n, bytes: new Uint8Array(0) },
    { guestPhysAddr: 0x1000n, userspaceAddr: 0x1000n, bytes: new Uint8Array(0x100) },
    { guestPhysAddr: 0x1080n, userspaceAddr: 0x8000n, bytes: new Uint8Array(0x100) },
    { guestPhysAddr: 0xffff_ffff_ffff_ff00n, userspaceAddr: 0x20000n, bytes: new Uint8Array(0x100), memorySize: 0x200n },
  ]);
  assert.equal(m.mappedRegions.length, 2);
  assert.deepEqual(m.problems.map((p) => p.region), [0, 2, 3]);
});

test('BufferMemory records every backing access', () => {
  const m = BufferMemory.single(0x1000, 0x4000n, 0x10000n, { record: true });
  m.writeGpa(0x4010n, new Uint8Array([9, 8]));
  assert.deepEqual([...m.readUva(0x10010n, 2)], [9, 8]);
  assert.deepEqual(m.log.map((a) => [a.op, a.space, a.offset, a.len]), [['write', 'gpa', 0x10, 2], ['read', 'uva', 0x10, 2]]);
});
