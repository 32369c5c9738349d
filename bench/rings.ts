// Bench: ring decoding throughput (descriptors/s) and full-ring snapshot latency: synthetic memory, pread on a file, and through an IOTLB.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { RegionMemory, type GuestMemoryReader } from '../core/memory/guestMemory';
import { DeviceMemory, Iotlb } from '../core/memory/iotlb';
import { snapshotSplit } from '../core/virtio/split';
import { snapshotPacked } from '../core/virtio/packed';
import { snapshotRing } from '../core/virtio/snapshot';
import type { RingConfig } from '../core/virtio/ring';
import { GPA_BASE, UVA_DELTA, PackedRingBuilder, SplitRingBuilder, makeMemory, type Buf } from '../test/helpers/ringBuilder';
import * as P from '../test/helpers/ringPackets';

const MEM_SIZE = 8 << 20;

interface Fixture { name: string; cfg: RingConfig; descs: number; synthetic: GuestMemoryReader; file: GuestMemoryReader; iova: GuestMemoryReader; close: () => void }

/** A ring where every descriptor is in flight, as chains of `per` descriptors (direct or indirect). */
function fixture(kind: 'split' | 'packed', num: number, per: number, indirect: boolean, payload: 'net' | 'blk' | 'none' = 'none'): Fixture {
  const mem = makeMemory(MEM_SIZE);
  const chains = indirect ? num : Math.floor(num / per);
  const frame = P.withHdr(P.eth('52:54:00:00:00:01', '52:54:00:00:00:02', 0x0800, P.ipv4('10.0.0.2', '10.0.0.1', 17, P.udp(5000, 5001, 1000))));
  const bufs = (): Buf[] => Array.from({ length: per }, (_, i): Buf => {
    if (i === 0 && payload === 'net') return { len: frame.length, data: frame };
    if (i === 0 && payload === 'blk') return { len: 16, data: P.blkHdr(1, 2048n) };
    return { len: 512, write: per > 1 && i === per - 1 };
  });
  let cfg: RingConfig;
  if (kind === 'split') {
    const rb = new SplitRingBuilder(mem, num, 1);
    for (let c = 0; c < chains; c++) rb.add(bufs(), { indirect });
    cfg = rb.cfg;
  } else {
    const rb = new PackedRingBuilder(mem, num, 1);
    for (let c = 0; c < chains; c++) rb.add(bufs(), { indirect });
    cfg = rb.cfg;
  }
  // The same bytes in a file, read with pread through RegionMemory.
  const dir = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
  const p = path.join(dir, `vhost-lens-bench-${process.pid}-${kind}-${num}-${per}`);
  fs.writeFileSync(p, mem.bytesOf(0));
  const fd = fs.openSync(p, 'r');
  fs.unlinkSync(p);
  const file = new RegionMemory([{ guestPhysAddr: GPA_BASE, memorySize: BigInt(MEM_SIZE), userspaceAddr: GPA_BASE + UVA_DELTA, mmapOffset: 0n, fd }]);
  // Behind an IOMMU: the same file through an IOTLB of 4 KiB pages, as a guest maps them (ring and buffer
  // addresses both looked up: the ring's UVAs and the buffers' GPAs are taken as IOVAs of the same pages).
  const iotlb = new Iotlb();
  for (const base of [GPA_BASE, GPA_BASE + UVA_DELTA]) {
    for (let o = 0n; o < BigInt(MEM_SIZE); o += 4096n) iotlb.update({ iova: base + o, size: 4096n, uaddr: GPA_BASE + UVA_DELTA + o, perm: 3 });
  }
  const iova = new DeviceMemory(file, () => iotlb, () => true);
  return {
    name: `${kind} ${num}, ${indirect ? `${chains} indirect chains x ${per}` : `${chains} chains x ${per}`}`,
    cfg, descs: chains * per, synthetic: mem, file, iova, close: () => fs.closeSync(fd),
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1];
}

/** Median time (ms) of fn over `runs` runs after `warm` warm-up runs. */
function time(fn: () => void, runs: number, warm = 100): number {
  for (let i = 0; i < warm; i++) fn();
  const t: number[] = [];
  for (let i = 0; i < runs; i++) {
    const a = performance.now();
    fn();
    t.push(performance.now() - a);
  }
  return median(t);
}

function snap(f: Fixture, mem: GuestMemoryReader, payloads: 'none' | 'net' | 'blk'): () => void {
  if (payloads !== 'none') return () => { snapshotRing(mem, f.cfg, { device: payloads, features: 1n << 32n, usedHistory: 0 }); };
  return f.cfg.packed ? () => { snapshotPacked(mem, f.cfg); } : () => { snapshotSplit(mem, f.cfg, { usedHistory: 0 }); };
}

const rows: string[][] = [];
const head = ['case', 'memory', 'descs', 'snapshot median', 'descriptors/s'];
function run(f: Fixture, payloads: 'none' | 'net' | 'blk' = 'none', runs = 200): void {
  for (const [label, mem] of [['synthetic', f.synthetic], ['pread file', f.file], ['IOTLB+pread', f.iova]] as const) {
    // Sanity: the snapshot sees every chain.
    const s = f.cfg.packed ? snapshotPacked(mem, f.cfg) : snapshotSplit(mem, f.cfg, { usedHistory: 0 });
    const expect = f.descs;
    const got = s.chains.reduce((n, c) => n + c.descs.length, 0);
    if (got !== expect || s.errors.length) throw new Error(`${f.name}: decoded ${got}/${expect} descriptors, ${s.errors.length} errors`);
    const ms = time(snap(f, mem, payloads), runs);
    rows.push([`${f.name}${payloads !== 'none' ? ` + ${payloads} payloads` : ''}`, label, String(f.descs), `${(ms * 1000).toFixed(0)} µs`, `${(f.descs / ms / 1000).toFixed(2)} M`]);
  }
}

const fixtures = [
  fixture('split', 256, 1, false),
  fixture('split', 1024, 1, false),
  fixture('split', 1024, 4, false),
  fixture('split', 1024, 8, true),
  fixture('packed', 256, 1, false),
  fixture('packed', 1024, 1, false),
  fixture('packed', 1024, 4, false),
  fixture('split', 1024, 2, false, 'net'),
  fixture('split', 1024, 3, false, 'blk'),
];
for (const f of fixtures.slice(0, 7)) run(f);
run(fixtures[7], 'net', 100);
run(fixtures[8], 'blk', 100);
for (const f of fixtures) f.close();

const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const line = (r: string[]): string => r.map((c, i) => (i >= 2 ? c.padStart(w[i]) : c.padEnd(w[i]))).join('  ');
console.log(`vhost-lens ring bench (node ${process.version}, ${os.cpus()[0]?.model ?? 'cpu'} x${os.cpus().length}); medians`);
console.log(line(head));
console.log(w.map((n) => '-'.repeat(n)).join('  '));
for (const r of rows) console.log(line(r));
