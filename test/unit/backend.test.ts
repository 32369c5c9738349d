// Unit tests for the built-in back-ends' device side: split virtqueue, notification rules, blk requests, net loopback and responder.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DeviceMemory, DeviceMemoryError } from '../../core/backend/memory';
import { VirtQueue, QueueError, needEvent, chainCopyCheck, VRING_USED_F_NO_NOTIFY, VRING_AVAIL_F_NO_INTERRUPT } from '../../core/backend/virtqueue';
import { Arena, PackedDriver, SplitDriver } from '../../core/backend/driver';
import { BlkDevice, BLK_S, BLK_T } from '../../core/backend/blk';
import { NetDevice } from '../../core/backend/net';
import { Responder, inetChecksum, parseIpv4, parseMac, rarpFrame } from '../../core/backend/packets';
import type { DeviceContext } from '../../core/backend/device';
import type { Native } from '../../core/sys/native';
import type { EventPump } from '../../core/node/pump';

const GPA = 0x10_0000;
const DELTA = 0x7f00_0000_0000;
const dir = fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();

function tmpFile(size: number, fill = 0): number {
  const p = path.join(dir, `vl-be-${process.pid}-${Math.random().toString(36).slice(2)}`);
  fs.writeFileSync(p, Buffer.alloc(size, fill));
  const fd = fs.openSync(p, 'r+');
  fs.unlinkSync(p);
  return fd;
}

interface Guest { mem: DeviceMemory; arena: Arena; fd: number }
function guest(size = 4 << 20): Guest {
  const fd = tmpFile(size);
  const mem = new DeviceMemory();
  mem.set([{ gpa: GPA, uva: GPA + DELTA, size, offset: 0, fd }]);
  return { mem, arena: new Arena(mem, GPA, GPA + size), fd };
}

const devNull = fs.openSync('/dev/null', 'w');

function queue(g: Guest, drv: SplitDriver, index = 0, opts: { eventIdx?: boolean; indirect?: boolean } = {}): VirtQueue {
  const q = new VirtQueue(index, g.mem);
  q.setNum(drv.num);
  q.setAddr(BigInt(drv.desc + DELTA), BigInt(drv.used + DELTA), BigInt(drv.avail + DELTA), 0);
  q.eventIdx = !!opts.eventIdx;
  q.indirectOk = opts.indirect ?? true;
  q.started = true;
  q.enabled = true;
  q.callFd = devNull;
  return q;
}

function ctx(g: Guest, queues: VirtQueue[], reports: string[] = []): DeviceContext {
  return { mem: g.mem, queues, pump: undefined as unknown as EventPump, report: (m) => reports.push(m), rerun: () => undefined };
}

test('vring_need_event follows the virtio rule, including wrap-around', () => {
  assert.equal(needEvent(0, 1, 0), true);
  assert.equal(needEvent(5, 5, 3), false, 'event 5 not yet passed');
  assert.equal(needEvent(5, 6, 3), true, 'event 5 passed by 6');
  assert.equal(needEvent(0xffff, 0, 0xfffe), true, 'wraps');
  assert.equal(needEvent(10, 20, 20), false, 'nothing new');
});

test('virtqueue: pops direct and indirect chains in one batch, writes used elements and index, calls', () => {
  const g = guest();
  const drv = new SplitDriver(g.mem, g.arena, 8);
  const a = drv.add([{ len: 16, data: Buffer.alloc(16, 1) }, { len: 100, write: true }]);
  const b = drv.add([{ len: 4, data: Buffer.from('abcd') }, { len: 8, write: true }, { len: 8, write: true }], { indirect: true });
  const q = queue(g, drv);
  q.prepare();
  const chains = q.pop(64);
  assert.equal(chains.length, 2);
  assert.deepEqual([chains[0].head, chains[0].n, chains[0].readable, chains[0].writable, chains[0].error], [a.head, 2, 16, 100, undefined]);
  assert.deepEqual([chains[1].head, chains[1].n, chains[1].readable, chains[1].writable], [b.head, 3, 4, 16]);
  assert.equal(chains[1].addr[0], b.addrs[0]);
  q.push(a.head, 7);
  q.push(b.head, 9);
  q.flush();
  assert.deepEqual(drv.takeUsed(), [{ id: a.head, len: 7 }, { id: b.head, len: 9 }]);
  assert.equal(q.stats.calls, 1);
  assert.equal(q.lastAvail, 2);
});

