// Session over real decoded sequences (QEMU + qemu-storage-daemon blk, QEMU + DPDK net, DPDK virtio-user + DPDK) rebuilt as wire bytes.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Session, type SessionMessage, type StateChange } from '../../core/session/session';
import { featureNames, protocolFeatureNames, statusNames } from '../../core/protocol/features';
import { msg, payload, FakeFds, Feeder, type MessageBuilder, type PayloadBuilder } from '../helpers/wire';

type P = (p: PayloadBuilder) => PayloadBuilder;
/** A front-end request (main socket). */
const F = (name: string, p?: P, o: { needReply?: boolean; fds?: number; kind?: 'eventfd' | 'memfd' | 'socket' } = {}): MessageBuilder => {
  const b = msg(name).needReply(!!o.needReply).fds(o.fds ?? 0, o.kind);
  return p ? b.payload(p) : b;
};
/** A back-end reply (main socket). Acks are the u64 0 both libvhost-user and DPDK send (size 8). */
const B = (name: string, p?: P): MessageBuilder => msg(name).reply().payload(p ?? ((x) => x.u64(0)));
const u64 = (v: bigint | number): P => (p) => p.u64(v);
const state = (i: number, n: number): P => (p) => p.vringState(i, n);
const kick = (i: number): P => (p) => p.vringFd(i);
const addr = (index: number, desc: bigint, used: bigint, avail: bigint, log: bigint): P => (p) => p.vringAddr({ index, desc, used, avail, log });
const efd = { fds: 1, kind: 'eventfd' as const };

interface Run {
  session: Session;
  fds: FakeFds;
  results: { msg: SessionMessage; changes: StateChange[] }[];
  /** State snapshots after the given trace line numbers (1-based). */
  at: Map<number, ReturnType<typeof snapshot>>;
}

function snapshot(s: Session) {
  const st = s.state;
  return {
    status: st.status,
    backendChannel: st.backendChannel,
    memory: st.memory.map((r) => ({ ...r })),
    vrings: new Map([...st.vrings].map(([k, v]) => [k, { ...v, addr: v.addr && { ...v.addr }, base: v.base && { ...v.base } }])),
    featuresAcked: st.features.acked,
    device: st.device,
  };
}

function play(trace: MessageBuilder[], device: 'unknown' | 'blk' = 'unknown'): Run {
  const fds = new FakeFds();
  const session = new Session(7, { closeFd: fds.closeFd }, device);
  const feeder = new Feeder(session, fds);
  const at = new Map<number, ReturnType<typeof snapshot>>();
  const results = trace.map((b, i) => {
    const r = feeder.feed(b);
    at.set(i + 1, snapshot(session));
    return r;
  });
  return { session, fds, results, at };
}

/** Every message clean; every reply paired with the request just before it; no promised reply missing. */
function assertCleanAndPaired(run: Run): void {
  for (const { msg: m } of run.results) {
    assert.deepEqual(m.problems, [], `#${m.seq} ${m.name}${m.reply ? ' reply' : ''}: ${JSON.stringify(m.problems)}`);
    assert.ok(m.spec, `#${m.seq} unknown`);
    if (m.reply) {
      const req = run.results[m.seq - 2].msg;
      assert.equal(m.replyTo, req.seq, `#${m.seq} ${m.name} reply pairs with #${m.replyTo}`);
      assert.equal(req.name, m.name);
      assert.equal(req.replySeq, m.seq);
      assert.equal(req.expectsReply, true, `#${req.seq} ${req.name} should expect its reply`);
    } else if (m.expectsReply) {
      assert.equal(typeof m.replySeq, 'number', `#${m.seq} ${m.name} got no reply`);
    }
  }
  assert.deepEqual(run.session.missingReplies(), []);
  // The session's bookkeeping of messages is complete and in order.
  assert.deepEqual(run.session.messages.map((m) => m.seq), run.results.map((r) => r.msg.seq));
}

