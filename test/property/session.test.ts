// Property tests for Session (seeded; VHOST_LENS_SEED replays): random valid and corrupted sequences keep state and fd ledger consistent.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Session, type SessionMessage } from '../../core/session/session';
import { specFor, type MessageSpec } from '../../core/protocol/table';
import { HEADER_SIZE, FLAG_REPLY } from '../../core/protocol/codec';
import { PROTOCOL_BIT, FEATURE_BIT } from '../../core/protocol/features';
import type { DecodeContext, MemRegion } from '../../core/protocol/payloads';
import { msg, msgCode, FakeFds, type MessageBuilder, type IngestRecord, type RegionFields } from '../helpers/wire';
import { Rng, property, chooseSeed, randomRegion, randomValidMessage } from '../helpers/wireRandom';

const SEED = chooseSeed();

const bit = (n: number): bigint => 1n << BigInt(n);
const POOL: RegionFields[] = [
  { gpa: 0n, size: 0x10000000n, uva: 0x7f0000000000n },
  { gpa: 0x100000000n, size: 0x10000000n, uva: 0x7f0010000000n, offset: 0x10000000n },
  { gpa: 0x200000000n, size: 0x1000n, uva: 0x7f0020000000n },
  { gpa: 0x200001000n, size: 0x1000n, uva: 0x7f0020001000n },
  { gpa: 0xfee00000n, size: 0x100000n, uva: 0x7f0030000000n },
  { gpa: 0n, size: 0x10000000n, uva: 0x7f1000000000n }, // same gpa as #0, other uva
];

/** One random, mostly plausible, message for a session; `ctx` is what the session negotiated so far. */
function randomMessage(rng: Rng, ctx: DecodeContext): MessageBuilder {
  const xen = !!ctx.xenMmap;
  const region = (): RegionFields => (rng.bool(0.85) ? rng.pick(POOL) : randomRegion(rng));
  const vr = (): number => rng.pick([0, 0, 1, 1, 2, 3, rng.int(256)]);
  switch (rng.int(14)) {
    case 0: return rng.bool() ? msg('GET_FEATURES') : msg('GET_FEATURES').reply().u64(bit(30) | (rng.bool(0.2) ? bit(FEATURE_BIT.RING_PACKED) : 0n) | rng.u64() & 0xffffffn);
    case 1: return msg('SET_FEATURES').u64(rng.pick([bit(30) | bit(32), bit(FEATURE_BIT.RING_PACKED) | bit(32), rng.u64()]));
    case 2: {
      const pf = [bit(PROTOCOL_BIT.REPLY_ACK), bit(PROTOCOL_BIT.CONFIGURE_MEM_SLOTS), bit(PROTOCOL_BIT.XEN_MMAP), bit(PROTOCOL_BIT.LOG_SHMFD), bit(PROTOCOL_BIT.STATUS)]
        .filter(() => rng.bool(0.5)).reduce((a, b) => a | b, 0n);
      return rng.pick([() => msg('GET_PROTOCOL_FEATURES'), () => msg('GET_PROTOCOL_FEATURES').reply().u64(pf), () => msg('SET_PROTOCOL_FEATURES').u64(pf)])();
    }
    case 3: {
      const regions = Array.from({ length: rng.pick([0, 1, 2, 3, 8, 9]) }, region);
      const fds = Math.max(0, Math.min(regions.length, 8) + rng.pick([0, 0, 0, -1, 1]));
      return msg('SET_MEM_TABLE').payload((p) => p.memTable(regions, { xen })).fds(fds, 'memfd').needReply(rng.bool(0.3));
    }
    case 4: case 5:
      return msg('ADD_MEM_REG').payload((p) => p.singleRegion(region(), { xen })).fds(rng.pick([1, 1, 1, 0, 2]), 'memfd').needReply(rng.bool(0.3));
    case 6:
      return msg('REM_MEM_REG').payload((p) => p.singleRegion({ ...region(), offset: rng.pick([0n, 0x1000n]) }, { xen })).fds(rng.pick([0, 0, 1]), 'memfd');
    case 7: case 8: {
      const i = vr();
      return rng.pick([
        () => msg('SET_VRING_NUM').payload((p) => p.vringState(i, rng.pick([128, 256, 0]))),
        () => msg('SET_VRING_ADDR').payload((p) => p.vringAddr({ index: i, desc: 0x7f0000001000n, used: 0x7f0000002000n, avail: 0x7f0000001800n, log: 0n })),
        () => msg('SET_VRING_BASE').payload((p) => p.vringState(i, rng.int(0x10000))),
        () => { const noFd = rng.bool(0.2); return msg(rng.pick(['SET_VRING_KICK', 'SET_VRING_CALL', 'SET_VRING_ERR'])).payload((p) => p.vringFd(i, { noFd })).fds(noFd ? 0 : 1); },
        () => msg('SET_VRING_ENABLE').payload((p) => p.vringState(i, rng.int(2))),
        () => msg('GET_VRING_BASE').payload((p) => p.vringState(i, 0)),
        () => msg('GET_VRING_BASE').reply().payload((p) => p.vringState(i, rng.int(0x10000))),
      ])();
    }
    case 9: return rng.pick([
      () => msg('SET_STATUS').u64(rng.pick([0, 8, 11, 15])).needReply(rng.bool(0.3)),
      () => msg('GET_STATUS'), () => msg('GET_STATUS').reply().u64(rng.int(256)),
      () => msg('RESET_DEVICE'), () => msg('SET_OWNER'), () => msg('RESET_OWNER'),
      () => msg('SET_BACKEND_REQ_FD').fds(1, 'socket').needReply(rng.bool(0.5)),
    ])();
    case 10: return randomValidMessage(rng, ctx, (m) => m.channel === 'backend').b;
    case 11: { // an ack, maybe to nothing
      const spec = rng.pick([specFor('main', 5), specFor('main', 37), specFor('main', 8), specFor('main', 39)]) as MessageSpec;
      return msgCode('main', spec.code).reply().u64(rng.bool(0.8) ? 0 : 1);
    }
    case 12: return randomValidMessage(rng, ctx).b;
    default: return msgCode(rng.pick(['main', 'backend'] as const), rng.int(50)).flags(rng.u32()).payload(rng.bytes(rng.int(64))).fds(rng.int(3));
  }
}