test('virtqueue: without EVENT_IDX, NO_NOTIFY is set while draining and NO_INTERRUPT suppresses the call', () => {
  const g = guest();
  const drv = new SplitDriver(g.mem, g.arena, 8);
  const q = queue(g, drv);
  drv.add([{ len: 16 }, { len: 1, write: true }]);
  const seenFlags: number[] = [];
  q.drain((chains) => { seenFlags.push(drv.usedFlags()); for (const c of chains) q.push(c.head, 1); return true; });
  assert.deepEqual(seenFlags, [VRING_USED_F_NO_NOTIFY], 'kicks disabled while the device works');
  assert.equal(drv.usedFlags(), 0, 'kicks enabled again once the ring is empty');
  assert.equal(q.stats.calls, 1);
  drv.setAvailFlags(VRING_AVAIL_F_NO_INTERRUPT);
  drv.add([{ len: 16 }, { len: 1, write: true }]);
  q.drain((chains) => { for (const c of chains) q.push(c.head, 1); return true; });
  assert.equal(q.stats.calls, 1, 'no call: the driver asked for no interrupts');
  assert.equal(q.stats.suppressedCalls, 1);
  assert.equal(drv.takeUsed().length, 2);
});

test('virtqueue: with EVENT_IDX, avail_event follows the device and used_event decides the call', () => {
  const g = guest();
  const drv = new SplitDriver(g.mem, g.arena, 16);
  const q = queue(g, drv, 0, { eventIdx: true });
  const use = () => q.drain((chains) => { for (const c of chains) q.push(c.head, 1); return true; });
  drv.setUsedEvent(2); // call me when used idx passes 2
  drv.add([{ len: 1, write: true }]);
  use();
  assert.equal(drv.availEvent(), 1, 'avail_event = next avail index');
  assert.equal(q.stats.calls, 1, 'first completion always calls');
  drv.add([{ len: 1, write: true }]);
  use();
  assert.equal(q.stats.calls, 1, 'used idx 2 has not passed used_event 2');
  drv.add([{ len: 1, write: true }]);
  use();
  assert.equal(q.stats.calls, 2, 'used idx 3 passes used_event 2');
  assert.equal(drv.availEvent(), 3);
  assert.equal(drv.usedFlags(), 0, 'EVENT_IDX never touches the flags');
});

test('virtqueue: malformed chains are reported on the chain, the ring goes on', () => {
  const g = guest();
  const drv = new SplitDriver(g.mem, g.arena, 8);
  // loop: 0 -> 1 -> 0
  drv.writeDesc(drv.desc, 0, GPA + 0x8000, 16, 1, 1);
  drv.writeDesc(drv.desc, 1, GPA + 0x8000, 16, 1, 0);
  drv.offer(0);
  // head out of range
  drv.offer(200);
  // write before read: 2 (write) -> 3 (read)
  drv.writeDesc(drv.desc, 2, GPA + 0x8000, 16, 2 | 1, 3);
  drv.writeDesc(drv.desc, 3, GPA + 0x8000, 16, 0, 0);
  drv.offer(2);
  // nested indirect
  const t = g.arena.alloc(32);
  drv.writeDesc(t, 0, GPA + 0x9000, 16, 4, 0);
  drv.writeDesc(drv.desc, 4, t, 16, 4, 0);
  drv.offer(4);
  // buffer outside guest memory
  drv.writeDesc(drv.desc, 5, 0x4000_0000, 512, 0, 0);
  drv.offer(5);
  const q = queue(g, drv);
  q.prepare();
  const cs = q.pop(64);
  assert.match(cs[0].error!, /loop/);
  assert.match(cs[1].error!, /head 200 out of range/);
  assert.match(cs[2].error!, /readable descriptor 3 after a device-writable/);
  assert.match(cs[3].error!, /nested indirect/);
  assert.equal(cs[4].error, undefined);
  assert.match(chainCopyCheck(g.mem, cs[4])!, /in no memory region/);
  assert.equal(q.lastAvail, 5);
});