function assertFdsClosedOnce(run: Run): void {
  run.session.close();
  assert.deepEqual(run.fds.violations, []);
  assert.deepEqual(run.fds.open, [], 'every kept fd closed');
  for (const fd of run.fds.handedIn) assert.equal(run.fds.closed.get(fd), 1, `fd ${fd}`);
}

// ---- blk-frontend-qemu.decoded.txt: QEMU 7.2 vhost-user-blk-pci <-> qemu-storage-daemon (libvhost-user)
const BLK_OFFERED = 0x175007e46n;
const BLK_PF = 0x8f2bn;
/** virtio_blk_config as GET_CONFIG returns it: capacity 131072 sectors (64 MiB), then the rest. */
const BLK_CONFIG = (() => { const c = new Uint8Array(57); c[2] = 0x02; c[20] = 0x00; c[21] = 0x02; return c; })();
const BLK_TRACE: MessageBuilder[] = [
  /* 1 */ F('GET_FEATURES'),
  /* 2 */ B('GET_FEATURES', u64(BLK_OFFERED)),
  /* 3 */ F('GET_PROTOCOL_FEATURES'),
  /* 4 */ B('GET_PROTOCOL_FEATURES', u64(BLK_PF)),
  /* 5 */ F('SET_PROTOCOL_FEATURES', u64(BLK_PF)),
  /* 6 */ F('GET_QUEUE_NUM'),
  /* 7 */ B('GET_QUEUE_NUM', u64(1)),
  /* 8 */ F('GET_MAX_MEM_SLOTS'),
  /* 9 */ B('GET_MAX_MEM_SLOTS', u64(32)),
  /* 10 */ F('SET_BACKEND_REQ_FD', undefined, { needReply: true, fds: 1, kind: 'socket' }),
  /* 11 */ B('SET_BACKEND_REQ_FD'),
  /* 12 */ F('SET_OWNER'),
  /* 13 */ F('GET_FEATURES'),
  /* 14 */ B('GET_FEATURES', u64(BLK_OFFERED)),
  /* 15 */ F('SET_VRING_CALL', kick(0), efd),
  /* 16 */ F('SET_VRING_ERR', kick(0), efd),
  /* 17 */ F('GET_CONFIG', (p) => p.config({ offset: 0, flags: 0, data: new Uint8Array(57) })),
  /* 18 */ B('GET_CONFIG', (p) => p.config({ offset: 0, flags: 0, data: BLK_CONFIG })),
  /* 19 */ F('SET_FEATURES', u64(0x140000046n)),
  /* 20 */ F('SET_VRING_CALL', kick(0), efd),
  /* 21 */ F('SET_FEATURES', u64(0x140000046n)),
  /* 22 */ F('ADD_MEM_REG', (p) => p.singleRegion({ gpa: 0, size: 0x10000000, uva: 0x7efc03fff000n, offset: 0 }), { needReply: true, fds: 1, kind: 'memfd' }),
  /* 23 */ B('ADD_MEM_REG'),
  /* 24 */ F('SET_VRING_NUM', state(0, 128)),
  /* 25 */ F('SET_VRING_BASE', state(0, 0)),
  /* 26 */ F('SET_VRING_ADDR', addr(0, 0x7efc13fdc000n, 0x7efc13fdd000n, 0x7efc13fdc800n, 0xffde000n)),
  /* 27 */ F('SET_VRING_KICK', kick(0), efd),
  /* 28 */ F('SET_VRING_ENABLE', state(0, 1)),
  /* 29 */ F('SET_VRING_ENABLE', state(0, 0)),
  /* 30 */ F('GET_VRING_BASE', state(0, 0)),
  /* 31 */ B('GET_VRING_BASE', state(0, 1)),
  /* 32 */ F('SET_FEATURES', u64(0x170006e46n)),
  /* 33 */ F('SET_VRING_CALL', kick(0), efd),
  /* 34 */ F('SET_FEATURES', u64(0x170006e46n)),
  /* 35 */ F('SET_VRING_NUM', state(0, 128)),
  /* 36 */ F('SET_VRING_BASE', state(0, 0)),
  /* 37 */ F('SET_VRING_ADDR', addr(0, 0x7efc06a76000n, 0x7efc06a76940n, 0x7efc06a76800n, 0x2a77940n)),
  /* 38 */ F('SET_VRING_KICK', kick(0), efd),
  /* 39 */ F('SET_VRING_ENABLE', state(0, 1)),
  /* 40 */ F('SET_VRING_ENABLE', state(0, 0)),
  /* 41 */ F('GET_VRING_BASE', state(0, 0)),
  /* 42 */ B('GET_VRING_BASE', state(0, 58)),
];

