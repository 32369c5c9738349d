// Session rules one at a time: reply pairing, direction, gating, memory table bookkeeping and who closes kept fds.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Session } from '../../core/session/session';
import { PROTOCOL_BIT, FEATURE_BIT } from '../../core/protocol/features';
import { msg, msgCode, FakeFds, Feeder, type MessageBuilder } from '../helpers/wire';

const REPLY_ACK = 1n << BigInt(PROTOCOL_BIT.REPLY_ACK);
const pf = (...names: string[]): bigint => names.reduce((m, n) => m | (1n << BigInt(PROTOCOL_BIT[n])), 0n);
const R1 = { gpa: 0n, size: 0x10000000n, uva: 0x7f0000000000n };
const R2 = { gpa: 0x100000000n, size: 0x10000000n, uva: 0x7f0010000000n, offset: 0x10000000n };
const R3 = { gpa: 0x200000000n, size: 0x1000n, uva: 0x7f0020000000n };

function setup(device: 'unknown' | 'net' = 'unknown') {
  const fds = new FakeFds();
  const session = new Session(1, { closeFd: fds.closeFd }, device);
  const f = new Feeder(session, fds);
  return { fds, session, f, feed: (b: MessageBuilder, kept?: number[]) => f.feed(b, kept ? { kept } : {}) };
}
const codesOf = (m: { problems: { code: string }[] }): string[] => m.problems.map((p) => p.code);
/** Negotiate protocol features the way QEMU does (offer bit 30 first). */
function negotiate(feed: (b: MessageBuilder) => unknown, protocol: bigint): void {
  feed(msg('GET_FEATURES'));
  feed(msg('GET_FEATURES').reply().u64(1n << 30n));
  feed(msg('GET_PROTOCOL_FEATURES'));
  feed(msg('GET_PROTOCOL_FEATURES').reply().u64(protocol));
  feed(msg('SET_PROTOCOL_FEATURES').u64(protocol));
}

