// Integration: a scripted front-end drives the built-in blk back-end (real worker, real sockets and fds) with good and bad input.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FfiNative } from '../../core/node/ffi';
import { encodeMessage } from '../../core/protocol/codec';
import { Backend } from '../../core/backend/backend';
import { DeviceMemory } from '../../core/backend/memory';
import { Arena, SplitDriver } from '../../core/backend/driver';
import { BLK_S, BLK_T } from '../../core/backend/blk';
import type { EngineEvent } from '../../core/session/tracker';

const GUARD = { timeout: 60_000 };
const GPA = 0x10_0000, SIZE = 4 << 20, UVA = 0x7f00_0010_0000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(f: () => T | undefined | false, what: string, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** A vhost-user front-end played by the test: its own native layer, guest memory in a memfd, eventfds. */
class ScriptedFrontEnd {
  readonly native = new FfiNative();
  readonly fd: number;
  readonly memfd: number;
  readonly mem = new DeviceMemory();
  private buf = Buffer.alloc(0);

  constructor(socket: string) {
    this.fd = this.native.connectUnix(socket);
    this.memfd = this.native.memfd('scripted-guest', SIZE);
    this.mem.set([{ gpa: GPA, uva: UVA, size: SIZE, offset: 0, fd: this.memfd }]);
  }

  send(bytes: Uint8Array, fds: number[] = []): void {
    let off = 0;
    while (off < bytes.byteLength) {
      const n = this.native.sendMsg(this.fd, bytes, off, bytes.byteLength - off, off === 0 ? fds : []);
      if (n < 0) continue;
      off += n;
    }
  }

  msg(code: number, payload?: Record<string, unknown>, opts: { needReply?: boolean; fds?: number[]; raw?: Uint8Array } = {}): void {
    this.send(encodeMessage({ channel: 'main', code, needReply: opts.needReply, payload, raw: opts.raw }), opts.fds);
  }

  /** Next reply from the back-end: [code, payload]. */
  async reply(ms = 10_000): Promise<{ code: number; flags: number; payload: Buffer }> {
    const end = Date.now() + ms;
    const chunk = new Uint8Array(4096);
    for (;;) {
      if (this.buf.length >= 12) {
        const size = this.buf.readUInt32LE(8);
        if (this.buf.length >= 12 + size) {
          const r = { code: this.buf.readUInt32LE(0), flags: this.buf.readUInt32LE(4), payload: this.buf.subarray(12, 12 + size) };
          this.buf = this.buf.subarray(12 + size);
          return r;
        }
      }
      const r = this.native.recvMsg(this.fd, chunk, 0, chunk.byteLength);
      for (const f of r.fds) this.native.close(f);
      if (r.n === 0) throw new Error('back-end closed the connection');
      if (r.n > 0) { this.buf = Buffer.concat([this.buf, chunk.subarray(0, r.n)]); continue; }
      if (Date.now() > end) throw new Error('no reply from the back-end');
      await sleep(2);
    }
  }

  async ack(code: number): Promise<bigint> {
    const r = await this.reply();
    assert.equal(r.code, code, `reply to request ${code}`);
    assert.equal(r.flags, 0x5, 'reply flags: version 1 | REPLY');
    return r.payload.readBigUInt64LE(0);
  }

  eventfd(label: string): { ours: number; send: () => number } {
    const ours = this.native.eventfd(0, label);
    return { ours, send: () => this.native.dup(ours, `${label} (sent)`) };
  }

  kick(fd: number): void { fs.writeSync(fd, Buffer.from([1, 0, 0, 0, 0, 0, 0, 0])); }

  close(): void {
    this.native.close(this.fd);
    this.native.close(this.memfd);
  }
}

/** Send fds we keep: sendMsg does not close them, so send dups and close those after sending. */
function sendWithFds(fe: ScriptedFrontEnd, code: number, payload: Record<string, unknown>, fds: number[], needReply = false): void {
  fe.msg(code, payload, { fds, needReply });
  for (const f of fds) fe.native.close(f);
}

function hdr(type: number, sector: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32LE(type, 0);
  b.writeBigUInt64LE(BigInt(sector), 8);
  return b;
}

const FEATURES = (1n << 32n) | (1n << 30n) | (1n << 29n) | (1n << 28n);
const PROTO = (1n << 0n) | (1n << 3n) | (1n << 9n) | (1n << 15n); // MQ, REPLY_ACK, CONFIG, CONFIGURE_MEM_SLOTS

/** A built-in blk back-end listening in a scratch folder on an image holding `contents`; its events collected. */
async function blkBackend(t: TestContext, prefix: string, contents: Buffer) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const image = path.join(dir, 'disk.img');
  fs.writeFileSync(image, contents);
  const socket = path.join(dir, 'blk.sock');
  const be = new Backend({ device: 'blk', blk: { image }, endpoint: { mode: 'listen', path: socket } });
  const events: EngineEvent[] = [];
  be.on('event', (e) => events.push(e));
  t.after(() => be.stop());
  await be.start();
  return { image, socket, be, events };
}

