// Unit tests for payload decoding: virtio-net frames (TX/RX, ARP, ICMP, UDP, TCP, IPv6, VLAN), virtio-blk requests, hex.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { snapshotRing } from '../../core/virtio/snapshot';
import { decodePayload, type Payload } from '../../core/virtio/payload';
import { ipv6 as fmt6, netHeaderSize, summarizeFrame } from '../../core/virtio/net';
import type { BlkPayload } from '../../core/virtio/blk';
import type { NetPayload } from '../../core/virtio/net';
import type { Chain } from '../../core/virtio/ring';
import { SplitRingBuilder, PackedRingBuilder, makeMemory } from '../helpers/ringBuilder';
import * as P from '../helpers/ringPackets';

const V1 = 1n << 32n;
const MRG = 1n << 15n;

function netRing(index: number) {
  const mem = makeMemory(1 << 20);
  return { mem, rb: new SplitRingBuilder(mem, 16, index) };
}
const first = (p: unknown): NetPayload => p as NetPayload;
const summaries = (chains: Chain[]): string[] => chains.map((c) => first(c.payload).summary);

test('net TX: ARP, ICMP echo, UDP, TCP, one summary line each', () => {
  const { mem, rb } = netRing(1);
  rb.add([{ len: 12 + 42, data: P.withHdr(P.arpRequest('52:54:00:00:00:02', '10.0.0.2', '10.0.0.1')) }]);
  rb.add([{ len: 12 + 98, data: P.withHdr(P.eth('52:54:00:00:00:01', '52:54:00:00:00:02', 0x0800, P.ipv4('10.0.0.2', '10.0.0.1', 1, P.icmpEcho(true, 1, 3)))) }]);
  rb.add([{ len: 12 + 14 + 20 + 8 + 300, data: P.withHdr(P.eth('ff:ff:ff:ff:ff:ff', '52:54:00:00:00:02', 0x0800, P.ipv4('0.0.0.0', '255.255.255.255', 17, P.udp(68, 67, 300)))) }]);
  rb.add([{ len: 12 + 54, data: P.withHdr(P.eth('52:54:00:00:00:01', '52:54:00:00:00:02', 0x0800, P.ipv4('10.0.0.2', '10.0.0.1', 6, P.tcp(40000, 80, 0x02, 1000, 0, 0)))) }]);
  rb.add([{ len: 12 + 42, data: P.withHdr(P.arpReply('52:54:00:00:00:01', '10.0.0.1', '52:54:00:00:00:02', '10.0.0.2')) }]);
  const s = snapshotRing(mem, rb.cfg, { device: 'net', features: V1 });
  assert.deepEqual(summaries(s.chains), [
    'ARP who-has 10.0.0.1 tell 10.0.0.2',
    'IPv4 10.0.0.2 > 10.0.0.1 ICMP echo request id=1 seq=3 len=84',
    'UDP 0.0.0.0:68 > 255.255.255.255:67 len=300',
    'TCP 10.0.0.2:40000 > 10.0.0.1:80 [S] seq=1000 win=65535 len=0',
    'ARP reply 10.0.0.1 is-at 52:54:00:00:00:01',
  ]);
  const p = first(s.chains[1].payload);
  assert.equal(p.dir, 'tx');
  assert.equal(p.frameLen, 98);
  assert.equal(p.hdr?.size, 12);
  assert.equal(p.eth?.src, '52:54:00:00:00:02');
});

test('net TX: legacy 10-byte header in its own descriptor, frame in the next (no ANY_LAYOUT)', () => {
  const { mem, rb } = netRing(3);
  const frame = new Uint8Array(P.eth('52:54:00:00:00:01', '52:54:00:00:00:02', 0x0800, P.ipv4('10.0.0.2', '10.0.0.1', 1, P.icmpEcho(false, 7, 9))));
  rb.add([{ len: 10, data: P.netHdr(10) }, { len: frame.length, data: frame }]);
  assert.equal(netHeaderSize(0n), 10);
  assert.equal(netHeaderSize(MRG), 12);
  assert.equal(netHeaderSize(1n << 57n), 20);
  const s = snapshotRing(mem, rb.cfg, { device: 'net', features: 0n });
  assert.equal(first(s.chains[0].payload).summary, 'IPv4 10.0.0.2 > 10.0.0.1 ICMP echo reply id=7 seq=9 len=84');
});