test('virtqueue: ring areas outside memory and avail index jumps stop the ring with a clear fault', () => {
  const g = guest(1 << 20);
  const drv = new SplitDriver(g.mem, g.arena, 8);
  const q = queue(g, drv);
  q.setAddr(BigInt(0x1000 + DELTA), BigInt(drv.used + DELTA), BigInt(drv.avail + DELTA), 0);
  assert.throws(() => q.prepare(), (e: Error) => e instanceof QueueError && /descriptor ring outside guest memory/.test(e.message));
  assert.match(q.fault!, /outside guest memory/);
  assert.equal(q.runnable, false);
  const q2 = queue(g, drv);
  q2.setAddr(BigInt(drv.desc + DELTA), BigInt(GPA + (1 << 20) - 8 + DELTA), BigInt(drv.avail + DELTA), 0);
  assert.throws(() => q2.prepare(), /used ring outside guest memory.*runs past the end/);
  const q3 = queue(g, drv);
  drv.setAvailIdx(100);
  q3.prepare();
  assert.throws(() => q3.pop(64), /avail index 100 is 100 ahead .* more than the ring size 8/);
  assert.throws(() => new VirtQueue(0, g.mem).setNum(100), /invalid ring size 100/);
});

test('device memory: accesses are bounds-checked before any byte moves', () => {
  const g = guest(1 << 20);
  assert.equal(g.mem.check(GPA, 16), undefined);
  assert.match(g.mem.check(GPA + (1 << 20) - 8, 16)!, /runs past the end/);
  assert.match(g.mem.check(0, 1)!, /in no memory region/);
  assert.throws(() => g.mem.write(GPA + (1 << 20) - 4, Buffer.alloc(8), 0, 8), DeviceMemoryError);
  assert.throws(() => g.mem.uvaToGpa(1, 1), /in no memory region/);
  assert.equal(g.mem.uvaToGpa(GPA + DELTA + 5, 10), GPA + 5);
});

// ---- virtio-blk -------------------------------------------------------------------------------------------------

interface BlkRig { g: Guest; drv: SplitDriver; q: VirtQueue; dev: BlkDevice; image: string; reports: string[] }
function blkRig(opts: { readonly?: boolean; sectors?: number } = {}): BlkRig {
  const image = path.join(dir, `vl-be-img-${process.pid}-${Math.random().toString(36).slice(2)}`);
  fs.writeFileSync(image, Buffer.alloc((opts.sectors ?? 64) * 512, 0xee));
  const g = guest();
  const drv = new SplitDriver(g.mem, g.arena, 16);
  const q = queue(g, drv, 0, { eventIdx: true });
  const dev = new BlkDevice({ image, readonly: opts.readonly, serial: 'unit-serial' });
  const reports: string[] = [];
  dev.attach(ctx(g, [q], reports));
  return { g, drv, q, dev, image, reports };
}
function blkHdr(type: number, sector: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32LE(type, 0);
  b.writeBigUInt64LE(BigInt(sector), 8);
  return b;
}
function status(r: BlkRig, addr: number): number { const b = Buffer.alloc(1); r.g.mem.read(addr, b, 0, 1); return b[0]; }
function done(r: BlkRig): void { r.dev.close(); fs.rmSync(r.image, { force: true }); }