test('hostile front-end: out-of-order and bad messages, rings and descriptors outside memory, oversized requests; the image is only written inside requests', GUARD, async (t) => {
  const { image, socket, be, events } = await blkBackend(t, 'vl-hostile-', Buffer.alloc(64 * 512, 0xee));
  assert.equal(fs.statSync(socket).mode & 0o777, 0o600, 'listening socket is 0600');
  const errors = () => events.flatMap((e) => (e.kind === 'error' ? [e.message] : []));
  const fe = new ScriptedFrontEnd(socket);
  try {
    // Requests before negotiation, for rings that do not exist, of unknown codes, too large: answered or reported.
    fe.msg(9, { index: 5, flags: 0, desc: 0n, used: 0n, avail: 0n, log: 0n });
    fe.msg(1);
    const offered = await fe.ack(1);
    assert.equal(offered & FEATURES, FEATURES, 'offers VERSION_1, PROTOCOL_FEATURES, EVENT_IDX, INDIRECT');
    assert.ok((offered >> 9n) & 1n, 'offers FLUSH');
    fe.msg(15);
    assert.equal((await fe.ack(15)) & PROTO, PROTO);
    fe.msg(16, { features: PROTO });
    fe.msg(8, { index: 0, num: 100 }, { needReply: true });
    assert.equal(await fe.ack(8), 1n, 'SET_VRING_NUM 100 refused (not a power of two)');
    fe.msg(11, { index: 9, num: 0 });
    await fe.reply(); // GET_VRING_BASE always answered, even for a ring that does not exist
    fe.msg(99, undefined, { needReply: true, raw: new Uint8Array(0) });
    assert.equal(await fe.ack(99), 1n, 'unknown request refused');
    fe.msg(2, undefined, { needReply: true, raw: new Uint8Array(5000) });
    assert.equal(await fe.ack(2), 1n, 'oversized SET_FEATURES refused');
    fe.msg(24, { offset: 0, size: 60, flags: 0, data: new Uint8Array(60) });
    const cfg = await fe.reply();
    assert.equal(cfg.payload.readUInt32LE(4), 60, 'GET_CONFIG answered with 60 bytes');
    assert.equal(cfg.payload.readBigUInt64LE(12), 64n, 'capacity 64 sectors');
    fe.msg(24, { offset: 250, size: 60, flags: 0, data: new Uint8Array(60) });
    assert.equal((await fe.reply()).payload.readUInt32LE(4), 0, 'GET_CONFIG outside the config space: zero-size reply');

    // Ring set up before memory, with the descriptor table outside guest memory.
    fe.msg(3);
    fe.msg(2, { features: FEATURES | (1n << 9n) }, { needReply: true });
    assert.equal(await fe.ack(2), 0n);
    const kick = fe.eventfd('kick 0'), call = fe.eventfd('call 0');
    fe.msg(8, { index: 0, num: 16 }, { needReply: true });
    assert.equal(await fe.ack(8), 0n);
    fe.msg(9, { index: 0, flags: 0, desc: BigInt(UVA + SIZE + 0x1000), used: BigInt(UVA + 0x2000), avail: BigInt(UVA + 0x1000), log: 0n });
    fe.msg(10, { index: 0, num: 0 });
    sendWithFds(fe, 12, { index: 0, noFd: false }, [kick.send()]);
    sendWithFds(fe, 13, { index: 0, noFd: false }, [call.send()]);
    fe.msg(18, { index: 0, num: 1 }, { needReply: true });
    assert.equal(await fe.ack(18), 0n);
    sendWithFds(fe, 37, { padding: 0n, guestPhysAddr: BigInt(GPA), memorySize: BigInt(SIZE), userspaceAddr: BigInt(UVA), mmapOffset: 0n }, [fe.native.dup(fe.memfd, 'memfd (sent)')], true);
    assert.equal(await fe.ack(37), 0n, 'ADD_MEM_REG accepted');
    await until(() => errors().find((m) => /descriptor ring outside guest memory/.test(m)), 'ring fault report');

    // Fix the ring; the driver side lives in the memfd.
    const arena = new Arena(fe.mem, GPA, GPA + SIZE);
    const drv = new SplitDriver(fe.mem, arena, 16);
    fe.msg(9, { index: 0, flags: 0, desc: BigInt(drv.desc - GPA + UVA), used: BigInt(drv.used - GPA + UVA), avail: BigInt(drv.avail - GPA + UVA), log: 0n }, { needReply: true });
    assert.equal(await fe.ack(9), 0n);
    const bad = [
      drv.add([{ len: 16, data: hdr(BLK_T.OUT, 2) }, { len: 512, addr: GPA + SIZE + 4096 }, { len: 1, write: true }]), // data outside memory
      drv.add([{ len: 16, data: hdr(BLK_T.OUT, 60) }, { len: 8192, data: Buffer.alloc(8192, 1) }, { len: 1, write: true }]), // past the image end
      drv.add([{ len: 16, data: hdr(BLK_T.IN, 0) }, { len: 128 << 20, addr: GPA }, { len: 1, write: true }]), // oversized (and beyond memory)
    ];
    const good = drv.add([{ len: 16, data: hdr(BLK_T.OUT, 8) }, { len: 1024, data: Buffer.alloc(1024, 0x33) }, { len: 1, write: true }]);
    fe.kick(kick.ours);
    await until(() => drv.usedIdx() === 4, 'four requests used');
    const st = (a: number) => { const b = Buffer.alloc(1); fe.mem.read(a, b, 0, 1); return b[0]; };
    for (const r of bad) assert.equal(st(r.addrs[2]), BLK_S.IOERR);
    assert.equal(st(good.addrs[2]), BLK_S.OK);
    const img = fs.readFileSync(image);
    assert.ok(img.subarray(8 * 512, 10 * 512).every((b) => b === 0x33), 'the good request landed');
    assert.ok(img.subarray(0, 8 * 512).every((b) => b === 0xee) && img.subarray(10 * 512).every((b) => b === 0xee), 'nothing else written');

    // GET_VRING_BASE stops the ring and returns the next avail index; a second cycle resumes from it.
    fe.msg(11, { index: 0, num: 0 });
    const base = await fe.reply();
    assert.deepEqual([base.code, base.payload.readUInt32LE(0), base.payload.readUInt32LE(4)], [11, 0, 4]);
    const kick2 = fe.eventfd('kick 0 (cycle 2)');
    fe.msg(10, { index: 0, num: 4 });
    sendWithFds(fe, 12, { index: 0, noFd: false }, [kick2.send()]);
    const again = drv.add([{ len: 16, data: hdr(BLK_T.IN, 8) }, { len: 512, write: true }, { len: 1, write: true }]);
    fe.kick(kick2.ours);
    await until(() => drv.usedIdx() === 5, 'request of the second cycle used');
    const back = Buffer.alloc(512);
    fe.mem.read(again.addrs[1], back, 0, 512);
    assert.ok(back.every((b) => b === 0x33));

    // Memory goes away: the ring cannot run, the kick is reported, nothing crashes.
    fe.msg(38, { padding: 0n, guestPhysAddr: BigInt(GPA), memorySize: BigInt(SIZE), userspaceAddr: BigInt(UVA), mmapOffset: 0n }, { needReply: true });
    assert.equal(await fe.ack(38), 0n);
    fe.msg(38, { padding: 0n, guestPhysAddr: BigInt(GPA), memorySize: BigInt(SIZE), userspaceAddr: BigInt(UVA), mmapOffset: 0n }, { needReply: true });
    assert.equal(await fe.ack(38), 1n, 'removing an unknown region is refused');
    fe.kick(kick2.ours);
    fe.msg(1);
    await fe.ack(1);
    for (const f of [kick.ours, call.ours, kick2.ours]) fe.native.close(f);
  } finally {
    fe.close();
  }
  await until(() => events.find((e) => e.kind === 'session' && e.event === 'end'), 'session end');
  const s = be.tracker.sessions.get(1)!;
  assert.equal(s.state.features.acked, FEATURES | (1n << 9n), 'the tracker saw the negotiated features');
  assert.equal(s.state.protocolFeatures.acked, PROTO);
  assert.deepEqual(s.missingReplies(), [], 'every request that needed a reply got one');
  assert.ok(s.messages.some((m) => m.from === 'backend' && m.name === 'GET_VRING_BASE' && m.reply));
  assert.match(errors().join('\n'), /vring 5 does not exist/);
  assert.match(errors().join('\n'), /unknown request code 99/);
  assert.match(errors().join('\n'), /exceeds 4096/);

  // A front-end that sends a frame too large to be a message is cut off; the next one is served.
  const fe2 = new ScriptedFrontEnd(socket);
  const huge = Buffer.alloc(12);
  huge.writeUInt32LE(1, 0); huge.writeUInt32LE(1, 4); huge.writeUInt32LE(8 << 20, 8);
  fe2.send(huge);
  await until(() => events.find((e) => e.kind === 'session' && e.session === 2 && e.event === 'end'), 'session 2 end');
  assert.match((events.find((e) => e.kind === 'session' && e.session === 2 && e.event === 'end') as { reason: string }).reason, /8388608-byte payload/);
  fe2.close();
  const fe3 = new ScriptedFrontEnd(socket);
  fe3.msg(1);
  assert.ok((await fe3.ack(1)) & (1n << 32n));
  fe3.close();
  await until(() => events.find((e) => e.kind === 'session' && e.session === 3 && e.event === 'end'), 'session 3 end');
  const final = await be.stop();
  assert.deepEqual(final, { ledger: 0, violations: [] }, 'worker closed every fd exactly once');
  for (const f of [fe, fe2, fe3]) assert.equal(f.native.ledger.violations.length, 0);
});