describe('blk: QEMU <-> qemu-storage-daemon', () => {
  const run = play(BLK_TRACE);
  const st = run.session.state;

  test('every message decodes cleanly and every reply pairs with its request', () => assertCleanAndPaired(run));

  test('features offered and acked, by name', () => {
    assert.equal(st.features.offered, BLK_OFFERED);
    assert.deepEqual(featureNames(st.features.offered!, 'blk'), [
      'SIZE_MAX', 'SEG_MAX', 'BLK_SIZE', 'FLUSH', 'TOPOLOGY', 'CONFIG_WCE', 'MQ', 'DISCARD', 'WRITE_ZEROES',
      'NOTIFY_ON_EMPTY', 'LOG_ALL', 'RING_INDIRECT_DESC', 'RING_EVENT_IDX', 'PROTOCOL_FEATURES', 'VERSION_1',
    ]);
    assert.equal(run.at.get(21)!.featuresAcked, 0x140000046n);
    assert.deepEqual(featureNames(0x140000046n, 'blk'), ['SIZE_MAX', 'SEG_MAX', 'BLK_SIZE', 'PROTOCOL_FEATURES', 'VERSION_1']);
    assert.equal(st.features.acked, 0x170006e46n);
    assert.deepEqual(featureNames(st.features.acked!, st.device), [
      'SIZE_MAX', 'SEG_MAX', 'BLK_SIZE', 'FLUSH', 'TOPOLOGY', 'CONFIG_WCE', 'DISCARD', 'WRITE_ZEROES',
      'RING_INDIRECT_DESC', 'RING_EVENT_IDX', 'PROTOCOL_FEATURES', 'VERSION_1',
    ]);
  });

  test('protocol features, queue count, memory slots, owner, config', () => {
    assert.equal(st.protocolFeatures.offered, BLK_PF);
    assert.equal(st.protocolFeatures.acked, BLK_PF);
    assert.deepEqual(protocolFeatureNames(st.protocolFeatures.acked!), [
      'MQ', 'LOG_SHMFD', 'REPLY_ACK', 'BACKEND_REQ', 'PAGEFAULT', 'CONFIG', 'BACKEND_SEND_FD', 'HOST_NOTIFIER', 'CONFIGURE_MEM_SLOTS',
    ]);
    assert.equal(st.queueNum, 1);
    assert.equal(st.maxMemSlots, 32);
    assert.equal(st.owner, true);
    assert.equal(st.config?.offset, 0);
    assert.deepEqual(st.config?.data, BLK_CONFIG);
  });

  test('device inferred as blk from the first GET_FEATURES reply', () => {
    assert.equal(st.device, 'blk');
    assert.equal(run.at.get(2)!.device, 'blk');
    const deviceChanges = run.results.flatMap((r) => r.changes).filter((c) => c.what === 'device');
    assert.deepEqual(deviceChanges, [{ what: 'device', device: 'blk' }]);
  });

  test('back-end channel open after SET_BACKEND_REQ_FD', () => {
    assert.equal(run.at.get(9)!.backendChannel, 'none');
    assert.equal(run.at.get(10)!.backendChannel, 'open');
    assert.equal(st.backendChannel, 'open');
  });

  test('one ADD_MEM_REG region: gpa 0, 256M, with its kept fd', () => {
    assert.equal(st.memory.length, 1);
    const [r] = st.memory;
    assert.equal(r.guestPhysAddr, 0n);
    assert.equal(r.memorySize, 256n << 20n);
    assert.equal(r.userspaceAddr, 0x7efc03fff000n);
    assert.equal(r.mmapOffset, 0n);
    assert.equal(r.addedBy, 'ADD_MEM_REG');
    assert.equal(r.seq, 22);
    assert.equal(r.fdInfo?.kind, 'memfd');
    assert.ok(r.fd !== undefined && run.fds.isOpen(r.fd), 'the region holds its kept fd open');
    assert.equal('padding' in r, false);
  });

  test('vring 0 running after the first start: num 128, addresses, base, kick/call/err fds, enabled', () => {
    const v = run.at.get(28)!.vrings.get(0)!;
    assert.equal(v.num, 128);
    assert.deepEqual(v.addr, { flags: 0, desc: 0x7efc13fdc000n, used: 0x7efc13fdd000n, avail: 0x7efc13fdc800n, log: 0xffde000n });
    assert.equal(v.base?.num, 0);
    assert.equal(v.kick, 'fd');
    assert.equal(v.call, 'fd');
    assert.equal(v.err, 'fd');
    assert.equal(v.enabled, true);
    assert.equal(v.stopped, false);
    assert.equal(v.stoppedAt, undefined);
  });

  test('stopped by GET_VRING_BASE at 1, restarted, stopped again at 58', () => {
    const first = run.at.get(31)!.vrings.get(0)!;
    assert.equal(first.enabled, false);
    assert.equal(first.stopped, true);
    assert.equal(first.stoppedAt, 1);
    const running = run.at.get(39)!.vrings.get(0)!;
    assert.equal(running.stopped, false);
    assert.equal(running.enabled, true);
    assert.deepEqual(running.addr, { flags: 0, desc: 0x7efc06a76000n, used: 0x7efc06a76940n, avail: 0x7efc06a76800n, log: 0x2a77940n });
    const v = st.vrings.get(0)!;
    assert.equal(v.stopped, true);
    assert.equal(v.stoppedAt, 58);
    assert.equal(v.enabled, false);
    assert.deepEqual([...st.vrings.keys()], [0]);
  });

  test('kept fds: the memory fd is closed exactly once when the session closes', () => {
    assert.equal(run.fds.handedIn.size, 1);
    assertFdsClosedOnce(run);
    assert.deepEqual(run.session.state.memory, []);
  });
});