describe('reply pairing', () => {
  test('a reply to nothing is an error', () => {
    const { feed } = setup();
    const { msg: m } = feed(msg('GET_FEATURES').reply().u64(1));
    assert.deepEqual(codesOf(m), ['unexpected-reply']);
    assert.equal(m.problems[0].severity, 'error');
    assert.equal(m.replyTo, undefined);
  });

  test('a reply to a request that did not ask for one is a warning', () => {
    const { feed } = setup();
    const req = feed(msg('SET_FEATURES').u64(1)).msg;
    assert.equal(req.expectsReply, false);
    const { msg: m } = feed(msg('SET_FEATURES').reply().u64(0));
    assert.deepEqual(codesOf(m), ['unexpected-reply']);
    assert.equal(m.problems[0].severity, 'warning');
    assert.equal(m.replyTo, req.seq);
  });

  test('NEED_REPLY only asks for a reply once REPLY_ACK is negotiated', () => {
    const { feed, session } = setup();
    assert.equal(feed(msg('SET_VRING_NUM').payload((p) => p.vringState(0, 8)).needReply()).msg.expectsReply, false);
    negotiate(feed, REPLY_ACK);
    assert.equal(feed(msg('SET_VRING_NUM').payload((p) => p.vringState(0, 8)).needReply()).msg.expectsReply, true);
    assert.deepEqual(session.missingReplies().map((m) => m.name), ['SET_VRING_NUM']);
  });

  test('the ack pairs with the request that asked for it, not an older one that did not', () => {
    const { feed, session } = setup();
    negotiate(feed, REPLY_ACK);
    const quiet = feed(msg('SET_VRING_ENABLE').payload((p) => p.vringState(0, 1))).msg;
    const asking = feed(msg('SET_VRING_ENABLE').payload((p) => p.vringState(1, 1)).needReply()).msg;
    const ack = feed(msg('SET_VRING_ENABLE').reply().u64(0)).msg;
    assert.deepEqual(ack.problems, []);
    assert.equal(ack.replyTo, asking.seq);
    assert.equal(asking.replySeq, ack.seq);
    assert.equal(quiet.replySeq, undefined);
    assert.deepEqual(session.missingReplies(), []);
  });

  test('replies pair first-in first-out per code, channels kept apart', () => {
    const { feed, session } = setup();
    const a = feed(msg('GET_FEATURES')).msg;
    const b = feed(msg('GET_FEATURES')).msg;
    const lookup = feed(msg('BACKEND_SHARED_OBJECT_LOOKUP').payload((p) => p.uuid('00112233-4455-6677-8899-aabbccddeeff'))).msg;
    assert.equal(lookup.from, 'backend');
    assert.deepEqual(session.missingReplies().map((m) => m.seq), [a.seq, b.seq, lookup.seq]);
    assert.equal(feed(msg('GET_FEATURES').reply().u64(1)).msg.replyTo, a.seq);
    const lr = feed(msg('BACKEND_SHARED_OBJECT_LOOKUP').reply().u64(0).fds(1, 'anon')).msg;
    assert.equal(lr.from, 'frontend');
    assert.deepEqual(lr.problems, []);
    assert.equal(lr.replyTo, lookup.seq);
    assert.equal(feed(msg('GET_FEATURES').reply().u64(1)).msg.replyTo, b.seq);
    assert.deepEqual(session.missingReplies(), []);
  });

  test('SET_LOG_BASE expects its reply only with LOG_SHMFD', () => {
    const a = setup();
    negotiate(a.feed, REPLY_ACK);
    assert.equal(a.feed(msg('SET_LOG_BASE').payload((p) => p.logBase(0x1000, 0))).msg.expectsReply, false);
    const b = setup();
    negotiate(b.feed, pf('LOG_SHMFD'));
    assert.equal(b.feed(msg('SET_LOG_BASE').payload((p) => p.logBase(0x1000, 0)).fds(1, 'memfd')).msg.expectsReply, true);
    assert.deepEqual(b.session.state.log, { mmapSize: 0x1000n, mmapOffset: 0n });
  });

  test('a wrong-direction "reply" does not consume the pending request', () => {
    const { feed, session } = setup();
    const req = feed(msg('GET_FEATURES')).msg;
    const fake = feed(msg('GET_FEATURES').reply().u64(0xdead).sentBy('frontend')).msg;
    assert.ok(codesOf(fake).includes('wrong-direction'));
    assert.equal(fake.replyTo, undefined);
    assert.equal(session.state.features.offered, undefined, 'a front-end cannot offer the back-end\'s features');
    const real = feed(msg('GET_FEATURES').reply().u64(1n << 30n)).msg;
    assert.deepEqual(real.problems, []);
    assert.equal(real.replyTo, req.seq);
    assert.equal(session.state.features.offered, 1n << 30n);
  });
});

describe('direction and gating', () => {
  test('a request from the back-end on the main socket does not change the negotiated state', () => {
    const { feed, session, fds } = setup();
    const kept = fds.alloc(1);
    const r = feed(msg('SET_FEATURES').u64(0xffn).sentBy('backend')).msg;
    assert.ok(codesOf(r).includes('wrong-direction'));
    feed(msg('ADD_MEM_REG').payload((p) => p.singleRegion(R1)).fds(1, 'memfd').sentBy('backend'), kept);
    feed(msg('SET_STATUS').u64(15).sentBy('backend'));
    assert.equal(session.state.features.acked, undefined);
    assert.deepEqual(session.state.memory, []);
    assert.equal(session.state.status, undefined);
    assert.equal(fds.closed.get(kept[0]), 1, 'the kept fd of an ignored message is closed at once');
    assert.deepEqual(session.missingReplies(), []);
  });

  test('a request needing a protocol feature that was not acked is a warning; fine once acked', () => {
    const { feed } = setup();
    assert.deepEqual(codesOf(feed(msg('GET_QUEUE_NUM')).msg), [], 'nothing negotiated yet: no verdict');
    negotiate(feed, REPLY_ACK);
    const m = feed(msg('GET_QUEUE_NUM')).msg;
    assert.deepEqual(codesOf(m), ['not-negotiated']);
    assert.equal(m.problems[0].severity, 'warning');
    const ok = setup();
    negotiate(ok.feed, pf('MQ'));
    assert.deepEqual(codesOf(ok.feed(msg('GET_QUEUE_NUM')).msg), []);
  });

  test('GET_PROTOCOL_FEATURES when the back-end did not offer bit 30 is a warning', () => {
    const { feed } = setup();
    feed(msg('GET_FEATURES'));
    feed(msg('GET_FEATURES').reply().u64(1n << 32n));
    assert.deepEqual(codesOf(feed(msg('GET_PROTOCOL_FEATURES')).msg), ['not-negotiated']);
  });

  test('unknown codes and back-end channel requests leave the state alone', () => {
    const { feed, session } = setup();
    assert.deepEqual(codesOf(feed(msgCode('main', 77).u64(1)).msg), ['unknown-request']);
    assert.deepEqual(codesOf(feed(msgCode('backend', 13)).msg), ['unknown-request']);
    const cfg = feed(msg('BACKEND_CONFIG_CHANGE_MSG')).msg;
    assert.deepEqual(cfg.problems, []);
    assert.equal(cfg.channel, 'backend');
    assert.equal(cfg.category, 'device');
    assert.deepEqual(session.state.vrings.size, 0);
    assert.equal(session.state.status, undefined);
  });
});

