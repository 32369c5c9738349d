// Unit tests for the IOTLB (VIRTIO_F_ACCESS_PLATFORM): the map from IOTLB_MSG, the device's view of memory through it, rings over IOVAs, hostile messages.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryError } from '../../core/memory/guestMemory';
import { DeviceMemory, Iotlb, IOTLB_MAX_ENTRIES } from '../../core/memory/iotlb';
import { BufferMemory } from '../../core/memory/bufferMemory';
import { Session } from '../../core/session/session';
import { snapshotRing } from '../../core/virtio/snapshot';
import type { NetPayload } from '../../core/virtio/net';
import { msg, FakeFds, Feeder } from '../helpers/wire';
import { SplitRingBuilder, makeMemory, GPA_BASE, UVA_DELTA } from '../helpers/ringBuilder';
import * as P from '../helpers/ringPackets';

const K = 0x1000n;
const view = (t: Iotlb): string[] => t.entries.map((e) => `${e.iova.toString(16)}+${e.size.toString(16)}>${e.uaddr.toString(16)}`);

test('IOTLB map: updates replace what they overlap, invalidations cut (splitting an entry), lookups by IOVA', () => {
  const t = new Iotlb();
  t.update({ iova: 0x10n * K, size: 4n * K, uaddr: 0xa0n * K, perm: 3 });
  t.update({ iova: 0x20n * K, size: K, uaddr: 0xb0n * K, perm: 1 });
  assert.deepEqual(view(t), ['10000+4000>a0000', '20000+1000>b0000']);
  assert.equal(t.find(0x12345n)?.uaddr, 0xa0000n);
  assert.equal(t.find(0x14000n), undefined, 'end is exclusive');
  assert.equal(t.find(0xfffn), undefined);
  // An update in the middle of an entry replaces that part; the rest keeps its translation.
  t.update({ iova: 0x11n * K, size: K, uaddr: 0xc0n * K, perm: 3 });
  assert.deepEqual(view(t), ['10000+1000>a0000', '11000+1000>c0000', '12000+2000>a2000', '20000+1000>b0000']);
  const v = t.version;
  t.invalidate(0x12800n, 0x1000n);
  assert.deepEqual(view(t), ['10000+1000>a0000', '11000+1000>c0000', '12000+800>a2000', '13800+800>a3800', '20000+1000>b0000']);
  assert.ok(t.version > v);
  t.invalidate(0n, 1n << 63n);
  assert.deepEqual(view(t), []);
  assert.equal(Iotlb.rangeProblem(0n, 0n), 'size 0');
  assert.match(Iotlb.rangeProblem(0xffff_ffff_ffff_f000n, 0x2000n)!, /overflows 64 bits/);
});

test('IOTLB map: a flood of updates keeps the newest IOTLB_MAX_ENTRIES, dropping the oldest', () => {
  const t = new Iotlb();
  let dropped = 0;
  for (let i = 0; i < IOTLB_MAX_ENTRIES + 5; i++) dropped += t.update({ iova: BigInt(i) * 2n * K, size: K, uaddr: BigInt(i) * K, perm: 3 });
  assert.equal(dropped, 5);
  assert.equal(t.entries.length, IOTLB_MAX_ENTRIES);
  assert.equal(t.find(0n), undefined, 'the oldest went first');
  assert.equal(t.find(5n * 2n * K)?.uaddr, 5n * K);
});

test('IOTLB map: map/unmap cycles for hours (one per packet) keep its bookkeeping bounded', () => {
  const t = new Iotlb();
  for (let i = 0; i < 200_000; i++) {
    const iova = BigInt(i % 64) * K;
    t.update({ iova, size: K, uaddr: 0x7f00_0000_0000n + iova, perm: 1 });
    if (i % 3) t.invalidate(iova, K);
  }
  const order = (t as unknown as { fifo: unknown[] }).fifo;
  assert.ok(t.entries.length <= 64);
  assert.ok(order.length < 2 * 64 + 1024 + 2, `drop-order list holds ${order.length} references for ${t.entries.length} entries`);
});

