// Decode and encode whole vhost-user messages from the table; decoding never throws, it reports typed problems.
import { Reader, Writer, Truncated } from './bytes';
import { ackU64, type DecodeContext, type PayloadCodec } from './payloads';
import { specFor, requester, type Channel, type MessageSpec, type Side, type FdRule } from './table';

export const HEADER_SIZE = 12;
export const FLAG_VERSION_MASK = 0x3;
export const VERSION = 0x1;
export const FLAG_REPLY = 0x4;
export const FLAG_NEED_REPLY = 0x8;
export const KNOWN_FLAGS = FLAG_VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY;
/** rust-vmm MAX_MSG_SIZE: larger payloads are reported (and still relayed). */
export const MAX_PAYLOAD = 0x1000;
/** Max fds per message (VHOST_USER_MAX_FDS / VHOST_MEMORY_BASELINE_NREGIONS). */
export const MAX_FDS = 8;

export type ProblemCode =
  | 'truncated-header' | 'bad-version' | 'reserved-flags' | 'size-too-large' | 'truncated-payload'
  | 'trailing-bytes' | 'unknown-request' | 'wrong-direction' | 'unexpected-fds' | 'missing-fds'
  | 'too-many-fds' | 'bad-field' | 'not-negotiated' | 'unexpected-reply' | 'missing-reply'
  | 'ctrunc' | 'decoder-fault';

export interface Problem {
  code: ProblemCode;
  severity: 'error' | 'warning';
  message: string;
}
export const problem = (code: ProblemCode, message: string, severity: 'error' | 'warning' = 'error'): Problem => ({ code, severity, message });

export interface Header {
  request: number;
  flags: number;
  size: number;
  version: number;
  reply: boolean;
  needReply: boolean;
}

export function parseHeader(bytes: Uint8Array): Header | undefined {
  if (bytes.byteLength < HEADER_SIZE) return undefined;
  const v = new DataView(bytes.buffer, bytes.byteOffset, HEADER_SIZE);
  const flags = v.getUint32(4, true);
  return {
    request: v.getUint32(0, true), flags, size: v.getUint32(8, true),
    version: flags & FLAG_VERSION_MASK, reply: (flags & FLAG_REPLY) !== 0, needReply: (flags & FLAG_NEED_REPLY) !== 0,
  };
}

export function headerProblems(h: Header): Problem[] {
  const p: Problem[] = [];
  if (h.version !== VERSION) p.push(problem('bad-version', `header version ${h.version}, expected ${VERSION}`));
  const reserved = h.flags & ~KNOWN_FLAGS;
  if (reserved) p.push(problem('reserved-flags', `reserved flag bits set: 0x${(reserved >>> 0).toString(16)}`));
  if (h.size > MAX_PAYLOAD) p.push(problem('size-too-large', `payload size ${h.size} exceeds ${MAX_PAYLOAD}`));
  return p;
}

export interface RawMessage {
  channel: Channel;
  /** Side that sent it. */
  from: Side;
  header: Uint8Array;
  payload: Uint8Array;
  fdCount: number;
}

export interface DecodedMessage {
  channel: Channel;
  from: Side;
  code: number;
  name: string;
  spec?: MessageSpec;
  flags: number;
  reply: boolean;
  needReply: boolean;
  size: number;
  fds: number;
  /** Decoded fields (u64 as bigint); undefined when the payload could not be decoded. */
  payload?: Record<string, unknown>;
  problems: Problem[];
}

export const nameOf = (channel: Channel, code: number): string => specFor(channel, code)?.name ?? `UNKNOWN_${code}`;

/** The codec used for a message's payload (request or reply). */
export function payloadCodec(spec: MessageSpec, reply: boolean, size: number): PayloadCodec<any> {
  if (!reply) return spec.request;
  if (spec.replyRule === 'always' && spec.reply) return spec.reply;
  // Acks are u64; a few requests (SET_MEM_TABLE, ADD_MEM_REG in postcopy) reply with a layout of their own.
  if (size === 8 || !spec.reply) return ackU64;
  return spec.reply;
}

function checkFds(rule: FdRule, fds: number, payload: Record<string, unknown> | undefined, name: string): Problem[] {
  const bad = (code: ProblemCode, want: string) => [problem(code, `${name} carries ${fds} fd(s), expected ${want}`)];
  switch (rule) {
    case 'none': return fds ? bad('unexpected-fds', 'none') : [];
    case 'one': return fds === 1 ? [] : bad(fds ? 'too-many-fds' : 'missing-fds', 'exactly 1');
    case 'optional': return fds > 1 ? bad('too-many-fds', 'at most 1') : [];
    case 'up-to-8': return fds > MAX_FDS ? bad('too-many-fds', `at most ${MAX_FDS}`) : [];
    case 'unless-nofd': {
      if (!payload) return [];
      const want = payload.noFd ? 0 : 1;
      if (fds === want) return [];
      return bad(fds < want ? 'missing-fds' : want ? 'too-many-fds' : 'unexpected-fds', payload.noFd ? 'none (no-fd bit set)' : '1 (no-fd bit clear)');
    }
    case 'per-region': {
      if (!payload) return [];
      const n = Math.min(Number(payload.nregions ?? 0), MAX_FDS);
      return fds === n ? [] : bad(fds < n ? 'missing-fds' : n ? 'too-many-fds' : 'unexpected-fds', `${n} (one per region)`);
    }
  }
}