test('blk: OUT then IN round-trip through the image; FLUSH, GET_ID; statuses and used lengths', () => {
  const r = blkRig();
  const data = Buffer.alloc(1024);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
  const w = r.drv.add([{ len: 16, data: blkHdr(BLK_T.OUT, 4) }, { len: 512, data: data.subarray(0, 512) }, { len: 512, data: data.subarray(512) }, { len: 1, write: true }]);
  r.dev.kick(r.q);
  assert.equal(status(r, w.addrs[3]), BLK_S.OK);
  assert.deepEqual(fs.readFileSync(r.image).subarray(4 * 512, 6 * 512), data);
  assert.equal(fs.readFileSync(r.image)[4 * 512 - 1], 0xee, 'byte before the range untouched');
  assert.equal(fs.readFileSync(r.image)[6 * 512], 0xee, 'byte after the range untouched');
  const rd = r.drv.add([{ len: 16, data: blkHdr(BLK_T.IN, 4) }, { len: 1024, write: true }, { len: 1, write: true }], { indirect: true });
  const fl = r.drv.add([{ len: 16, data: blkHdr(BLK_T.FLUSH, 0) }, { len: 1, write: true }]);
  const id = r.drv.add([{ len: 16, data: blkHdr(BLK_T.GET_ID, 0) }, { len: 20, write: true }, { len: 1, write: true }]);
  const un = r.drv.add([{ len: 16, data: blkHdr(99, 0) }, { len: 1, write: true }]);
  r.dev.kick(r.q);
  const back = Buffer.alloc(1024);
  r.g.mem.read(rd.addrs[1], back, 0, 1024);
  assert.deepEqual(back, data);
  assert.equal(status(r, rd.addrs[2]), BLK_S.OK);
  assert.equal(status(r, fl.addrs[1]), BLK_S.OK);
  const idb = Buffer.alloc(20);
  r.g.mem.read(id.addrs[1], idb, 0, 20);
  assert.equal(idb.toString().replace(/\0+$/, ''), 'unit-serial');
  assert.equal(status(r, un.addrs[1]), BLK_S.UNSUPP);
  const used = r.drv.takeUsed();
  assert.deepEqual(used.map((u) => u.len), [1, 1025, 1, 21, 1], 'used length = bytes written to the driver');
  assert.equal(r.reports.length, 0, r.reports.join('\n'));
  done(r);
});

test('blk: bad requests get IOERR and never touch the image outside their range', () => {
  const r = blkRig({ sectors: 16 });
  const before = fs.readFileSync(r.image);
  const cases = [
    r.drv.add([{ len: 16, data: blkHdr(BLK_T.OUT, 15) }, { len: 1024, data: Buffer.alloc(1024, 1) }, { len: 1, write: true }]), // runs past the end
    r.drv.add([{ len: 16, data: blkHdr(BLK_T.OUT, 2) }, { len: 100, data: Buffer.alloc(100, 1) }, { len: 1, write: true }]), // not a sector multiple
    r.drv.add([{ len: 16, data: blkHdr(BLK_T.OUT, 2) }, { len: 512, addr: 0x7000_0000 }, { len: 1, write: true }]), // data outside memory
    r.drv.add([{ len: 16, data: blkHdr(BLK_T.IN, 2 ** 40) }, { len: 512, write: true }, { len: 1, write: true }]), // huge sector
    r.drv.add([{ len: 16, data: blkHdr(BLK_T.WRITE_ZEROES, 0) }, { len: 16, data: Buffer.from([14, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0]) }, { len: 1, write: true }]), // 14+8 > 16
  ];
  r.dev.kick(r.q);
  for (const c of cases) assert.equal(status(r, c.addrs[c.addrs.length - 1]), BLK_S.IOERR);
  assert.deepEqual(fs.readFileSync(r.image), before, 'image unchanged');
  assert.equal(r.reports.length, 5);
  assert.match(r.reports.join('\n'), /beyond the image/);
  assert.match(r.reports.join('\n'), /not a multiple of 512/);
  assert.match(r.reports.join('\n'), /in no memory region/);
  assert.deepEqual(r.drv.takeUsed().map((u) => u.len), [1, 1, 1, 1, 1]);
  // A chain whose status byte is unreachable gets used length 0 and a report.
  r.drv.add([{ len: 16, data: blkHdr(BLK_T.IN, 0) }, { len: 1, write: true, addr: 0x7000_0000 }]);
  r.dev.kick(r.q);
  const used = r.drv.takeUsed();
  assert.equal(used[used.length - 1].len, 0);
  assert.match(r.reports[r.reports.length - 1], /status byte is unreachable/);
  // WRITE_ZEROES inside the range zeroes exactly it.
  const wz = r.drv.add([{ len: 16, data: blkHdr(BLK_T.WRITE_ZEROES, 0) }, { len: 16, data: Buffer.from([2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]) }, { len: 1, write: true }]);
  r.dev.kick(r.q);
  assert.equal(status(r, wz.addrs[2]), BLK_S.OK);
  const img = fs.readFileSync(r.image);
  assert.ok(img.subarray(1024, 2560).every((b) => b === 0));
  assert.equal(img[1023], 0xee);
  assert.equal(img[2560], 0xee);
  done(r);
});