// ---- net-frontend-qemu.decoded.txt: QEMU 7.2 virtio-net-pci (vhost-user netdev) <-> dpdk-testpmd net_vhost
const NET_OFFERED = 0xd7c66e7cbn;
const NET_PF = 0x10cbfn;
const NET_TRACE: MessageBuilder[] = [
  /* 1 */ F('GET_FEATURES'),
  /* 2 */ B('GET_FEATURES', u64(NET_OFFERED)),
  /* 3 */ F('GET_PROTOCOL_FEATURES'),
  /* 4 */ B('GET_PROTOCOL_FEATURES', u64(NET_PF)),
  /* 5 */ F('SET_PROTOCOL_FEATURES', u64(NET_PF)),
  /* 6 */ F('GET_QUEUE_NUM'),
  /* 7 */ B('GET_QUEUE_NUM', u64(128)),
  /* 8 */ F('SET_BACKEND_REQ_FD', undefined, { needReply: true, fds: 1, kind: 'socket' }),
  /* 9 */ B('SET_BACKEND_REQ_FD'),
  /* 10 */ F('SET_OWNER'),
  /* 11 */ F('GET_FEATURES'),
  /* 12 */ B('GET_FEATURES', u64(NET_OFFERED)),
  /* 13 */ F('SET_VRING_CALL', kick(0), efd),
  /* 14 */ F('SET_VRING_ERR', kick(0), efd),
  /* 15 */ F('SET_VRING_CALL', kick(1), efd),
  /* 16 */ F('SET_VRING_ERR', kick(1), efd),
  /* 17-26 */ ...Array.from({ length: 10 }, (_, i) => F('SET_VRING_ENABLE', state(i % 2, 1))),
  /* 27 */ F('SET_FEATURES', u64(0x17020e783n)),
  /* 28 */ F('GET_STATUS'),
  /* 29 */ B('GET_STATUS', u64(0)),
  /* 30 */ F('SET_STATUS', u64(8)),
  /* 31 */ F('SET_MEM_TABLE', (p) => p.memTable([{ gpa: 0, size: 0x10000000, uva: 0x7f319bfff000n, offset: 0 }]), { needReply: true, fds: 1, kind: 'memfd' }),
  /* 32 */ B('SET_MEM_TABLE'),
  /* 33 */ F('SET_VRING_NUM', state(0, 256)),
  /* 34 */ F('SET_VRING_BASE', state(0, 0)),
  /* 35 */ F('SET_VRING_ADDR', addr(0, 0x7f319e905000n, 0x7f319e906240n, 0x7f319e906000n, 0x2907240n)),
  /* 36 */ F('SET_VRING_KICK', kick(0), efd),
  /* 37 */ F('SET_VRING_CALL', kick(0), efd),
  /* 38 */ F('SET_VRING_NUM', state(1, 256)),
  /* 39 */ F('SET_VRING_BASE', state(1, 0)),
  /* 40 */ F('SET_VRING_ADDR', addr(1, 0x7f319e8fb000n, 0x7f319e8fc240n, 0x7f319e8fc000n, 0x28fd240n)),
  /* 41 */ F('SET_VRING_KICK', kick(1), efd),
  /* 42 */ F('SET_VRING_CALL', kick(1), efd),
  /* 43 */ F('GET_STATUS'),
  /* 44 */ B('GET_STATUS', u64(8)),
  /* 45 */ F('SET_STATUS', u64(15)),
  /* 46 */ F('SET_STATUS', u64(0)),
  /* 47 */ F('GET_VRING_BASE', state(0, 0)),
  /* 48 */ B('GET_VRING_BASE', state(0, 13)),
  /* 49 */ F('GET_VRING_BASE', state(1, 0)),
  /* 50 */ B('GET_VRING_BASE', state(1, 13)),
  /* 51 */ F('SET_VRING_ENABLE', state(0, 1)),
  /* 52 */ F('SET_VRING_ENABLE', state(1, 1)),
];

