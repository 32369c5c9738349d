// The relay worker with synthetic peers: fidelity of bytes and fds, back-end channel, holds, notifiers, endpoint modes, leaks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Proxy, type ProxyOptions } from '../../core/proxy/proxy';
import { hostNative } from '../../core/node/pumpHost';
import { encodeMessage } from '../../core/protocol/codec';
import type { EngineEvent } from '../../core/session/tracker';
import { TestPeer, acceptOne, until, openFdCount } from '../helpers/peer';

const native = hostNative();

interface Rig {
  dir: string;
  proxy: Proxy;
  events: EngineEvent[];
  fePath: string;
  bePath: string;
  beListen?: number;
}

async function rig(extra: Partial<ProxyOptions> = {}, modes: { fe?: 'listen' | 'connect'; be?: 'listen' | 'connect' } = {}): Promise<Rig> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vl-relay-'));
  const fePath = path.join(dir, 'fe.sock'), bePath = path.join(dir, 'be.sock');
  const feMode = modes.fe ?? 'listen', beMode = modes.be ?? 'connect';
  const r: Partial<Rig> = { dir, fePath, bePath, events: [] };
  // A back-end the proxy connects to must be listening first.
  if (beMode === 'connect') r.beListen = native.listenUnix(bePath);
  r.proxy = new Proxy({ frontend: { mode: feMode, path: fePath }, backend: { mode: beMode, path: bePath }, ...extra });
  r.proxy.on('event', (e) => r.events!.push(e));
  await r.proxy.start();
  return r as Rig;
}

async function finish(r: Rig): Promise<void> {
  const final = await r.proxy.stop();
  if (r.beListen !== undefined) native.close(r.beListen);
  assert.equal(final.ledger, 0, 'the worker closed every fd it owned');
  assert.deepEqual(final.violations, []);
  fs.rmSync(r.dir, { recursive: true, force: true });
}

const messages = (r: Rig) => r.events.flatMap((e) => (e.kind === 'message' ? [e.msg] : []));

/** Front-end connects to the proxy; the proxy connects to our back-end listener. */
async function pair(r: Rig): Promise<{ fe: TestPeer; be: TestPeer }> {
  const fe = TestPeer.connect(native, r.fePath);
  const be = await acceptOne(native, r.beListen!);
  return { fe, be };
}

test('every byte and fd is relayed unchanged, both ways, and decoded off the relay path', async () => {
  const r = await rig();
  const { fe, be } = await pair(r);
  fe.send({ channel: 'main', code: 1 });
  const m1 = await be.recv();
  assert.equal(m1.header.request, 1);
  be.send({ channel: 'main', code: 1, reply: true, payload: { features: 0x1_4000_0000n } });
  const rep = await fe.recv();
  assert.deepEqual(rep.bytes, encodeMessage({ channel: 'main', code: 1, reply: true, payload: { features: 0x1_4000_0000n } }));
  // A memory table with its memfd: the back-end sees the same memory; the host keeps its own dup.
  const mem = native.memfd('guest-ram', 1 << 20);
  fs.writeSync(mem, Buffer.from('vring contents'), 0, 14, 4096);
  const table = encodeMessage({ channel: 'main', code: 5, needReply: true, payload: { nregions: 1, padding: 0, regions: [{ guestPhysAddr: 0n, memorySize: 1n << 20n, userspaceAddr: 0x7f0000000000n, mmapOffset: 0n }] } });
  fe.send(table, [native.dup(mem, 'sent')]);
  const t = await be.recv();
  assert.deepEqual(t.bytes, table, 'bytes unchanged');
  assert.equal(t.fds.length, 1);
  const b = Buffer.alloc(14);
  fs.readSync(t.fds[0], b, 0, 14, 4096);
  assert.equal(b.toString(), 'vring contents');
  native.close(t.fds[0]);
  const decoded = await until(() => messages(r).find((m) => m.name === 'SET_MEM_TABLE'), 'decoded SET_MEM_TABLE');
  const region = r.proxy.tracker.current!.state.memory[0];
  assert.equal(decoded.fdInfo[0].kind, 'memfd');
  assert.equal(region.memorySize, 1n << 20n);
  assert.ok(region.fd !== undefined && native.ledger.owns(region.fd), 'the host thread owns a dup of the memory fd');
  fs.readSync(region.fd!, b, 0, 14, 4096);
  assert.equal(b.toString(), 'vring contents');
  fe.close();
  await be.eof();
  be.close();
  native.close(mem);
  await until(() => r.events.find((e) => e.kind === 'session' && e.event === 'end'), 'session end');
  assert.equal(r.proxy.tracker.current!.state.memory.length, 0, 'memory fds released at session end');
  await finish(r);
});