test('blk: a read-only image answers writes with IOERR and reads normally', () => {
  const r = blkRig({ readonly: true });
  assert.ok((r.dev.features >> 5n) & 1n, 'VIRTIO_BLK_F_RO offered');
  const before = fs.readFileSync(r.image);
  const w = r.drv.add([{ len: 16, data: blkHdr(BLK_T.OUT, 0) }, { len: 512, data: Buffer.alloc(512, 1) }, { len: 1, write: true }]);
  const z = r.drv.add([{ len: 16, data: blkHdr(BLK_T.WRITE_ZEROES, 0) }, { len: 16, data: Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]) }, { len: 1, write: true }]);
  const rd = r.drv.add([{ len: 16, data: blkHdr(BLK_T.IN, 0) }, { len: 512, write: true }, { len: 1, write: true }]);
  r.dev.kick(r.q);
  assert.equal(status(r, w.addrs[2]), BLK_S.IOERR);
  assert.equal(status(r, z.addrs[2]), BLK_S.IOERR);
  assert.equal(status(r, rd.addrs[2]), BLK_S.OK);
  assert.deepEqual(fs.readFileSync(r.image), before);
  done(r);
});

test('blk: config space carries capacity, seg_max, blk_size and num_queues', () => {
  const r = blkRig({ sectors: 100 });
  const c = Buffer.from(r.dev.config());
  assert.equal(c.readBigUInt64LE(0), 100n);
  assert.equal(c.readUInt32LE(12), 126);
  assert.equal(c.readUInt32LE(20), 512);
  assert.equal(c.readUInt16LE(34), 1);
  done(r);
});

// ---- virtio-net -----------------------------------------------------------------------------------------------

const GUEST_MAC = parseMac('52:54:00:12:34:56');
const GUEST_IP = parseIpv4('10.0.0.2');

function arpRequest(targetIp: Uint8Array): Buffer {
  const f = Buffer.alloc(42);
  f.fill(0xff, 0, 6); f.set(GUEST_MAC, 6); f.writeUInt16BE(0x0806, 12);
  f.set([0, 1, 8, 0, 6, 4, 0, 1], 14); f.set(GUEST_MAC, 22); f.set(GUEST_IP, 28); f.set(targetIp, 38);
  return f;
}
function echoRequest(dstMac: Uint8Array, dstIp: Uint8Array, payload: Buffer): Buffer {
  const f = Buffer.alloc(14 + 20 + 8 + payload.length);
  f.set(dstMac, 0); f.set(GUEST_MAC, 6); f.writeUInt16BE(0x0800, 12);
  f[14] = 0x45; f.writeUInt16BE(20 + 8 + payload.length, 16); f[22] = 64; f[23] = 1; f.set(GUEST_IP, 26); f.set(dstIp, 30);
  f.writeUInt16BE(inetChecksum(f, 14, 20), 24);
  f[34] = 8; f.writeUInt16BE(0x1234, 38); f.writeUInt16BE(7, 40); payload.copy(f, 42);
  f.writeUInt16BE(inetChecksum(f, 34, 8 + payload.length), 36);
  return f;
}