test('IOTLB map agrees with a page-by-page model over random updates and invalidations', () => {
  let seed = 7;
  const rnd = (n: number): number => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed % n; };
  for (let round = 0; round < 50; round++) {
    const t = new Iotlb();
    const model = new Map<number, bigint>(); // page -> uaddr of the page
    for (let op = 0; op < 200; op++) {
      const page = rnd(64), pages = 1 + rnd(8);
      if (rnd(3)) {
        const uaddr = BigInt(0x1000 + rnd(1000)) * K;
        t.update({ iova: BigInt(page) * K, size: BigInt(pages) * K, uaddr, perm: 3 });
        for (let k = 0; k < pages; k++) model.set(page + k, uaddr + BigInt(k) * K);
      } else {
        t.invalidate(BigInt(page) * K, BigInt(pages) * K);
        for (let k = 0; k < pages; k++) model.delete(page + k);
      }
      for (let p = 0; p < 72; p++) {
        const e = t.find(BigInt(p) * K + 0x10n);
        const got = e ? e.uaddr + (BigInt(p) * K + 0x10n - e.iova) - 0x10n : undefined;
        assert.equal(got, model.get(p), `round ${round} op ${op} page ${p}`);
      }
      const es = t.entries;
      for (let i = 1; i < es.length; i++) assert.ok(es[i - 1].iova + es[i - 1].size <= es[i].iova, 'sorted and disjoint');
    }
  }
});

function deviceView(iommu: boolean) {
  const base = new BufferMemory([{ guestPhysAddr: 0n, userspaceAddr: 0x7f00_0000_0000n, bytes: Uint8Array.from({ length: 0x4000 }, (_, i) => i & 0xff) }]);
  const t = new Iotlb();
  let on = iommu;
  const m = new DeviceMemory(base, () => t, () => on);
  return { base, t, m, setIommu: (v: boolean) => { on = v; } };
}

test('device memory: IOVAs read through the IOTLB (across entries that are not contiguous), holes are typed errors', () => {
  const { t, m, setIommu } = deviceView(true);
  t.update({ iova: 0xfff0_0000n, size: K, uaddr: 0x7f00_0000_2000n, perm: 3 });
  t.update({ iova: 0xfff0_1000n, size: K, uaddr: 0x7f00_0000_0000n, perm: 1 });
  assert.deepEqual([...m.readGpa(0xfff0_0ffen, 4)], [0xfe, 0xff, 0x00, 0x01], 'the last bytes of uva +0x2000, then the first of uva +0');
  const seg = m.translateGpa(0xfff0_0ffen, 4);
  assert.deepEqual(seg.map((s) => [s.offset, s.len]), [[0x2ffen, 2], [0n, 2]]);
  assert.equal(m.gpaToUva(0xfff0_1010n), 0x7f00_0000_0010n);
  assert.equal(m.uvaToGpa(0x7f00_0000_2010n), 0xfff0_0010n);
  const e = m.checkGpa(0xfff0_1f00n, 0x200);
  assert.ok(e instanceof MemoryError && e.code === 'iova-unmapped');
  assert.match(e.message, /IOVA 0xfff02000 is in no IOTLB entry/);
  assert.throws(() => m.readUva(0x1000n, 4), (x: unknown) => x instanceof MemoryError && x.code === 'iova-unmapped', 'ring addresses are IOVAs too');
  assert.throws(() => m.readGpa(0xfff0_0000n, 2 << 20), (x: unknown) => x instanceof MemoryError && x.code === 'too-large');
  const g = m.generation;
  t.invalidate(0xfff0_1000n, K);
  assert.notEqual(m.generation, g, 'an IOTLB change is a new generation');
  assert.throws(() => m.readGpa(0xfff0_1000n, 1), (x: unknown) => x instanceof MemoryError && x.code === 'iova-unmapped');
  // Without the feature, addresses are guest-physical and front-end addresses again.
  setIommu(false);
  assert.deepEqual([...m.readGpa(0x10n, 2)], [0x10, 0x11]);
  assert.deepEqual([...m.readUva(0x7f00_0000_0010n, 2)], [0x10, 0x11]);
});