describe('decode context follows negotiation', () => {
  test('RING_PACKED acked: vring bases carry wrap counters', () => {
    const { feed, session } = setup();
    feed(msg('SET_FEATURES').u64(1n << BigInt(FEATURE_BIT.RING_PACKED)));
    feed(msg('SET_VRING_BASE').payload((p) => p.packedBase(0, { availIdx: 5, availWrap: true, usedIdx: 4, usedWrap: false })));
    assert.deepEqual(session.state.vrings.get(0)?.base, { num: 0x48005, availIdx: 5, availWrap: true, usedIdx: 4, usedWrap: false });
    // a split-ring base with bits 16+ set is reported, a packed one is not
    const split = setup();
    assert.deepEqual(codesOf(split.feed(msg('GET_VRING_BASE').reply().payload((p) => p.vringState(0, 0x48005))).msg).sort(), ['bad-field', 'unexpected-reply']);
  });

  test('XEN_MMAP acked: regions are 40 bytes', () => {
    const { feed, session } = setup();
    negotiate(feed, pf('XEN_MMAP', 'CONFIGURE_MEM_SLOTS'));
    const m = feed(msg('ADD_MEM_REG').payload((p) => p.singleRegion({ ...R1, xenFlags: 1, domid: 2 }, { xen: true })).fds(1, 'memfd')).msg;
    assert.deepEqual(m.problems, []);
    assert.equal(session.state.memory[0].domid, 2);
  });
});