test('net RX: empty until used, then the device-written frame up to the used length; MRG_RXBUF and GSO', () => {
  const { mem, rb } = netRing(0);
  const h = rb.add([{ len: 1526, write: true }]);
  let s = snapshotRing(mem, rb.cfg, { device: 'net', features: V1 | MRG });
  assert.equal(first(s.chains[0].payload).summary, 'RX buffer 1526 bytes (not filled yet)');
  const frame = P.withHdr(P.eth('52:54:00:00:00:02', '52:54:00:00:00:01', 0x0800, P.ipv4('10.0.0.1', '10.0.0.2', 1, P.icmpEcho(false, 1, 3))), 12, { numBuffers: 2, gsoType: 1, gsoSize: 1448 });
  rb.use(h, frame.length, frame);
  s = snapshotRing(mem, rb.cfg, { device: 'net', features: V1 | MRG });
  const p = first(s.chains[0].payload);
  assert.equal(p.dir, 'rx');
  assert.equal(p.frameLen, 98);
  assert.equal(p.summary, 'IPv4 10.0.0.1 > 10.0.0.2 ICMP echo reply id=1 seq=3 len=84 [gso TCPV4 mss 1448] (1 of 2 buffers)');
  assert.equal(p.hdr?.numBuffers, 2);
});

test('net: VLAN, IPv6 (ICMPv6 neighbor solicitation, UDP), unknown ethertype, truncated frames', () => {
  const vlan = summarizeFrame(new Uint8Array(P.eth('ff:ff:ff:ff:ff:ff', '52:54:00:00:00:02', 0x0806, P.arpRequest('52:54:00:00:00:02', '10.0.0.2', '10.0.0.1').slice(14), 100)));
  assert.equal(vlan.summary, 'vlan 100 ARP who-has 10.0.0.1 tell 10.0.0.2');
  assert.equal(vlan.eth?.vlan?.[0].id, 100);
  const ns = [135, 0, 0, 0, 0, 0, 0, 0, ...P.ip6Bytes('fe80::1')];
  assert.equal(summarizeFrame(new Uint8Array(P.eth('33:33:ff:00:00:01', '52:54:00:00:00:02', 0x86dd, P.ipv6('fe80::2', 'ff02::1:ff00:1', 58, ns)))).summary,
    'IPv6 fe80::2 > ff02::1:ff00:1 ICMPv6 neighbor solicitation who-has fe80::1 len=64');
  assert.equal(summarizeFrame(new Uint8Array(P.eth('33:33:00:01:00:02', '52:54:00:00:00:02', 0x86dd, P.ipv6('fe80::2', 'ff02::1:2', 17, P.udp(546, 547, 20))))).summary,
    'UDP [fe80::2]:546 > [ff02::1:2]:547 len=20');
  assert.equal(summarizeFrame(new Uint8Array(P.eth('01:80:c2:00:00:0e', '52:54:00:00:00:02', 0x88cc, [1, 2, 3]))).summary,
    'ether 52:54:00:00:00:02 > 01:80:c2:00:00:0e LLDP len=17');
  assert.equal(summarizeFrame(new Uint8Array(P.eth('01:80:c2:00:00:0e', '52:54:00:00:00:02', 0x1234, []))).summary,
    'ether 52:54:00:00:00:02 > 01:80:c2:00:00:0e type 0x1234 len=14');
  assert.equal(summarizeFrame(new Uint8Array(10)).summary, 'frame truncated (10 bytes)');
  assert.equal(summarizeFrame(new Uint8Array(P.eth('ff:ff:ff:ff:ff:ff', '52:54:00:00:00:02', 0x0800, [0x45, 0]))).summary, 'IPv4 truncated');
  assert.equal(fmt6(new Uint8Array(P.ip6Bytes('2001:db8:0:0:1:0:0:1')), 0), '2001:db8::1:0:0:1');
  assert.equal(fmt6(new Uint8Array(16), 0), '::');
});