/** Decode one framed message. Never throws: every failure becomes a problem on the result. */
export function decodeMessage(m: RawMessage, ctx: DecodeContext = {}): DecodedMessage {
  const h = parseHeader(m.header);
  if (!h) {
    return {
      channel: m.channel, from: m.from, code: -1, name: 'TRUNCATED', flags: 0, reply: false, needReply: false, size: 0, fds: m.fdCount,
      problems: [problem('truncated-header', `header has ${m.header.byteLength} bytes, expected ${HEADER_SIZE}`)],
    };
  }
  const spec = specFor(m.channel, h.request);
  const out: DecodedMessage = {
    channel: m.channel, from: m.from, code: h.request, name: spec?.name ?? `UNKNOWN_${h.request}`, spec,
    flags: h.flags, reply: h.reply, needReply: h.needReply, size: h.size, fds: m.fdCount, problems: headerProblems(h),
  };
  try {
    // The header frames the message: a peer reads exactly `size` bytes, so decode those and report any excess.
    let body = m.payload;
    if (m.payload.byteLength < h.size) {
      out.problems.push(problem('truncated-payload', `header says ${h.size} payload bytes, ${m.payload.byteLength} arrived`));
    } else if (m.payload.byteLength > h.size) {
      out.problems.push(problem('trailing-bytes', `header says ${h.size} payload bytes, ${m.payload.byteLength} arrived: ${m.payload.byteLength - h.size} beyond the declared size`));
      body = m.payload.subarray(0, h.size);
    }
    if (!spec) {
      out.problems.push(problem('unknown-request', `unknown ${m.channel === 'main' ? 'front-end' : 'back-end'} request code ${h.request}`));
      return out;
    }
    const expectedFrom = h.reply ? (requester(m.channel) === 'frontend' ? 'backend' : 'frontend') : requester(m.channel);
    if (m.from !== expectedFrom) {
      out.problems.push(problem('wrong-direction', `${h.reply ? 'reply' : 'request'} ${spec.name} sent by the ${m.from}, expected the ${expectedFrom}`));
    }
    const c = payloadCodec(spec, h.reply, body.byteLength);
    const r = new Reader(body);
    try {
      out.payload = c.decode(r, ctx) as Record<string, unknown>;
      if (r.remaining > 0) out.problems.push(problem('trailing-bytes', `${r.remaining} byte(s) after the ${c.layout}`, 'warning'));
      for (const msg of c.check?.(out.payload, ctx) ?? []) out.problems.push(problem('bad-field', msg));
    } catch (e) {
      if (!(e instanceof Truncated)) throw e;
      out.problems.push(problem('truncated-payload', `${spec.name}${h.reply ? ' reply' : ''}: ${c.layout} ${e.message}`));
    }
    out.problems.push(...checkFds(h.reply ? spec.replyFds : spec.fds, m.fdCount, out.payload, spec.name));
  } catch (e) {
    // A decoder bug must never escape onto the relay or the caller.
    out.problems.push(problem('decoder-fault', `decoder fault: ${(e as Error).message}`));
  }
  return out;
}

export interface EncodeInput {
  channel: Channel;
  code: number;
  reply?: boolean;
  needReply?: boolean;
  payload?: Record<string, unknown>;
  /** Raw payload bytes instead of a decoded value. */
  raw?: Uint8Array;
}

/** Encode header + payload. Throws on a value that does not fit its layout (encoding is for our own messages). */
export function encodeMessage(e: EncodeInput, ctx: DecodeContext = {}): Uint8Array {
  let body: Uint8Array;
  if (e.raw) body = e.raw;
  else {
    const spec = specFor(e.channel, e.code);
    if (!spec) throw new Error(`cannot encode unknown ${e.channel} request ${e.code}`);
    const w = new Writer();
    const ack = e.reply && spec.replyRule !== 'always' && (e.payload === undefined || 'ack' in e.payload);
    const c = ack ? ackU64 : payloadCodec(spec, !!e.reply, -1);
    c.encode((e.payload ?? {}) as never, w, ctx);
    body = w.finish();
  }
  const w = new Writer(HEADER_SIZE + body.byteLength);
  w.u32(e.code).u32(VERSION | (e.reply ? FLAG_REPLY : 0) | (e.needReply ? FLAG_NEED_REPLY : 0)).u32(body.byteLength).bytes(body);
  return w.finish();
}