test('the back-end channel is followed through a substituted socketpair, both ways, with replies', async () => {
  const r = await rig();
  const { fe, be } = await pair(r);
  const [feEnd, giveBe] = native.socketpair('qemu back-end channel');
  fe.send({ channel: 'main', code: 21, needReply: true }, [giveBe]);
  const m = await be.recv();
  assert.equal(m.fds.length, 1);
  assert.notEqual(m.fds[0], giveBe);
  const beChan = new TestPeer(native, m.fds[0]);
  const feChan = new TestPeer(native, feEnd);
  beChan.send({ channel: 'backend', code: 2, needReply: true });
  const req = await feChan.recv();
  assert.equal(req.header.request, 2);
  assert.equal(req.header.needReply, true);
  feChan.send({ channel: 'backend', code: 2, reply: true, payload: { ack: 0n } });
  const ack = await beChan.recv();
  assert.equal(ack.header.reply, true);
  const chanMsgs = await until(() => { const x = messages(r).filter((x) => x.channel === 'backend'); return x.length === 2 && x; }, 'back-end channel messages');
  assert.equal(chanMsgs[0].name, 'BACKEND_CONFIG_CHANGE_MSG');
  assert.equal(chanMsgs[0].from, 'backend');
  assert.equal(chanMsgs[1].replyTo, chanMsgs[0].seq, 'reply paired on the back-end channel');
  assert.deepEqual(messages(r).find((x) => x.name === 'SET_BACKEND_REQ_FD')!.substituted, ['back-end channel socketpair']);
  // Closing the back-end channel alone does not end the session.
  beChan.close();
  await until(() => r.events.find((e) => e.kind === 'channel' && e.event === 'closed'), 'channel closed');
  fe.send({ channel: 'main', code: 3 });
  assert.equal((await be.recv()).header.request, 3);
  feChan.close();
  fe.close();
  be.close();
  await finish(r);
});

test('a gated message is held until released; order is kept and nothing else crosses meanwhile', async () => {
  const r = await rig();
  const { fe, be } = await pair(r);
  r.proxy.setGate(false, ['main:12']);
  const kick = native.eventfd(0, 'kick');
  fe.send({ channel: 'main', code: 8, payload: { index: 0, num: 256 } });
  fe.send({ channel: 'main', code: 12, payload: { index: 0, noFd: false } }, [native.dup(kick, 'sent')]);
  fe.send({ channel: 'main', code: 13, payload: { index: 0, noFd: true } });
  assert.equal((await be.recv()).header.request, 8);
  const held = await until(() => r.events.find((e) => e.kind === 'held'), 'held event');
  assert.ok(held.kind === 'held');
  assert.equal(held.msg.name, 'SET_VRING_KICK');
  assert.equal((held.msg.payload as { index: number }).index, 0);
  await assert.rejects(be.recv(300), /timed out/, 'nothing crosses while a message is held');
  r.proxy.setGate(false, []);
  r.proxy.release(held.holdId);
  const k = await be.recv();
  assert.equal(k.header.request, 12);
  assert.equal(k.fds.length, 1, 'the held message keeps its fd');
  assert.equal((await be.recv()).header.request, 13);
  native.close(k.fds[0]);
  native.close(kick);
  fe.close();
  be.close();
  await finish(r);
});

test('a peer that disconnects while a message is held ends the session with a clear reason', async () => {
  const r = await rig();
  const { fe, be } = await pair(r);
  r.proxy.setGate(true, []);
  fe.send({ channel: 'main', code: 1 });
  await until(() => r.events.find((e) => e.kind === 'held'), 'held');
  be.close();
  const end = await until(() => r.events.find((e) => e.kind === 'session' && e.event === 'end'), 'session end');
  assert.ok(end.kind === 'session');
  assert.match(end.reason!, /backend disconnected while GET_FEATURES was held/);
  fe.close();
  await finish(r);
});