test('net control queue: class/command and ack', () => {
  const { mem, rb } = netRing(2);
  const h = rb.add([{ len: 4, data: new Uint8Array([4, 0, 2, 0]) }, { len: 1, write: true }]);
  rb.use(h, 1, new Uint8Array([0]));
  const s = snapshotRing(mem, rb.cfg, { device: 'net', features: V1, ctrlQueue: 2 });
  assert.equal(first(s.chains[0].payload).summary, 'CTRL MQ VQ_PAIRS_SET 0200 -> OK');
});

const blk = (p: unknown): BlkPayload => p as BlkPayload;

test('blk: OUT in flight, then used with status OK; IN with data preview; FLUSH; GET_ID; DISCARD; errors', () => {
  const mem = makeMemory(1 << 20);
  const rb = new SplitRingBuilder(mem, 16, 0);
  const out = rb.add([{ len: 16, data: P.blkHdr(1, 2048n) }, { len: 4096, data: new Uint8Array(4096).fill(0xee) }, { len: 1, write: true }]);
  const inn = rb.add([{ len: 16, data: P.blkHdr(0, 8n) }, { len: 512, write: true }, { len: 1, write: true }]);
  const flush = rb.add([{ len: 16, data: P.blkHdr(4, 0n) }, { len: 1, write: true }]);
  const getId = rb.add([{ len: 16, data: P.blkHdr(8, 0n) }, { len: 20, write: true }, { len: 1, write: true }]);
  const disc = rb.add([{ len: 16, data: P.blkHdr(11, 0n) }, { len: 32, data: new Uint8Array([...P.discardSeg(100n, 8, true), ...P.discardSeg(300n, 16)]) }, { len: 1, write: true }]);
  const bad = rb.add([{ len: 16, data: P.blkHdr(1, 1n) }, { len: 512 }]);
  let s = snapshotRing(mem, rb.cfg, { device: 'blk', preview: 4 });
  let p = blk(s.chains[0].payload);
  assert.deepEqual([p.type, p.sector, p.len, p.status, p.summary], ['OUT', 2048n, 4096, undefined, 'OUT sector=2048 len=4096 (in flight)']);
  assert.equal(p.preview, 'eeeeeeee …');
  rb.use(out, 1, new Uint8Array([0]));
  const data = new Uint8Array(513); data.fill(0x5a, 0, 512); data[512] = 0;
  rb.use(inn, 513, data);
  rb.use(flush, 1, new Uint8Array([2]));
  rb.use(getId, 21, new Uint8Array([...Buffer.from('vhost-lens-disk'), 0, 0, 0, 0, 0, 1]));
  rb.use(disc, 1, new Uint8Array([0]));
  rb.use(bad, 0);
  s = snapshotRing(mem, rb.cfg, { device: 'blk', preview: 4 });
  const ps = s.chains.map((c) => blk(c.payload));
  assert.deepEqual(ps.map((x) => x.summary), [
    'OUT sector=2048 len=4096 status=OK',
    'IN sector=8 len=512 status=OK',
    'FLUSH status=UNSUPP',
    'GET_ID len=20 id="vhost-lens-disk" status=IOERR',
    'DISCARD [100+8 unmap] [300+16] status=OK',
    'OUT sector=1 len=512 status=?',
  ]);
  assert.equal(ps[1].preview, '5a5a5a5a …');
  assert.deepEqual([ps[0].statusCode, ps[2].statusCode, ps[3].statusCode], [0, 2, 1]);
  assert.equal(ps[5].error, 'no device-writable buffer for the status byte');
  assert.equal(ps[4].segments?.length, 2);
});