test('responder: answers ARP for its address and ICMP echo with valid checksums; ignores the rest', () => {
  const rsp = new Responder(parseMac('52:54:00:00:00:01'), parseIpv4('10.0.0.1'));
  const arp = rsp.answer(arpRequest(parseIpv4('10.0.0.1')), 0, 42)!;
  assert.ok(arp);
  assert.deepEqual([...arp.subarray(0, 6)], [...GUEST_MAC]);
  assert.equal(Buffer.from(arp).readUInt16BE(20), 2, 'ARP reply');
  assert.deepEqual([...arp.subarray(28, 32)], [10, 0, 0, 1]);
  assert.equal(rsp.answer(arpRequest(parseIpv4('10.0.0.9')), 0, 42), undefined, 'not our address');
  const req = echoRequest(rsp.mac, rsp.ip, Buffer.from('ping-payload-0123456789'));
  const rep = Buffer.from(rsp.answer(req, 0, req.length)!);
  assert.equal(rep[34], 0, 'echo reply');
  assert.equal(inetChecksum(rep, 14, 20), 0, 'IP header checksum valid');
  assert.equal(inetChecksum(rep, 34, req.length - 34), 0, 'ICMP checksum valid');
  assert.deepEqual([...rep.subarray(30, 34)], [...GUEST_IP]);
  assert.equal(rep.subarray(42, req.length).toString(), 'ping-payload-0123456789');
  const r = Buffer.from(rarpFrame(GUEST_MAC));
  assert.equal(r.readUInt16BE(12), 0x8035);
  assert.equal(r.readUInt16BE(20), 3);
});

interface NetRig { g: Guest; rx: SplitDriver; tx: SplitDriver; qrx: VirtQueue; qtx: VirtQueue; dev: NetDevice; reports: string[] }
function netRig(mrg = true): NetRig {
  const g = guest();
  const rx = new SplitDriver(g.mem, g.arena, 16);
  const tx = new SplitDriver(g.mem, g.arena, 16);
  const qrx = queue(g, rx, 0), qtx = queue(g, tx, 1);
  const dev = new NetDevice({ mode: 'loopback' }, undefined as unknown as Native, undefined as unknown as EventPump);
  const reports: string[] = [];
  dev.attach(ctx(g, [qrx, qtx], reports));
  dev.setFeatures((1n << 32n) | (mrg ? 1n << 15n : 0n));
  return { g, rx, tx, qrx, qtx, dev, reports };
}
function sendFrame(r: NetRig, frame: Buffer): void {
  r.tx.add([{ len: 12 + frame.length, data: Buffer.concat([Buffer.alloc(12), frame]) }]);
  r.dev.kick(r.qtx);
}
function received(r: NetRig, addrs: Map<number, number>): { hdr: Buffer; frame: Buffer }[] {
  return r.rx.takeUsed().map((u) => {
    const b = Buffer.alloc(u.len);
    r.g.mem.read(addrs.get(u.id)!, b, 0, u.len);
    return { hdr: b.subarray(0, 12), frame: b.subarray(12) };
  });
}

test('net loopback: frames come back with num_buffers = 1; ARP and ping get answered; TX chains are returned', () => {
  const r = netRig();
  const addrs = new Map<number, number>();
  for (let i = 0; i < 4; i++) { const a = r.rx.add([{ len: 1526, write: true }]); addrs.set(a.head, a.addrs[0]); }
  const other = Buffer.alloc(60, 0x42);
  sendFrame(r, other);
  sendFrame(r, arpRequest(parseIpv4('10.0.0.1')));
  sendFrame(r, echoRequest(parseMac('52:54:00:00:00:01'), parseIpv4('10.0.0.1'), Buffer.from('hello')));
  const got = received(r, addrs);
  assert.equal(got.length, 3);
  for (const x of got) assert.equal(x.hdr.readUInt16LE(10), 1, 'num_buffers');
  assert.deepEqual(got[0].frame, other, 'unknown frames echo back unchanged');
  assert.equal(got[1].frame.readUInt16BE(20), 2, 'ARP reply');
  assert.equal(got[2].frame[34], 0, 'ICMP echo reply');
  assert.equal(r.tx.takeUsed().length, 3, 'every TX chain used');
  assert.equal(r.dev.counters.echoReplies, 1);
  assert.deepEqual(r.reports, []);
});

