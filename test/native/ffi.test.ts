// Native layer on ffi-rs: SCM_RIGHTS passing, MSG_CTRUNC, EOF, partial sends, listen permissions, fd ledger.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FfiNative } from '../../core/node/ffi';
import { FrameReader, Outbox } from '../../core/node/wire';
import { NativeError } from '../../core/sys/native';
import { encodeMessage } from '../../core/protocol/codec';
import { openFdCount } from '../helpers/peer';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'vl-native-'));

test('fds travel with the message and arrive usable (eventfd, memfd, socket)', () => {
  const n = new FfiNative();
  const [a, b] = n.socketpair('test');
  const ev = n.eventfd(0, 'ev');
  const mem = n.memfd('guest', 8192);
  const [s1, s2] = n.socketpair('passed');
  fs.writeSync(mem, Buffer.from('hello guest'), 0, 11, 4096);
  const msg = encodeMessage({ channel: 'main', code: 12, payload: { index: 0, noFd: false } });
  assert.equal(n.sendMsg(a, msg, 0, msg.byteLength, [ev, mem, s1]), msg.byteLength);
  const got = new Uint8Array(msg.byteLength);
  const r = n.recvMsg(b, got, 0, msg.byteLength);
  assert.equal(r.n, msg.byteLength);
  assert.deepEqual(got, msg);
  assert.equal(r.fds.length, 3);
  assert.equal(r.ctrunc, false);
  assert.deepEqual(r.fds.map((f) => n.fdInfo(f).kind), ['eventfd', 'memfd', 'socket']);
  assert.equal(n.fdInfo(r.fds[1]).size, 8192);
  assert.equal(n.fdInfo(r.fds[1]).name, 'guest');
  // The received eventfd is the same object: a write on ours is seen on theirs.
  fs.writeSync(ev, Buffer.from([5, 0, 0, 0, 0, 0, 0, 0]));
  const v = Buffer.alloc(8);
  fs.readSync(r.fds[0], v, 0, 8, null);
  assert.equal(v.readBigUInt64LE(0), 5n);
  // The received memfd shows the same memory through pread.
  const m = Buffer.alloc(11);
  fs.readSync(r.fds[1], m, 0, 11, 4096);
  assert.equal(m.toString(), 'hello guest');
  for (const f of [a, b, ev, mem, s1, s2, ...r.fds]) n.close(f);
  assert.equal(n.ledger.count, 0);
  assert.deepEqual(n.ledger.violations, []);
});

test('MSG_CTRUNC is reported and the fds that did fit are still owned', () => {
  const small = new FfiNative(undefined, { ctrlFds: 2 });
  const [a, b] = small.socketpair('ctrunc');
  const evs = [0, 1, 2, 3].map((i) => small.eventfd(0, `ev${i}`));
  const msg = encodeMessage({ channel: 'main', code: 3 });
  small.sendMsg(a, msg, 0, msg.byteLength, evs);
  const r = small.recvMsg(b, new Uint8Array(12), 0, 12);
  assert.equal(r.ctrunc, true);
  assert.equal(r.fds.length, 2, 'two fds fit the control buffer; the kernel closed the rest');
  for (const f of [a, b, ...evs, ...r.fds]) small.close(f);
  assert.equal(small.ledger.count, 0);
});

test('reading exactly the header keeps a fd-less message apart from the next one with fds', () => {
  const n = new FfiNative();
  const [a, b] = n.socketpair('coalesce');
  const plain = encodeMessage({ channel: 'main', code: 1 });
  const withFd = encodeMessage({ channel: 'main', code: 13, payload: { index: 1, noFd: false } });
  const ev = n.eventfd(0, 'call');
  n.sendMsg(a, plain, 0, plain.byteLength);
  n.sendMsg(a, withFd, 0, withFd.byteLength, [ev]);
  const reader = new FrameReader(n, b, false);
  const f1 = reader.step();
  const f2 = reader.step();
  assert.equal(f1.t, 'frame');
  assert.equal(f2.t, 'frame');
  if (f1.t !== 'frame' || f2.t !== 'frame') return;
  assert.equal(f1.frame.fds.length, 0);
  assert.equal(f2.frame.fds.length, 1);
  assert.deepEqual(f2.frame.bytes, withFd);
  for (const f of [a, b, ev, ...f2.frame.fds]) n.close(f);
  assert.equal(n.ledger.count, 0);
});

test('EOF: recvmsg returns 0 after the queue drains; a message cut short is surfaced as partial', () => {
  const n = new FfiNative();
  const [a, b] = n.socketpair('eof');
  const full = encodeMessage({ channel: 'main', code: 2, payload: { features: 0x140000000n } });
  n.sendMsg(a, full, 0, full.byteLength);
  n.sendMsg(a, full, 0, 15); // header + 3 of 8 payload bytes
  n.close(a);
  const reader = new FrameReader(n, b, false);
  const r1 = reader.step();
  assert.equal(r1.t, 'frame');
  const r2 = reader.step();
  assert.equal(r2.t, 'eof');
  if (r2.t === 'eof') assert.equal(r2.partial?.bytes.byteLength, 15);
  n.close(b);
});