/** Damage a record the ways a broken peer or a relay edge case would. */
function corrupt(rng: Rng, r: IngestRecord): void {
  const b = r.bytes.slice();
  const dv = (x: Uint8Array): DataView => new DataView(x.buffer, x.byteOffset, x.byteLength);
  switch (rng.int(10)) {
    case 0: if (b.byteLength) b[rng.int(b.byteLength)] ^= 1 << rng.int(8); break;
    case 1: r.bytes = b.subarray(0, rng.int(b.byteLength + 1)); return;
    case 2: { const x = new Uint8Array(b.byteLength + rng.range(1, 48)); x.set(b); x.set(rng.bytes(x.byteLength - b.byteLength), b.byteLength); r.bytes = x; return; }
    case 3: if (b.byteLength >= HEADER_SIZE) dv(b).setUint32(8, rng.pick([0, 4, rng.u32(), Math.max(0, b.byteLength - HEADER_SIZE - 8)]), true); break;
    case 4: if (b.byteLength >= HEADER_SIZE) dv(b).setUint32(4, rng.pick([0, 2, 3, 0x11, 5, 9, 13, rng.u32()]), true); break;
    case 5: if (b.byteLength >= HEADER_SIZE) dv(b).setUint32(0, rng.int(50), true); break;
    case 6: r.channel = r.channel === 'main' ? 'backend' : 'main'; break;
    case 7: r.from = r.from === 'frontend' ? 'backend' : 'frontend'; break;
    case 8: r.fds = Array.from({ length: rng.pick([0, 1, 2, 9]) }, () => ({ kind: 'memfd' as const })); break;
    default: r.relayProblems = [rng.pick(['MSG_CTRUNC: the kernel dropped fds that did not fit', 'truncated at EOF'])];
  }
  r.bytes = b;
}

/** The relay's header-level policy: memory fds of front-end memory requests are dup'ed and handed over. */
function relayKeeps(r: IngestRecord): boolean {
  if (r.channel !== 'main' || r.from !== 'frontend' || r.bytes.byteLength < HEADER_SIZE) return false;
  const dv = new DataView(r.bytes.buffer, r.bytes.byteOffset, HEADER_SIZE);
  return (dv.getUint32(4, true) & FLAG_REPLY) === 0 && specFor('main', dv.getUint32(0, true))?.relay === 'keep-memory-fds';
}

interface ModelRegion { gpa: bigint; size: bigint; uva: bigint; off: bigint; fd?: number }
const key = (r: { gpa: bigint; size: bigint; uva: bigint }): string => `${r.gpa}:${r.size}:${r.uva}`;

/** What the session must have done with an applied message (reference model of the memory table and acks). */
class Model {
  memory: ModelRegion[] = [];
  featuresAcked?: bigint;
  apply(m: SessionMessage, kept: number[] | undefined): void {
    const applied = m.spec && m.channel === 'main' && !m.reply && m.payload
      && !m.problems.some((p) => p.code === 'truncated-payload' || p.code === 'decoder-fault' || p.code === 'wrong-direction');
    if (!applied) return;
    const p = m.payload as Record<string, any>;
    const region = (r: MemRegion, fd?: number): ModelRegion => ({ gpa: r.guestPhysAddr, size: r.memorySize, uva: r.userspaceAddr, off: r.mmapOffset, fd });
    switch (m.name) {
      case 'SET_MEM_TABLE': this.memory = (p.regions as MemRegion[]).map((r, i) => region(r, kept?.[i])); break;
      case 'ADD_MEM_REG': this.memory.push(region(p as MemRegion, kept?.[0])); break;
      case 'REM_MEM_REG': {
        const i = this.memory.findIndex((r) => key(r) === key({ gpa: p.guestPhysAddr, size: p.memorySize, uva: p.userspaceAddr }));
        if (i >= 0) this.memory.splice(i, 1);
        break;
      }
      case 'SET_FEATURES': this.featuresAcked = p.features; break;
    }
  }
}