test('notifier interposition relays every kick and call exactly and counts them', async () => {
  const r = await rig({ notifiers: true, notifyIntervalMs: 20 });
  const { fe, be } = await pair(r);
  const kick = native.eventfd(0, 'qemu kick');
  const call = native.eventfd(0, 'qemu call');
  fe.send({ channel: 'main', code: 12, payload: { index: 1, noFd: false } }, [native.dup(kick, 'sent')]);
  fe.send({ channel: 'main', code: 13, payload: { index: 1, noFd: false } }, [native.dup(call, 'sent')]);
  const k = await be.recv();
  const c = await be.recv();
  assert.equal(native.fdInfo(k.fds[0]).kind, 'eventfd');
  const one = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);
  const v = Buffer.alloc(8);
  let kicks = 0;
  for (let i = 0; i < 10; i++) fs.writeSync(kick, one); // the driver kicks 10 times
  await until(() => {
    try { fs.readSync(k.fds[0], v, 0, 8, null); kicks += Number(v.readBigUInt64LE(0)); } catch { /* EAGAIN */ }
    return kicks >= 10;
  }, 'kicks at the back-end');
  let calls = 0;
  for (let i = 0; i < 7; i++) fs.writeSync(c.fds[0], one); // the device calls 7 times
  await until(() => {
    try { fs.readSync(call, v, 0, 8, null); calls += Number(v.readBigUInt64LE(0)); } catch { /* EAGAIN */ }
    return calls >= 7;
  }, 'calls at the front-end');
  assert.equal(kicks, 10, 'no kick lost or invented');
  assert.equal(calls, 7, 'no call lost or invented');
  const counts = await until(() => {
    const n = r.events.filter((e) => e.kind === 'notify') as Extract<EngineEvent, { kind: 'notify' }>[];
    const lastK = n.filter((e) => e.what === 'kick').pop(), lastC = n.filter((e) => e.what === 'call').pop();
    return lastK?.count === 10 && lastC?.count === 7 && { lastK, lastC };
  }, 'notify counts');
  assert.equal(counts.lastK.vring, 1);
  assert.ok(counts.lastK.signals >= 1 && counts.lastK.signals <= 10, 'coalesced wakeups are counted as such');
  for (const f of [kick, call, k.fds[0], c.fds[0]]) native.close(f);
  fe.close();
  be.close();
  await finish(r);
});

for (const [feMode, beMode] of [['listen', 'connect'], ['connect', 'listen'], ['listen', 'listen'], ['connect', 'connect']] as const) {
  test(`endpoint modes: front-end side ${feMode}s, back-end side ${beMode}s`, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vl-modes-'));
    const fePath = path.join(dir, 'fe.sock'), bePath = path.join(dir, 'be.sock');
    // Peers listen where the proxy connects.
    const feL = feMode === 'connect' ? native.listenUnix(fePath) : undefined;
    const beL = beMode === 'connect' ? native.listenUnix(bePath) : undefined;
    const proxy = new Proxy({ frontend: { mode: feMode, path: fePath }, backend: { mode: beMode, path: bePath } });
    const events: EngineEvent[] = [];
    proxy.on('event', (e) => events.push(e));
    await proxy.start();
    // QEMU server=on waits for the back-end; a back-end in client mode connects to the proxy first, and so on.
    const feC = feL === undefined ? TestPeer.connect(native, fePath) : undefined;
    const beC = beL === undefined ? TestPeer.connect(native, bePath) : undefined;
    const fe = feC ?? await acceptOne(native, feL!);
    const be = beC ?? await acceptOne(native, beL!);
    fe.send({ channel: 'main', code: 1 });
    assert.equal((await be.recv()).header.request, 1);
    be.send({ channel: 'main', code: 1, reply: true, payload: { features: 1n } });
    assert.equal((await fe.recv()).header.reply, true);
    fe.close();
    await be.eof();
    be.close();
    await until(() => events.find((e) => e.kind === 'session' && e.event === 'end'), 'session end');
    const final = await proxy.stop();
    assert.equal(final.ledger, 0);
    for (const l of [feL, beL]) if (l !== undefined) native.close(l);
    fs.rmSync(dir, { recursive: true, force: true });
  });
}

test('a back-end that disconnects is reported, the front-end is closed, and the next session forms', async () => {
  const r = await rig();
  const a = await pair(r);
  a.fe.send({ channel: 'main', code: 3 });
  await a.be.recv();
  a.be.close();
  await a.fe.eof();
  a.fe.close();
  const end = await until(() => r.events.find((e) => e.kind === 'session' && e.event === 'end'), 'end');
  assert.ok(end.kind === 'session' && /backend closed/.test(end.reason!));
  const b = await pair(r);
  b.fe.send({ channel: 'main', code: 1 });
  assert.equal((await b.be.recv()).header.request, 1);
  b.fe.close();
  b.be.close();
  await until(() => r.events.filter((e) => e.kind === 'session' && e.event === 'start').length === 2, 'second session');
  await finish(r);
});

test('a front-end arriving while the back-end is down is closed after the connect timeout; the proxy stays usable', async () => {
  const r = await rig({ connectTimeoutMs: 300 });
  native.close(r.beListen!);
  fs.rmSync(r.bePath);
  const fe = TestPeer.connect(native, r.fePath);
  await fe.eof(5000);
  fe.close();
  assert.ok(r.events.find((e) => e.kind === 'connection' && e.event === 'failed'));
  r.beListen = native.listenUnix(r.bePath);
  const p = await pair(r);
  p.fe.send({ channel: 'main', code: 1 });
  assert.equal((await p.be.recv()).header.request, 1);
  p.fe.close();
  p.be.close();
  await finish(r);
});