describe('net: QEMU <-> DPDK testpmd (vhost PMD)', () => {
  const run = play(NET_TRACE);
  const st = run.session.state;

  test('every message decodes cleanly and every reply pairs with its request', () => assertCleanAndPaired(run));

  test('device inferred as net; features and protocol features by name', () => {
    assert.equal(st.device, 'net');
    assert.equal(run.at.get(2)!.device, 'net');
    assert.equal(st.features.offered, NET_OFFERED);
    assert.equal(st.features.acked, 0x17020e783n);
    assert.deepEqual(featureNames(st.features.acked!, 'net'), [
      'CSUM', 'GUEST_CSUM', 'GUEST_TSO4', 'GUEST_TSO6', 'GUEST_ECN', 'GUEST_UFO', 'HOST_ECN', 'HOST_UFO', 'MRG_RXBUF',
      'GUEST_ANNOUNCE', 'RING_INDIRECT_DESC', 'RING_EVENT_IDX', 'PROTOCOL_FEATURES', 'VERSION_1',
    ]);
    assert.deepEqual(protocolFeatureNames(st.protocolFeatures.acked!), [
      'MQ', 'LOG_SHMFD', 'RARP', 'REPLY_ACK', 'MTU', 'BACKEND_REQ', 'CRYPTO_SESSION', 'BACKEND_SEND_FD', 'HOST_NOTIFIER', 'STATUS',
    ]);
    assert.equal(st.queueNum, 128);
    assert.equal(st.backendChannel, 'open');
  });

  test('status bytes: 0, FEATURES_OK, then DRIVER_OK, then reset', () => {
    assert.equal(run.at.get(29)!.status, 0);
    assert.equal(run.at.get(30)!.status, 8);
    assert.equal(run.at.get(44)!.status, 8);
    assert.equal(run.at.get(45)!.status, 15);
    assert.deepEqual(statusNames(15), ['ACKNOWLEDGE', 'DRIVER', 'DRIVER_OK', 'FEATURES_OK']);
    assert.equal(st.status, 0);
    const reported = run.results.flatMap((r) => r.changes).filter((c) => c.what === 'status').map((c) => (c as { status: number }).status);
    assert.deepEqual(reported, [0, 8, 8, 15, 0], 'every status the state took is reported, GET_STATUS replies included');
  });

  test('SET_MEM_TABLE: one region with its kept fd', () => {
    assert.equal(st.memory.length, 1);
    assert.deepEqual(
      { gpa: st.memory[0].guestPhysAddr, size: st.memory[0].memorySize, uva: st.memory[0].userspaceAddr, off: st.memory[0].mmapOffset, by: st.memory[0].addedBy },
      { gpa: 0n, size: 0x10000000n, uva: 0x7f319bfff000n, off: 0n, by: 'SET_MEM_TABLE' },
    );
    assert.ok(run.fds.isOpen(st.memory[0].fd!));
  });

  test('two vrings, 256 entries, addresses, fds, enabled and stopped at 13', () => {
    assert.deepEqual([...st.vrings.keys()].sort(), [0, 1]);
    const want = {
      0: { desc: 0x7f319e905000n, used: 0x7f319e906240n, avail: 0x7f319e906000n, log: 0x2907240n },
      1: { desc: 0x7f319e8fb000n, used: 0x7f319e8fc240n, avail: 0x7f319e8fc000n, log: 0x28fd240n },
    } as const;
    for (const i of [0, 1] as const) {
      const v = st.vrings.get(i)!;
      assert.equal(v.index, i);
      assert.equal(v.num, 256);
      assert.deepEqual(v.addr, { flags: 0, ...want[i] });
      assert.equal(v.kick, 'fd');
      assert.equal(v.call, 'fd');
      assert.equal(v.err, 'fd');
      assert.equal(v.enabled, true);
      assert.equal(v.stopped, true);
      assert.equal(v.stoppedAt, 13);
      assert.equal(run.at.get(42)!.vrings.get(i)!.stopped, false);
    }
  });

  test('kept fds closed exactly once', () => assertFdsClosedOnce(run));
});

