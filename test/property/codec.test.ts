// Property tests for the codec (seeded; VHOST_LENS_SEED replays): random bytes never throw and get problems, valid messages round-trip.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  decodeMessage, encodeMessage, payloadCodec, HEADER_SIZE, MAX_PAYLOAD, MAX_FDS, VERSION, KNOWN_FLAGS, FLAG_REPLY,
  type DecodedMessage, type ProblemCode, type RawMessage,
} from '../../core/protocol/codec';
import { MESSAGES, specFor, requester, otherSide, type Channel, type Side } from '../../core/protocol/table';
import type { DecodeContext } from '../../core/protocol/payloads';
import { header } from '../helpers/wire';
import { Rng, property, chooseSeed, randomPayload, randomValidMessage } from '../helpers/wireRandom';

const SEED = chooseSeed();
const has = (d: DecodedMessage, c: ProblemCode): boolean => d.problems.some((p) => p.code === c);
const show = (raw: RawMessage, d: DecodedMessage): string =>
  `input ${JSON.stringify({ ...raw, header: Buffer.from(raw.header).toString('hex'), payload: Buffer.from(raw.payload).toString('hex').slice(0, 200) })}\n` +
  `problems ${JSON.stringify(d.problems)}`;

const randomCtx = (rng: Rng): DecodeContext => ({ packed: rng.bool(0.3), xenMmap: rng.bool(0.3) });

/** Layouts whose exact wire size is known (or a tolerated range: C padding present or not). */
function sizeRange(layout: string, fixed: number | undefined): [number, number] | undefined {
  if (layout === 'IOTLB message') return [26, 32];
  if (layout === 'inflight description') return [20, 24];
  return fixed === undefined ? undefined : [fixed, fixed];
}

/** Decoding deliberately drops these (padding, reserved bits), so bytes can differ while the value round-trips. */
const LOSSY = new Set(['IOTLB message', 'inflight description', 'shared memory mapping (VhostUserMMap)', 'vring area description']);

function randomRaw(rng: Rng): { raw: RawMessage; ctx: DecodeContext } {
  const channel: Channel = rng.bool() ? 'main' : 'backend';
  const from: Side = rng.bool() ? 'frontend' : 'backend';
  const specs = MESSAGES.filter((m) => m.channel === channel);
  const code = rng.pick([() => rng.pick(specs).code, () => rng.pick(specs).code, () => rng.int(60), () => rng.u32()])();
  const flags = rng.pick([1, 1, 5, 9, 13, 0, 2, 3, rng.u32(), 1 | (1 << rng.int(32))]) >>> 0;
  const spec = specFor(channel, code);
  let body: Uint8Array;
  const ctx = randomCtx(rng);
  if (spec && rng.bool(0.6)) {
    // A valid payload for the spec, then maybe damaged.
    const reply = (flags & FLAG_REPLY) !== 0;
    const layout = reply ? (spec.reply ?? spec.request).layout : spec.request.layout;
    body = randomPayload(layout, rng, ctx);
    const cut = rng.int(4);
    if (cut === 1 && body.byteLength) body = body.subarray(0, rng.int(body.byteLength));
    else if (cut === 2) { const b = new Uint8Array(body.byteLength + rng.range(1, 40)); b.set(body); b.set(rng.bytes(b.byteLength - body.byteLength), body.byteLength); body = b; }
    else if (cut === 3 && body.byteLength) { body = body.slice(); body[rng.int(body.byteLength)] ^= 1 << rng.int(8); }
  } else {
    body = rng.bytes(rng.pick([0, 4, 8, 16, 24, 32, 40, rng.int(80), rng.int(300), rng.pick([MAX_PAYLOAD, MAX_PAYLOAD + 1, 5000])]));
  }
  const size = rng.bool(0.75) ? body.byteLength : rng.pick([0, body.byteLength + 1, Math.max(0, body.byteLength - 1), rng.u32(), MAX_PAYLOAD + 1]);
  let hdr = header(code, flags, size);
  if (rng.bool(0.05)) hdr = hdr.subarray(0, rng.int(HEADER_SIZE));
  if (rng.bool(0.1)) { // decode from the middle of a bigger buffer
    const buf = new Uint8Array(hdr.byteLength + body.byteLength + 7);
    buf.set(hdr, 3); buf.set(body, 3 + hdr.byteLength);
    hdr = buf.subarray(3, 3 + hdr.byteLength);
    body = buf.subarray(3 + hdr.byteLength, 3 + hdr.byteLength + body.byteLength);
  }
  const fdCount = rng.pick([0, 0, 0, 1, 1, 2, rng.int(9), rng.range(9, 253)]);
  return { raw: { channel, from, header: hdr, payload: body, fdCount }, ctx };
}