test('net loopback: no RX buffers -> frames wait; an RX kick delivers them; MRG_RXBUF spreads a frame over buffers', () => {
  const r = netRig();
  const big = Buffer.alloc(1400, 0x5a);
  sendFrame(r, big);
  assert.equal(r.tx.takeUsed().length, 1);
  assert.equal(r.rx.usedIdx(), 0, 'nothing delivered without buffers');
  const addrs = new Map<number, number>();
  for (let i = 0; i < 3; i++) { const a = r.rx.add([{ len: 512, write: true }]); addrs.set(a.head, a.addrs[0]); }
  r.dev.kick(r.qrx);
  const used = r.rx.takeUsed();
  assert.deepEqual(used.map((u) => u.len), [512, 512, 1412 - 1024], 'one frame over three merged buffers');
  const first = Buffer.alloc(12);
  r.g.mem.read(addrs.get(used[0].id)!, first, 0, 12);
  assert.equal(first.readUInt16LE(10), 3, 'num_buffers = 3');
  const all = Buffer.concat(used.map((u) => { const b = Buffer.alloc(u.len); r.g.mem.read(addrs.get(u.id)!, b, 0, u.len); return b; }));
  assert.deepEqual(all.subarray(12), big);
});

test('net: malformed TX chains are reported and returned, never crash the device', () => {
  const r = netRig();
  r.tx.add([{ len: 5, data: Buffer.alloc(5) }]); // shorter than a header + ethernet header
  r.tx.add([{ len: 100, addr: 0x7000_0000 }]); // outside guest memory
  r.dev.kick(r.qtx);
  assert.equal(r.tx.takeUsed().length, 2);
  assert.equal(r.reports.length, 2);
  assert.match(r.reports.join('\n'), /readable bytes/);
  assert.match(r.reports.join('\n'), /in no memory region/);
});

// ---- packed rings ---------------------------------------------------------------------------------------------

function packedQueue(g: Guest, drv: PackedDriver, eventIdx = false): VirtQueue {
  const q = new VirtQueue(0, g.mem);
  q.packed = true;
  q.setNum(drv.num);
  q.setAddr(BigInt(drv.desc + DELTA), BigInt(drv.deviceEvent + DELTA), BigInt(drv.driverEvent + DELTA), 0);
  q.setBase(0x8000); // avail slot 0, wrap 1; used = avail
  q.eventIdx = eventIdx;
  q.indirectOk = true;
  q.started = q.enabled = true;
  q.callFd = devNull;
  return q;
}

test('packed ring: chains (direct, indirect) popped, used descriptors written with the right wrap, across the wrap', () => {
  const g = guest();
  const drv = new PackedDriver(g.mem, g.arena, 4);
  const q = packedQueue(g, drv);
  const seen: { id: number; len: number }[] = [];
  for (let round = 0; round < 5; round++) {
    const a = drv.add([{ len: 16, data: Buffer.alloc(16, round) }, { len: 64, write: true }]);
    const b = drv.add([{ len: 8 }, { len: 8, write: true }, { len: 8, write: true }], { indirect: true });
    q.prepare();
    const cs = q.pop(64);
    assert.deepEqual(cs.map((c) => [c.head, c.count, c.readable, c.writable, c.error]), [[a.id, 2, 16, 64, undefined], [b.id, 1, 8, 16, undefined]], `round ${round}`);
    const [c0, c1] = [cs[0], cs[1]];
    q.use(c0, 64);
    q.use(c1, 16);
    q.flush();
    seen.push(...drv.takeUsed());
  }
  assert.equal(seen.length, 10);
  assert.deepEqual(seen.slice(0, 2).map((u) => u.len), [64, 16]);
  // 5 rounds x 3 slots = 15 slots on a 4-slot ring: three wraps; the base encodes slot and both wrap counters.
  const base = q.stop();
  assert.equal(base & 0x7fff, 15 % 4);
  assert.equal((base >>> 16) & 0x7fff, 15 % 4);
  assert.equal(!!(base & 0x8000), Math.floor(15 / 4) % 2 === 0);
  assert.equal(q.stats.calls, 5);
});