test('partial sends: a full socket buffer queues, later flushes keep order and attach fds to the right message', () => {
  const n = new FfiNative();
  const [a, b] = n.socketpair('partial');
  let armed = false;
  const out = new Outbox(n, a, false, (on) => { armed = on; });
  const N = 3000;
  const evs: number[] = [];
  for (let i = 0; i < N; i++) {
    const payload = { features: BigInt(i) };
    if (i % 500 === 0) {
      const ev = n.eventfd(i + 1, `ev${i}`);
      evs.push(ev);
      out.push(encodeMessage({ channel: 'main', code: 12, payload: { index: i % 256, noFd: false } }), [n.dup(ev, 'sent')]);
    } else out.push(encodeMessage({ channel: 'main', code: 2, payload }));
  }
  assert.ok(out.queued > 0, 'the sender must have hit EAGAIN (queue non-empty)');
  assert.equal(armed, true, 'EPOLLOUT requested while queued');
  const reader = new FrameReader(n, b, false);
  const seen: number[] = [];
  let fdsSeen = 0;
  while (seen.length < N) {
    const r = reader.step();
    if (r.t === 'more') { out.flush(); continue; }
    assert.equal(r.t, 'frame');
    if (r.t !== 'frame') return;
    const code = new DataView(r.frame.bytes.buffer, r.frame.bytes.byteOffset).getUint32(0, true);
    const i = seen.length;
    if (i % 500 === 0) {
      assert.equal(code, 12);
      assert.equal(r.frame.fds.length, 1, `message ${i} carries its fd`);
      const v = Buffer.alloc(8);
      fs.readSync(r.frame.fds[0], v, 0, 8, null);
      assert.equal(Number(v.readBigUInt64LE(0)), i + 1, 'the fd is the one sent with this message');
      fdsSeen++;
      n.close(r.frame.fds[0]);
    } else {
      assert.equal(code, 2);
      assert.equal(r.frame.fds.length, 0);
      assert.equal(new DataView(r.frame.bytes.buffer, r.frame.bytes.byteOffset).getBigUint64(12, true), BigInt(i));
    }
    seen.push(i);
  }
  assert.equal(fdsSeen, N / 500);
  assert.equal(out.queued, 0);
  assert.equal(armed, false);
  for (const f of [a, b, ...evs]) n.close(f);
  assert.equal(n.ledger.count, 0);
  assert.deepEqual(n.ledger.violations, []);
});

test('listen: socket mode 0600 by default, custom mode and group, clear errors for misuse', () => {
  const n = new FfiNative();
  const dir = tmp();
  const p = path.join(dir, 'l.sock');
  const l = n.listenUnix(p);
  assert.equal(fs.statSync(p).mode & 0o777, 0o600);
  // A live listener on the path: refuse to steal it.
  assert.throws(() => n.listenUnix(p), (e: unknown) => e instanceof NativeError && e.code === 'EADDRINUSE' && /in use/.test(e.message));
  n.close(l);
  // A stale socket file (nobody listening) is replaced.
  const l2 = n.listenUnix(p, { mode: 0o660, group: 0 });
  assert.equal(fs.statSync(p).mode & 0o777, 0o660);
  assert.equal(fs.statSync(p).gid, 0);
  n.close(l2);
  const f = path.join(dir, 'file');
  fs.writeFileSync(f, 'x');
  assert.throws(() => n.listenUnix(f), /exists and is not a socket/);
  assert.throws(() => n.listenUnix(path.join(dir, 'missing-dir', 's.sock')), (e: unknown) => e instanceof NativeError && e.code === 'ENOENT');
  assert.throws(() => n.connectUnix(path.join(dir, 'nothing.sock')), (e: unknown) => e instanceof NativeError && e.code === 'ENOENT');
  assert.throws(() => n.listenUnix(path.join(dir, 'x'.repeat(120))), /longer than 107/);
  assert.equal(n.ledger.count, 0);
  fs.rmSync(dir, { recursive: true });
});

test('closing an fd the ledger does not own is recorded, not performed', () => {
  const n = new FfiNative();
  const ev = n.eventfd(0, 'once');
  n.close(ev);
  n.close(ev);
  assert.equal(n.ledger.violations.length, 1);
  assert.match(n.ledger.violations[0], /close of fd \d+ not owned/);
});

test('no process fd leaks over many socketpair/eventfd/memfd cycles', () => {
  const n = new FfiNative();
  const before = openFdCount();
  for (let i = 0; i < 200; i++) {
    const [a, b] = n.socketpair('cycle');
    const ev = n.eventfd(0, 'cycle');
    const mem = n.memfd('cycle', 4096);
    const msg = encodeMessage({ channel: 'main', code: 5, payload: { nregions: 1, padding: 0, regions: [{ guestPhysAddr: 0n, memorySize: 4096n, userspaceAddr: 0x1000n, mmapOffset: 0n }] } });
    n.sendMsg(a, msg, 0, msg.byteLength, [mem, ev]);
    const r = n.recvMsg(b, new Uint8Array(12), 0, 12);
    for (const f of [a, b, ev, mem, ...r.fds]) n.close(f);
  }
  assert.equal(openFdCount(), before);
  assert.equal(n.ledger.count, 0);
});

test('ffi-rs 1.3.7 regression: integer return values stay correct over many calls', () => {
  const n = new FfiNative();
  const fds: number[] = [];
  for (let i = 0; i < 500; i++) fds.push(n.eventfd(i, 'rv'));
  assert.equal(new Set(fds).size, fds.length, 'every eventfd() returned a distinct fd');
  for (const f of fds) assert.equal(n.fdInfo(f).kind, 'eventfd');
  for (const f of fds) n.close(f);
  assert.equal(n.ledger.count, 0);
});