test(`random header + payload: decodeMessage never throws, never faults, always names what is wrong (seed ${SEED})`, () => {
  let clean = 0;
  property('decode random bytes', 30000, (rng) => {
    const { raw, ctx } = randomRaw(rng);
    let d: DecodedMessage;
    try { d = decodeMessage(raw, ctx); } catch (e) { throw new Error(`decodeMessage threw ${(e as Error).stack}\n${JSON.stringify(raw.channel)}`); }
    // Failure text is built only on failure (it costs more than the decode).
    const ok = (cond: boolean, what: string): void => { if (!cond) assert.fail(`${what}\n${show(raw, d)}`); };
    ok(Array.isArray(d.problems), 'problems is an array');
    ok(!has(d, 'decoder-fault'), 'no decoder-fault');
    for (const p of d.problems) {
      ok(p.severity === 'error' || p.severity === 'warning', 'severity');
      ok(typeof p.message === 'string' && p.message.length > 0, 'message text');
    }
    assert.equal(d.fds, raw.fdCount);
    if (raw.header.byteLength < HEADER_SIZE) {
      ok(d.problems.length === 1 && d.problems[0].code === 'truncated-header', 'only truncated-header');
      return;
    }
    const dv = new DataView(raw.header.buffer, raw.header.byteOffset, HEADER_SIZE);
    const [code, flags, size] = [dv.getUint32(0, true), dv.getUint32(4, true), dv.getUint32(8, true)];
    assert.equal(d.code, code);
    assert.equal(d.flags, flags);
    assert.equal(d.size, size);
    // Header verdicts.
    ok(has(d, 'bad-version') === ((flags & 3) !== VERSION), 'bad-version iff version != 1');
    ok(has(d, 'reserved-flags') === ((flags & ~KNOWN_FLAGS) !== 0), 'reserved-flags iff reserved bits');
    ok(has(d, 'size-too-large') === (size > MAX_PAYLOAD), 'size-too-large iff size > 0x1000');
    if (raw.payload.byteLength < size) ok(has(d, 'truncated-payload'), "has(d, 'truncated-payload')");
    if (raw.payload.byteLength > size) ok(d.problems.some((p) => p.code === 'trailing-bytes' && p.severity === 'error'), 'bytes beyond the declared size: trailing-bytes error');
    const spec = specFor(raw.channel, code);
    ok(has(d, 'unknown-request') === !spec, 'unknown-request iff no spec');
    if (!spec) return;
    const reply = (flags & FLAG_REPLY) !== 0;
    const expectedFrom = reply ? otherSide(requester(raw.channel)) : requester(raw.channel);
    ok(has(d, 'wrong-direction') === (raw.from !== expectedFrom), 'wrong-direction iff sent by the wrong side');
    // Payload verdicts: the decoder reads exactly the declared bytes.
    const body = raw.payload.subarray(0, Math.min(size, raw.payload.byteLength));
    const c = payloadCodec(spec, reply, body.byteLength);
    const range = sizeRange(c.layout, c.size);
    if (range && body.byteLength < range[0]) ok(has(d, 'truncated-payload'), `${c.layout} shorter than ${range[0]}: truncated-payload`);
    if (range && body.byteLength > range[1]) ok(has(d, 'trailing-bytes'), `${c.layout} longer than ${range[1]}: trailing-bytes`);
    if (d.payload === undefined) ok(has(d, 'truncated-payload'), 'no payload value only when truncated');
    // Fd verdicts from the table's rule (payload-dependent rules only once the payload decoded).
    const rule = reply ? spec.replyFds : spec.fds;
    const p = d.payload as { nregions?: number; noFd?: boolean } | undefined;
    const want: [number, number] | undefined = rule === 'none' ? [0, 0] : rule === 'one' ? [1, 1] : rule === 'optional' ? [0, 1]
      : rule === 'up-to-8' ? [0, MAX_FDS] : !p ? undefined
      : rule === 'per-region' ? [Math.min(Number(p.nregions), MAX_FDS), Math.min(Number(p.nregions), MAX_FDS)] : p.noFd ? [0, 0] : [1, 1];
    const fdProblem = has(d, 'missing-fds') || has(d, 'too-many-fds') || has(d, 'unexpected-fds');
    if (want) ok(fdProblem === (raw.fdCount < want[0] || raw.fdCount > want[1]), `fd verdict for ${rule} with ${raw.fdCount} fds`);
    if (want && raw.fdCount < want[0]) ok(has(d, 'missing-fds'), 'too few fds: missing-fds');
    if (raw.fdCount > MAX_FDS && d.payload !== undefined) {
      ok(has(d, 'too-many-fds') || has(d, 'unexpected-fds'), 'more than 8 fds is always reported');
    }
    // No problems means a well-formed message: the value re-encodes to the very bytes (or, for lossy layouts, the same value).
    if (d.problems.length === 0) {
      clean++;
      assert.equal(raw.payload.byteLength, size);
      const again = encodeMessage({ channel: raw.channel, code, reply, needReply: d.needReply, payload: d.payload }, ctx);
      if (!LOSSY.has(c.layout)) assert.deepEqual(again.subarray(HEADER_SIZE), raw.payload, show(raw, d));
      const d2 = decodeMessage({ ...raw, header: again.subarray(0, HEADER_SIZE), payload: again.subarray(HEADER_SIZE) }, ctx);
      assert.deepEqual(d2.payload, d.payload, show(raw, d));
    }
  }, SEED);
  assert.ok(clean > 100, `the generator should also produce clean messages (got ${clean})`);
});