// ---- net-frontend-virtio-user.decoded.txt: dpdk-testpmd net_virtio_user <-> dpdk-testpmd net_vhost (REPLY_ACK on SET_STATUS)
const VU_TRACE: MessageBuilder[] = [
  /* 1 */ F('SET_OWNER'),
  /* 2 */ F('GET_FEATURES'),
  /* 3 */ B('GET_FEATURES', u64(NET_OFFERED)),
  /* 4 */ F('GET_PROTOCOL_FEATURES'),
  /* 5 */ B('GET_PROTOCOL_FEATURES', u64(NET_PF)),
  /* 6 */ F('SET_PROTOCOL_FEATURES', u64(0x10009n)),
  /* 7 */ F('SET_VRING_CALL', kick(0), efd),
  /* 8 */ F('SET_VRING_CALL', kick(1), efd),
  /* 9 */ F('SET_FEATURES', u64(0x950008000n)),
  /* 10 */ F('SET_STATUS', u64(11), { needReply: true }),
  /* 11 */ B('SET_STATUS'),
  /* 12 */ F('GET_STATUS'),
  /* 13 */ B('GET_STATUS', u64(11)),
  /* 14 */ F('GET_STATUS'),
  /* 15 */ B('GET_STATUS', u64(11)),
  /* 16 */ F('SET_MEM_TABLE', (p) => p.memTable([{ gpa: 0x10063a000n, size: 0x20000000, uva: 0x10063a000n, offset: 0 }]), { needReply: true, fds: 1, kind: 'memfd' }),
  /* 17 */ B('SET_MEM_TABLE'),
  /* 18 */ F('SET_VRING_NUM', state(0, 256)),
  /* 19 */ F('SET_VRING_BASE', state(0, 0)),
  /* 20 */ F('SET_VRING_ADDR', addr(0, 0x1205de000n, 0x1205e0000n, 0x1205df000n, 0n)),
  /* 21 */ F('SET_VRING_KICK', kick(0), efd),
  /* 22 */ F('SET_VRING_NUM', state(1, 256)),
  /* 23 */ F('SET_VRING_BASE', state(1, 0)),
  /* 24 */ F('SET_VRING_ADDR', addr(1, 0x1205d9000n, 0x1205db000n, 0x1205da000n, 0n)),
  /* 25 */ F('SET_VRING_KICK', kick(1), efd),
  /* 26 */ F('SET_VRING_ENABLE', state(0, 1)),
  /* 27 */ F('SET_VRING_ENABLE', state(1, 1)),
  /* 28 */ F('SET_STATUS', u64(15), { needReply: true }),
  /* 29 */ B('SET_STATUS'),
  /* 30 */ F('SET_VRING_ENABLE', state(0, 0)),
  /* 31 */ F('SET_VRING_ENABLE', state(1, 0)),
  /* 32 */ F('GET_VRING_BASE', state(0, 0)),
  /* 33 */ B('GET_VRING_BASE', state(0, 51392)),
  /* 34 */ F('GET_VRING_BASE', state(1, 51392)), // stale num in the request: must be ignored
  /* 35 */ B('GET_VRING_BASE', state(1, 51424)),
];