test('CLI backend: usage errors are clear and exit 2', GUARD, async () => {
  const { spawnSync } = await import('node:child_process');
  const cli = path.join(__dirname, '..', '..', '..', 'dist', 'cli.js');
  const run = (...args: string[]) => spawnSync(process.execPath, [cli, 'backend', ...args], { encoding: 'utf8' });
  const cases: [string[], RegExp][] = [
    [['blk', '--image', '/nonexistent'], /needs --socket PATH/],
    [['blk', '--socket', '/tmp/x.sock'], /needs --image FILE/],
    [['blk', '--socket', '/tmp/x.sock', '--image', '/nonexistent/disk.img'], /does not exist/],
    [['net', '--socket', '/tmp/x.sock'], /exactly one of --tap IFNAME or --loopback/],
    [['net', '--socket', '/tmp/x.sock', '--loopback', '--ip', '300.1.1.1'], /not an IPv4 address/],
    [['net', '--socket', '/tmp/x.sock', '--loopback', '--vm-copy', 'maybe'], /--vm-copy must be auto, off or require/],
    [['scsi', '--socket', '/tmp/x.sock'], /needs a device: blk or net/],
  ];
  for (const [args, re] of cases) {
    const r = run(...args);
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, re);
  }
  const help = run('help');
  assert.equal(help.status, 0);
  assert.match(help.stdout, /vhost-lens backend blk --socket PATH --image FILE/);
});