test('packed ring: driver event suppression (disable, DESC with EVENT_IDX) and device event flags', () => {
  const g = guest();
  const drv = new PackedDriver(g.mem, g.arena, 8);
  const q = packedQueue(g, drv, true);
  const use = () => q.drain((cs) => { for (const c of cs) q.use(c, 1); return true; });
  drv.setDriverEvent(1); // disable
  drv.add([{ len: 1, write: true }]);
  const flagsDuring: number[] = [];
  q.drain((cs) => { flagsDuring.push(drv.deviceEventFlags()); for (const c of cs) q.use(c, 1); return true; });
  assert.deepEqual(flagsDuring, [1], 'device disables kicks while it works');
  assert.equal(drv.deviceEventFlags(), 2, 'then asks for DESC events (EVENT_IDX)');
  assert.equal(q.stats.calls, 0, 'no call: the driver disabled events');
  drv.setDriverEvent(2, 0x8000 | 3); // call when the used slot passes 3 (wrap 1)
  drv.add([{ len: 1, write: true }]);
  use();
  assert.equal(q.stats.calls, 0, 'slot 2 has not passed the event slot 3');
  drv.add([{ len: 1, write: true }]);
  drv.add([{ len: 1, write: true }]);
  use();
  assert.equal(q.stats.calls, 1, 'slot 4 passes 3');
  assert.equal(drv.takeUsed().length, 4);
});

test('packed ring: a chain that runs into an unavailable descriptor faults the ring instead of guessing', () => {
  const g = guest();
  const drv = new PackedDriver(g.mem, g.arena, 8);
  const q = packedQueue(g, drv);
  drv.add([{ len: 16 }, { len: 16, write: true }]);
  // Make slot 1 (the chain's second descriptor) look unavailable.
  g.mem.write(drv.desc + 16 + 14, Buffer.from([0, 0]), 0, 2);
  q.prepare();
  assert.throws(() => q.pop(8), (e: Error) => e instanceof QueueError && /not available/.test(e.message));
  assert.match(q.fault!, /packed chain at slot 0/);
});

test('net: SEND_RARP in loopback mode reaches the guest as a RARP broadcast from the announced MAC', () => {
  const r = netRig();
  const a = r.rx.add([{ len: 1526, write: true }]);
  r.dev.rarp(GUEST_MAC);
  const used = r.rx.takeUsed();
  assert.equal(used.length, 1);
  const f = Buffer.alloc(used[0].len);
  r.g.mem.read(a.addrs[0], f, 0, f.length);
  assert.equal(f.readUInt16BE(12 + 12), 0x8035, 'ethertype RARP');
  assert.deepEqual([...f.subarray(12 + 6, 12 + 12)], [...GUEST_MAC], 'source MAC = the announced one');
  assert.equal(r.dev.counters.rarp, 1);
});

test('ring indices shared with the driver move as one aligned 8-byte access (never a torn 2-byte copy)', () => {
  const g = guest();
  const drv = new SplitDriver(g.mem, g.arena, 8);
  const q = queue(g, drv);
  const writes: [number, number][] = [];
  const reads: [number, number][] = [];
  const w = g.mem.write.bind(g.mem), r = g.mem.read.bind(g.mem);
  g.mem.write = (gpa, src, off, len) => { writes.push([gpa, len]); w(gpa, src, off, len); };
  g.mem.read = (gpa, dst, off, len) => { reads.push([gpa, len]); r(gpa, dst, off, len); };
  drv.add([{ len: 16 }, { len: 1, write: true }]);
  q.drain((cs) => { for (const c of cs) q.use(c, 1); return true; });
  assert.ok(writes.some(([a, l]) => a === drv.used && l === 8), 'used flags/idx written as 8 bytes at the used ring');
  assert.ok(!writes.some(([a, l]) => a === drv.used + 2 && l === 2), 'no 2-byte write of used idx');
  assert.ok(!reads.some(([a, l]) => a === drv.avail + 2 && l === 2), 'no 2-byte read of avail idx');
  assert.equal(drv.takeUsed().length, 1);
  assert.equal(drv.usedFlags(), 0);
});