describe('net: DPDK virtio-user <-> DPDK vhost', () => {
  const run = play(VU_TRACE);
  const st = run.session.state;

  test('every message decodes cleanly and every reply pairs with its request', () => assertCleanAndPaired(run));

  test('state: net, acked protocol subset, no back-end channel, status 15, one region at gpa = uva', () => {
    assert.equal(st.device, 'net');
    assert.deepEqual(protocolFeatureNames(st.protocolFeatures.acked!), ['MQ', 'REPLY_ACK', 'STATUS']);
    assert.equal(st.backendChannel, 'none');
    assert.equal(st.status, 15);
    assert.equal(run.at.get(13)!.status, 11);
    assert.equal(st.memory.length, 1);
    assert.equal(st.memory[0].guestPhysAddr, st.memory[0].userspaceAddr);
    assert.equal(st.memory[0].memorySize, 512n << 20n);
  });

  test('vrings stopped where the device says, not where the stale request says', () => {
    assert.equal(st.vrings.get(0)!.stoppedAt, 51392);
    assert.equal(st.vrings.get(1)!.stoppedAt, 51424);
    for (const v of st.vrings.values()) {
      assert.equal(v.stopped, true);
      assert.equal(v.enabled, false);
      assert.equal(v.kick, 'fd');
      assert.equal(v.call, 'fd');
      assert.equal(v.err, undefined);
      assert.equal(v.addr?.log, 0n);
    }
  });

  test('kept fds closed exactly once', () => assertFdsClosedOnce(run));
});

test('the trace builders produce the sizes the traces show (acks aside)', () => {
  const sizes = (t: MessageBuilder[]): number[] => t.map((b) => b.payloadBytes.byteLength);
  // Sizes as printed in blk-frontend-qemu.decoded.txt; the trace prints 0 for acks (lines 11, 23), the wire has the u64.
  assert.deepEqual(sizes(BLK_TRACE), [0, 8, 0, 8, 8, 0, 8, 0, 8, 0, 8, 0, 0, 8, 8, 8, 69, 69, 8, 8, 8, 40, 8, 8, 8, 40, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 40, 8, 8, 8, 8, 8]);
  assert.equal(NET_TRACE.length, 52);
  assert.equal(VU_TRACE.length, 35);
  assert.deepEqual(BLK_TRACE.map((b) => b.header()[4]), [1, 5, 1, 5, 1, 1, 5, 1, 5, 9, 5, 1, 1, 5, 1, 1, 1, 5, 1, 1, 1, 9, 5, ...Array(19).fill(0).map((_, i) => ([7, 18].includes(i) ? 5 : 1))]);
  assert.equal(payload().u64(1).length, 8);
});