describe('memory table and kept fds', () => {
  test('ADD_MEM_REG adds with its fd; REM_MEM_REG (offset ignored) removes it and closes the fd once', () => {
    const { feed, session, fds } = setup();
    feed(msg('ADD_MEM_REG').payload((p) => p.singleRegion(R1)).fds(1, 'memfd'));
    feed(msg('ADD_MEM_REG').payload((p) => p.singleRegion(R2)).fds(1, 'memfd'));
    const [fd1, fd2] = session.state.memory.map((r) => r.fd!);
    assert.deepEqual([...fds.handedIn], [fd1, fd2]);
    const { changes } = feed(msg('REM_MEM_REG').payload((p) => p.singleRegion({ ...R1, offset: 0x999000n })));
    assert.deepEqual(changes, [{ what: 'memory', regions: 1 }]);
    assert.deepEqual(session.state.memory.map((r) => r.guestPhysAddr), [R2.gpa]);
    assert.equal(fds.closed.get(fd1), 1);
    assert.equal(fds.isOpen(fd2), true);
  });

  test('REM_MEM_REG of an unknown region is reported and changes nothing', () => {
    const { feed, session, fds } = setup();
    feed(msg('ADD_MEM_REG').payload((p) => p.singleRegion(R1)).fds(1, 'memfd'));
    for (const wrong of [{ ...R1, size: 0x1000n }, { ...R1, uva: 0x1000n }, R2]) {
      const { msg: m, changes } = feed(msg('REM_MEM_REG').payload((p) => p.singleRegion(wrong)));
      assert.deepEqual(codesOf(m), ['bad-field']);
      assert.deepEqual(changes, []);
    }
    assert.equal(session.state.memory.length, 1);
    assert.deepEqual(fds.closed.size, 0);
  });

  test('SET_MEM_TABLE replaces the table: old fds closed, new fds kept in region order', () => {
    const { feed, session, fds } = setup();
    feed(msg('ADD_MEM_REG').payload((p) => p.singleRegion(R3)).fds(1, 'memfd'));
    const old = session.state.memory[0].fd!;
    feed(msg('SET_MEM_TABLE').payload((p) => p.memTable([R1, R2])).fds(2, 'memfd'));
    assert.equal(fds.closed.get(old), 1);
    assert.deepEqual(session.state.memory.map((r) => [r.guestPhysAddr, r.fd, r.addedBy]), [[R1.gpa, old + 1, 'SET_MEM_TABLE'], [R2.gpa, old + 2, 'SET_MEM_TABLE']]);
    feed(msg('SET_MEM_TABLE').payload((p) => p.memTable([])));
    assert.deepEqual(session.state.memory, []);
    assert.deepEqual(fds.open, []);
  });

  test('more kept fds than regions: the extras are closed at once; fewer: regions without fd', () => {
    const { feed, session, fds } = setup();
    const kept = fds.alloc(3);
    const { msg: m } = feed(msg('SET_MEM_TABLE').payload((p) => p.memTable([R1, R2])).fds(3, 'memfd'), kept);
    assert.deepEqual(codesOf(m), ['too-many-fds']);
    assert.deepEqual(session.state.memory.map((r) => r.fd), [kept[0], kept[1]]);
    assert.deepEqual(fds.open, [kept[0], kept[1]]);
    const one = fds.alloc(1);
    const { msg: m2 } = feed(msg('SET_MEM_TABLE').payload((p) => p.memTable([R1, R2])).fds(1, 'memfd'), one);
    assert.deepEqual(codesOf(m2), ['missing-fds']);
    assert.deepEqual(session.state.memory.map((r) => r.fd), [one[0], undefined]);
    assert.deepEqual(fds.open, [one[0]]);
  });

  test('kept fds of a message that cannot be applied are closed at once', () => {
    const { feed, session, fds } = setup();
    const truncated = fds.alloc(1);
    feed(msg('ADD_MEM_REG').payload((p) => p.u64(0).u64(0)).fds(1, 'memfd'), truncated);
    const lying = fds.alloc(1);
    feed(msg('ADD_MEM_REG').payload((p) => p.singleRegion(R1)).size(80).fds(1, 'memfd'), lying);
    const onReply = fds.alloc(1);
    feed(msg('ADD_MEM_REG').reply().u64(0), onReply);
    const onBackend = fds.alloc(1);
    feed(msg('BACKEND_SHMEM_MAP').payload((p) => p.shmemMap({ shmid: 0, fdOffset: 0, shmOffset: 0, len: 0x1000, flags: 1 })).fds(1, 'memfd'), onBackend);
    const unknown = fds.alloc(2);
    feed(msgCode('main', 99).fds(2, 'memfd'), unknown);
    const ctrunc = fds.alloc(1);
    const c = session.ingest(msg('ADD_MEM_REG').payload((p) => p.singleRegion(R1)).fds(1, 'memfd').record(99, { kept: ctrunc, relayProblems: ['truncated at EOF'] }));
    assert.ok(codesOf(c.msg).includes('truncated-payload'));
    assert.deepEqual(session.state.memory, []);
    assert.deepEqual(fds.violations, []);
    assert.deepEqual(fds.open, []);
  });

  test('MSG_CTRUNC from the relay is its own problem', () => {
    const { session } = setup();
    const r = session.ingest(msg('SET_VRING_KICK').payload((p) => p.vringFd(0)).record(1, { relayProblems: ['MSG_CTRUNC: the kernel dropped fds that did not fit'] }));
    assert.deepEqual(codesOf(r.msg).sort(), ['ctrunc', 'missing-fds']);
  });

  test('close() closes what the session holds once; closing again does nothing', () => {
    const { feed, session, fds } = setup();
    feed(msg('SET_MEM_TABLE').payload((p) => p.memTable([R1, R2])).fds(2, 'memfd'));
    session.close();
    session.close();
    assert.deepEqual(fds.violations, []);
    assert.deepEqual(fds.open, []);
    assert.deepEqual(session.state.memory, []);
  });
});