function iotlbMsg(type: number, iova: bigint, size: bigint, uaddr = 0n, perm = 3) {
  return msg('IOTLB_MSG').flags(0x9).payload((p) => p.iotlb({ iova, size, uaddr, perm, type }));
}

test('session: IOTLB_MSG UPDATE and INVALIDATE from the front-end build the map; malformed ones are reported and ignored', () => {
  const fds = new FakeFds();
  const s = new Session(1, { closeFd: fds.closeFd });
  const f = new Feeder(s, fds);
  let r = f.feed(iotlbMsg(2, 0xffffe000n, K, 0x7f3d66cbd000n));
  assert.deepEqual(r.changes, [{ what: 'iotlb', op: 'UPDATE', iova: 0xffffe000n, size: K, uaddr: 0x7f3d66cbd000n, entries: 1 }]);
  assert.equal(s.state.iotlb?.find(0xffffe010n)?.uaddr, 0x7f3d66cbd000n);
  r = f.feed(iotlbMsg(3, 0xffffe000n, K));
  assert.deepEqual(r.changes, [{ what: 'iotlb', op: 'INVALIDATE', iova: 0xffffe000n, size: K, entries: 0 }]);
  r = f.feed(iotlbMsg(2, 0x1000n, 0n, 0x2000n));
  assert.deepEqual(r.changes, []);
  assert.match(r.msg.problems.map((p) => p.message).join(), /IOTLB UPDATE: size 0; the map is unchanged/);
  r = f.feed(iotlbMsg(2, 0xffff_ffff_ffff_f000n, 0x2000n, 0x2000n));
  assert.match(r.msg.problems.map((p) => p.message).join(), /overflows 64 bits/);
  r = f.feed(iotlbMsg(1, 0x1000n, 0n));
  assert.match(r.msg.problems.map((p) => p.message).join(), /MISS comes from the back-end/);
  assert.equal(s.state.iotlb?.entries.length, 0);
});

test('rings over IOVAs: with the IOTLB mapping them, chains and payloads decode; once invalidated, a typed error', () => {
  const mem = makeMemory(1 << 20);
  const rb = new SplitRingBuilder(mem, 16, 1);
  rb.add([{ len: 12 + 42, data: P.withHdr(P.arpRequest('52:54:00:00:00:02', '10.0.0.2', '10.0.0.1')) }]);
  // The guest's IOMMU maps IOVA = GPA here, to the front-end's addresses of those pages.
  const t = new Iotlb();
  t.update({ iova: GPA_BASE, size: 1n << 20n, uaddr: GPA_BASE + UVA_DELTA, perm: 3 });
  const dev = new DeviceMemory(mem, () => t, () => true);
  const cfg = { ...rb.cfg, desc: rb.cfg.desc - UVA_DELTA, avail: rb.cfg.avail - UVA_DELTA, used: rb.cfg.used - UVA_DELTA };
  const features = (1n << 32n) | (1n << 33n);
  const s = snapshotRing(dev, cfg, { device: 'net', features });
  assert.equal(s.errors?.length ?? 0, 0);
  assert.equal((s.chains[0].payload as NetPayload).summary, 'ARP who-has 10.0.0.1 tell 10.0.0.2');
  t.invalidate(GPA_BASE, 1n << 20n);
  assert.throws(() => snapshotRing(dev, cfg, { device: 'net', features }), (e: Error) => /IOVA .* is in no IOTLB entry/.test(e.message));
});