test(`random valid messages from the table round-trip with no problems (seed ${SEED})`, () => {
  const seen = new Set<string>();
  property('valid round trip', 8000, (rng) => {
    const ctx = randomCtx(rng);
    const { spec, b } = randomValidMessage(rng, ctx);
    const raw = b.raw();
    const [reply, needReply] = [b.isReply, (raw.header[4] & 8) !== 0];
    const body = raw.payload;
    const d = decodeMessage(raw, ctx);
    assert.deepEqual(d.problems, [], show(raw, d));
    assert.equal(d.spec, spec);
    const again = encodeMessage({ channel: spec.channel, code: spec.code, reply, needReply, payload: d.payload }, ctx);
    assert.deepEqual(again.subarray(0, HEADER_SIZE), raw.header, show(raw, d));
    assert.deepEqual(again.subarray(HEADER_SIZE), body, show(raw, d));
    const d2 = decodeMessage({ ...raw, header: again.subarray(0, HEADER_SIZE), payload: again.subarray(HEADER_SIZE) }, ctx);
    assert.deepEqual(d2.payload, d.payload);
    seen.add(`${spec.channel}:${spec.code}:${reply}`);
  }, SEED);
  // every row's request was generated at least once
  for (const m of MESSAGES) assert.ok(seen.has(`${m.channel}:${m.code}:false`), `${m.name} never generated`);
});