describe('device state', () => {
  test('RESET_DEVICE resets status and stops every vring, and says so', () => {
    const { feed, session } = setup();
    negotiate(feed, pf('STATUS', 'RESET_DEVICE'));
    feed(msg('SET_STATUS').u64(15));
    for (const i of [0, 1]) {
      feed(msg('SET_VRING_KICK').payload((p) => p.vringFd(i)).fds(1));
      feed(msg('SET_VRING_ENABLE').payload((p) => p.vringState(i, 1)));
    }
    const { changes } = feed(msg('RESET_DEVICE'));
    assert.equal(session.state.status, 0);
    for (const v of session.state.vrings.values()) assert.deepEqual([v.enabled, v.stopped], [false, true]);
    assert.deepEqual(changes, [{ what: 'status', status: 0 }, { what: 'vring', index: 0 }, { what: 'vring', index: 1 }]);
  });

  test('a kick restarts a stopped vring; SET_VRING_BASE too', () => {
    const { feed, session } = setup();
    feed(msg('GET_VRING_BASE').payload((p) => p.vringState(2, 0)));
    assert.equal(session.state.vrings.get(2)?.stopped, true);
    feed(msg('SET_VRING_KICK').payload((p) => p.vringFd(2, { noFd: true })));
    assert.deepEqual([session.state.vrings.get(2)?.stopped, session.state.vrings.get(2)?.kick], [false, 'no-fd']);
  });

  test('SET_OWNER / RESET_OWNER, NET_SET_MTU implies net unless the device was given', () => {
    const a = setup();
    a.feed(msg('SET_OWNER'));
    assert.equal(a.session.state.owner, true);
    a.feed(msg('RESET_OWNER'));
    assert.equal(a.session.state.owner, false);
    const { changes } = a.feed(msg('NET_SET_MTU').u64(1500));
    assert.deepEqual(changes, [{ what: 'device', device: 'net' }]);
    const fds = new FakeFds();
    const given = new Session(2, { closeFd: fds.closeFd }, 'blk');
    given.ingest(msg('SEND_RARP').u64(0x112233445566n).record(1));
    assert.equal(given.state.device, 'blk');
  });

  test('a device recognised from the rings (virtio-fs) fills in only an unknown type', () => {
    const fds = new FakeFds();
    const unknown = new Session(4, { closeFd: fds.closeFd });
    unknown.recognise('fs');
    assert.equal(unknown.state.device, 'fs');
    const given = new Session(5, { closeFd: fds.closeFd }, 'blk');
    given.recognise('fs');
    assert.equal(given.state.device, 'blk');
    const inferred = setup().session;
    inferred.state.device = 'net';
    inferred.recognise('fs');
    assert.equal(inferred.state.device, 'net');
  });

  test('the message log keeps the newest `keep` messages', () => {
    const fds = new FakeFds();
    const s = new Session(3, { closeFd: fds.closeFd }, 'unknown', 5);
    for (let i = 1; i <= 12; i++) s.ingest(msg('GET_STATUS').record(i));
    assert.deepEqual(s.messages.map((m) => m.seq), [8, 9, 10, 11, 12]);
  });

  test('peek decodes without changing state', () => {
    const { session } = setup();
    const d = session.peek('main', 'frontend', msg('SET_FEATURES').u64(1).bytes(), 0);
    assert.deepEqual(d.payload, { features: 1n });
    assert.equal(session.state.features.acked, undefined);
    assert.equal(session.messages.length, 0);
  });
});