test('malformed headers are relayed unchanged and decoded with problems; an oversize payload switches to raw relay', async () => {
  const r = await rig();
  const { fe, be } = await pair(r);
  const bad = encodeMessage({ channel: 'main', code: 2, payload: { features: 7n } });
  bad[4] = 0x32; // version 2, reserved bit 4 and 5
  fe.send(bad);
  assert.deepEqual((await be.recv()).bytes, bad);
  const unknown = encodeMessage({ channel: 'main', code: 1 });
  unknown[0] = 99;
  fe.send(unknown);
  assert.deepEqual((await be.recv()).bytes, unknown);
  const m = await until(() => { const x = messages(r); return x.length === 2 && x; }, 'decoded');
  assert.deepEqual(m[0].problems.map((p) => p.code).sort(), ['bad-version', 'reserved-flags']);
  assert.equal(m[1].name, 'UNKNOWN_99');
  assert.deepEqual(m[1].problems.map((p) => p.code), ['unknown-request']);
  // A header claiming 2 MiB: framing is abandoned but bytes keep flowing unchanged.
  const huge = new Uint8Array(12 + 100);
  new DataView(huge.buffer).setUint32(0, 5, true);
  new DataView(huge.buffer).setUint32(4, 1, true);
  new DataView(huge.buffer).setUint32(8, 2 << 20, true);
  huge.fill(0xab, 12);
  fe.send(huge);
  const got: number[] = [];
  await until(() => {
    const buf = new Uint8Array(4096);
    const n = native.recvMsg(be.fd, buf, 0, buf.length);
    if (n.n > 0) got.push(...buf.subarray(0, n.n));
    return got.length >= huge.byteLength;
  }, 'raw bytes');
  assert.deepEqual(Uint8Array.from(got), huge);
  await until(() => r.events.find((e) => e.kind === 'error' && /raw bytes/.test(e.message)), 'the raw-relay report');
  fe.close();
  be.close();
  await finish(r);
});

test('no fd leaks over many sessions carrying memory, kick and back-end channel fds', async () => {
  const before = openFdCount();
  const hostBefore = native.ledger.count;
  const r = await rig({ notifiers: true });
  for (let i = 0; i < 25; i++) {
    const { fe, be } = await pair(r);
    const mem = native.memfd('ram', 65536);
    const kick = native.eventfd(0, 'kick');
    const [chan, give] = native.socketpair('chan');
    fe.send({ channel: 'main', code: 37, needReply: true, payload: { padding: 0n, guestPhysAddr: 0n, memorySize: 65536n, userspaceAddr: 0x10000n, mmapOffset: 0n } }, [native.dup(mem, 'sent')]);
    fe.send({ channel: 'main', code: 12, payload: { index: 0, noFd: false } }, [native.dup(kick, 'sent')]);
    fe.send({ channel: 'main', code: 21 }, [give]);
    for (let k = 0; k < 3; k++) for (const f of (await be.recv()).fds) native.close(f);
    for (const f of [mem, kick, chan]) native.close(f);
    if (i % 2) { fe.close(); await be.eof(); be.close(); } else { be.close(); await fe.eof(); fe.close(); }
    await until(() => r.events.filter((e) => e.kind === 'session' && e.event === 'end').length === i + 1, 'session end');
  }
  const stats = await r.proxy.host.stats();
  assert.equal(stats.ledger, 1 + 1, 'only the listener and the epoll fd remain in the worker');
  await finish(r);
  assert.equal(native.ledger.count, hostBefore, 'host thread released every kept memory fd');
  assert.equal(openFdCount(), before, 'no fd leaked in the process');
});

test('a listener that throws (a broken printer or view) is reported and never stops the relay', async () => {
  const r = await rig();
  let thrown = 0;
  r.proxy.on('event', (e) => { if (e.kind === 'message') { thrown++; throw new Error('view bug'); } });
  const { fe, be } = await pair(r);
  for (let i = 0; i < 5; i++) {
    fe.send({ channel: 'main', code: 1 });
    assert.equal((await be.recv()).header.request, 1);
    be.send({ channel: 'main', code: 1, reply: true, payload: { features: BigInt(i) } });
    assert.equal((await fe.recv()).header.reply, true);
  }
  await until(() => thrown >= 10, 'every message reached the throwing listener');
  assert.ok(r.events.some((e) => e.kind === 'error' && /view bug/.test(e.message)), 'the fault is reported as an error event');
  fe.close();
  be.close();
  await finish(r);
});