function checkInvariants(s: Session, fds: FakeFds, model: Model, bySeq: Map<number, SessionMessage>, m: SessionMessage, before: ModelRegion[]): void {
  const st = s.state;
  assert.ok(!m.problems.some((p) => p.code === 'decoder-fault'), `decoder fault: ${JSON.stringify(m.problems)}`);
  // Memory table equals the reference model, fds included.
  const actual = st.memory.map((r) => ({ gpa: r.guestPhysAddr, size: r.memorySize, uva: r.userspaceAddr, off: r.mmapOffset, fd: r.fd }));
  assert.deepEqual(actual, model.memory, `#${m.seq} ${m.name}: memory differs from the model`);
  // A removed region is gone: its key appears once less, and its fd is closed.
  if (m.name === 'REM_MEM_REG' && before.length > st.memory.length) {
    const gone = before.find((r) => !st.memory.some((x) => x.fd === r.fd && key({ gpa: x.guestPhysAddr, size: x.memorySize, uva: x.userspaceAddr }) === key(r)));
    if (gone?.fd !== undefined) assert.equal(fds.isOpen(gone.fd), false, 'the removed region\'s fd is closed');
  }
  // Ledger: the only open fds are the ones regions hold, each once.
  assert.deepEqual(fds.violations, []);
  const held = st.memory.map((r) => r.fd).filter((fd): fd is number => fd !== undefined);
  assert.equal(new Set(held).size, held.length, 'a kept fd held by two regions');
  assert.deepEqual([...fds.open].sort((a, b) => a - b), [...held].sort((a, b) => a - b), 'open fds = fds held by regions');
  // Features follow the last applied SET_FEATURES.
  assert.equal(st.features.acked, model.featuresAcked);
  // Vrings are keyed by their integer index.
  for (const [k, v] of st.vrings) {
    assert.ok(Number.isInteger(k) && k >= 0, `vring key ${k}`);
    assert.equal(v.index, k);
    assert.equal(typeof v.stopped, 'boolean');
  }
  assert.ok(['none', 'open', 'closed'].includes(st.backendChannel));
  assert.equal(typeof st.owner, 'boolean');
  // Pairing: a reply points at an earlier request of the same channel and code that points back.
  if (m.replyTo !== undefined) {
    const req = bySeq.get(m.replyTo);
    assert.ok(req, `#${m.seq} replies to unknown #${m.replyTo}`);
    assert.ok(m.reply && !req.reply && req.channel === m.channel && req.code === m.code && req.seq < m.seq);
    assert.equal(req.replySeq, m.seq);
    assert.ok(!req.problems.some((p) => p.code === 'wrong-direction'), 'paired with a wrong-direction request');
  }
  if (!m.reply) assert.equal(m.replySeq, undefined);
  for (const r of s.missingReplies()) assert.ok(r.expectsReply && r.replySeq === undefined && !r.reply);
}

test(`random message sequences keep the session consistent and every kept fd closed exactly once (seed ${SEED})`, () => {
  let messages = 0;
  let applied = 0;
  property('session sequences', 250, (rng) => {
    const fds = new FakeFds();
    const s = new Session(1, { closeFd: fds.closeFd });
    const model = new Model();
    const bySeq = new Map<number, SessionMessage>();
    const corruptRate = rng.pick([0, 0.1, 0.3, 0.6]);
    const n = rng.range(10, 120);
    for (let seq = 1; seq <= n; seq++) {
      const rec = randomMessage(rng, s.ctx).record(seq);
      if (rng.bool(corruptRate)) corrupt(rng, rec);
      if (relayKeeps(rec)) rec.kept = fds.alloc(rec.fds.length);
      else if (rng.bool(0.03)) rec.kept = fds.alloc(rng.range(1, 2)); // kept fds on a message that takes none
      const before = s.state.memory.map((r) => ({ gpa: r.guestPhysAddr, size: r.memorySize, uva: r.userspaceAddr, off: r.mmapOffset, fd: r.fd }));
      let out: ReturnType<Session['ingest']>;
      try { out = s.ingest(rec); } catch (e) { throw new Error(`ingest threw on #${seq}: ${(e as Error).stack}`); }
      bySeq.set(seq, out.msg);
      model.apply(out.msg, rec.kept);
      if (out.changes.length) applied++;
      checkInvariants(s, fds, model, bySeq, out.msg, before);
      messages++;
    }
    s.close();
    assert.deepEqual(fds.violations, []);
    for (const fd of fds.handedIn) assert.equal(fds.closed.get(fd), 1, `kept fd ${fd} closed ${fds.closed.get(fd) ?? 0} times`);
    assert.deepEqual(s.state.memory, []);
  }, SEED);
  assert.ok(messages > 5000 && applied > 500, `enough traffic (${messages} messages, ${applied} with state changes)`);
});