test('breakpoints: a gated request is held (not handled, not answered) until released', GUARD, async (t) => {
  const { socket, be, events } = await blkBackend(t, 'vl-gate-', Buffer.alloc(8 * 512));
  be.setGate(false, ['main:15']); // GET_PROTOCOL_FEATURES
  const fe = new ScriptedFrontEnd(socket);
  try {
    fe.msg(1);
    await fe.ack(1);
    fe.msg(15);
    const held = await until(() => events.find((e) => e.kind === 'held'), 'held event') as Extract<EngineEvent, { kind: 'held' }>;
    assert.equal(held.msg.name, 'GET_PROTOCOL_FEATURES');
    await assert.rejects(fe.reply(300), /no reply/, 'no answer while held');
    be.release(held.holdId);
    assert.ok((await fe.ack(15)) & (1n << 3n), 'answered after release (REPLY_ACK offered)');
    const s = be.tracker.sessions.get(1)!;
    await until(() => s.messages.length === 4, 'four messages tracked');
    assert.deepEqual(s.messages.map((m) => `${m.from[0]}:${m.name}`), ['f:GET_FEATURES', 'b:GET_FEATURES', 'f:GET_PROTOCOL_FEATURES', 'b:GET_PROTOCOL_FEATURES']);
  } finally {
    fe.close();
  }
  assert.deepEqual(await be.stop(), { ledger: 0, violations: [] });
});