test('blk over a packed ring with an indirect table: in flight, then used (chain known, as from the watcher)', () => {
  const mem = makeMemory(1 << 20);
  const rb = new PackedRingBuilder(mem, 8, 0);
  const id = rb.add([{ len: 16, data: P.blkHdr(0, 77n) }, { len: 4096, write: true }, { len: 1, write: true }], { indirect: true });
  const s1 = snapshotRing(mem, rb.cfg, { device: 'blk' });
  assert.equal(s1.kind, 'packed');
  assert.equal(blk(s1.chains[0].payload).summary, 'IN sector=77 len=4096 (in flight)');
  rb.use(id, 4097, new Uint8Array([...new Uint8Array(4096), 0]));
  const s2 = snapshotRing(mem, rb.cfg, { device: 'blk', known: new Map([[id, s1.chains[0]]]) });
  assert.equal(s2.chains.length, 0);
  assert.equal(s2.kind === 'packed' && blk(s2.used[0].chain?.payload).summary, 'IN sector=77 len=4096 status=OK');
});

test('hex payload for other devices; unreadable buffers give an error payload, never an exception', () => {
  const mem = makeMemory(1 << 20);
  const rb = new SplitRingBuilder(mem, 8, 0);
  const h = rb.add([{ len: 4, data: new Uint8Array([1, 2, 3, 4]) }, { len: 8, write: true }]);
  rb.use(h, 2, new Uint8Array([0xaa, 0xbb]));
  const s = snapshotRing(mem, rb.cfg, { device: 'unknown' });
  assert.deepEqual(s.chains[0].payload, { kind: 'hex', summary: '4 bytes out, 8 bytes in (2 written)', out: '01020304', in: 'aabb' });
  const chain: Chain = { head: 0, descs: [{ index: 0, addr: 0xdead_0000n, len: 16, flags: 0, write: false }], readable: 16, writable: 0, state: 'inflight' };
  for (const device of ['net', 'blk', 'fs'] as const) {
    const p: Payload = decodePayload(mem, chain, 1, { device });
    assert.equal(p.kind, 'hex');
    assert.match((p as { error?: string }).error ?? '', /address is in no memory region/);
  }
});

test('blk preview: 16 bytes by default through decodePayload, none when asked for 0', () => {
  const mem = makeMemory(1 << 20);
  const rb = new SplitRingBuilder(mem, 8, 0);
  const marker = Buffer.from('VLRINGmarker0123456789');
  const out = rb.add([{ len: 16, data: P.blkHdr(1, 3000n) }, { len: 512, data: new Uint8Array([...marker, ...new Uint8Array(512 - marker.length)]) }, { len: 1, write: true }]);
  const inn = rb.add([{ len: 16, data: P.blkHdr(0, 3000n) }, { len: 512, write: true }, { len: 1, write: true }]);
  rb.use(out, 1, new Uint8Array([0]));
  rb.use(inn, 513, new Uint8Array([...marker, ...new Uint8Array(512 - marker.length), 0]));
  const s = snapshotRing(mem, rb.cfg, { device: 'blk' });
  const [o, i] = s.chains.map((c) => blk(c.payload));
  assert.equal(Buffer.from(o.preview!.replace(/[^0-9a-f]/g, ''), 'hex').toString(), marker.subarray(0, 16).toString());
  assert.equal(Buffer.from(i.preview!.replace(/[^0-9a-f]/g, ''), 'hex').toString(), marker.subarray(0, 16).toString());
  const s0 = snapshotRing(mem, rb.cfg, { device: 'blk', preview: 0 });
  assert.deepEqual(s0.chains.map((c) => blk(c.payload).preview), [undefined, undefined]);
});
