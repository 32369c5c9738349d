// Capture fixtures for adapter and replay tests: a QEMU-like vhost-user-blk session with two vrings and a back-end channel, written with the real CaptureWriter.
import { CaptureWriter } from '../../core/proxy/capture';
import type { WorkerEvent } from '../../core/node/workerProtocol';
import { msg, type MessageBuilder, type PayloadBuilder } from '../helpers/wire';

type P = (p: PayloadBuilder) => PayloadBuilder;
const req = (name: string, p?: P, o: { needReply?: boolean; fds?: number; kind?: 'eventfd' | 'memfd' | 'socket' } = {}): MessageBuilder => {
  const b = msg(name).needReply(!!o.needReply).fds(o.fds ?? 0, o.kind);
  return p ? b.payload(p) : b;
};
const rep = (name: string, p?: P): MessageBuilder => msg(name).reply().payload(p ?? ((x) => x.u64(0)));

export const FIXTURE_FEATURES = 0x175007e46n;
export const FIXTURE_ACKED = 0x140000046n;
export const GUEST_UVA = 0x7efc03fff000n;

/** Steps of the fixture session, in order: a message, or another relay event. */
type Step = MessageBuilder | Exclude<WorkerEvent, { kind: 'message' }>;

export function blkSessionSteps(): Step[] {
  const steps: Step[] = [
    req('GET_FEATURES'), rep('GET_FEATURES', (p) => p.u64(FIXTURE_FEATURES)),
    req('GET_PROTOCOL_FEATURES'), rep('GET_PROTOCOL_FEATURES', (p) => p.u64(0x8f2b)),
    req('SET_PROTOCOL_FEATURES', (p) => p.u64(0x8f2b)),
    req('GET_QUEUE_NUM'), rep('GET_QUEUE_NUM', (p) => p.u64(2)),
    req('GET_MAX_MEM_SLOTS'), rep('GET_MAX_MEM_SLOTS', (p) => p.u64(32)),
    req('SET_BACKEND_REQ_FD', undefined, { needReply: true, fds: 1, kind: 'socket' }), rep('SET_BACKEND_REQ_FD'),
    { kind: 'channel', session: 1, event: 'open' },
    req('SET_OWNER'),
    req('SET_FEATURES', (p) => p.u64(FIXTURE_ACKED)),
    req('ADD_MEM_REG', (p) => p.singleRegion({ gpa: 0, size: 0x10000000, uva: GUEST_UVA }), { needReply: true, fds: 1, kind: 'memfd' }), rep('ADD_MEM_REG'),
  ];
  for (const i of [0, 1]) {
    const base = 0x7efc13fdc000n + BigInt(i) * 0x10000n;
    steps.push(
      req('SET_VRING_NUM', (p) => p.vringState(i, 128)),
      req('SET_VRING_BASE', (p) => p.vringState(i, 0)),
      req('SET_VRING_ADDR', (p) => p.vringAddr({ index: i, desc: base, used: base + 0x1000n, avail: base + 0x800n })),
      req('SET_VRING_KICK', (p) => p.vringFd(i), { fds: 1, kind: 'eventfd' }),
      req('SET_VRING_CALL', (p) => p.vringFd(i), { fds: 1, kind: 'eventfd' }),
    );
  }
  steps.push(
    req('SET_VRING_ENABLE', (p) => p.vringState(0, 1)),
    req('SET_VRING_ENABLE', (p) => p.vringState(1, 1)),
    { kind: 'notify', session: 1, vring: 0, what: 'kick', signals: 3, count: 4, first: 1_700_000_000_100_000, last: 1_700_000_000_200_000 },
    msg('BACKEND_CONFIG_CHANGE_MSG'),
    req('GET_VRING_BASE', (p) => p.vringState(0, 0)), rep('GET_VRING_BASE', (p) => p.vringState(0, 7)),
    req('GET_VRING_BASE', (p) => p.vringState(1, 0)), rep('GET_VRING_BASE', (p) => p.vringState(1, 3)),
    { kind: 'session', session: 1, event: 'end', reason: 'the frontend closed the vhost-user connection' },
  );
  return steps;
}

/** The relay events of the fixture session (seq from 1, times increasing). */
export function blkSessionEvents(): WorkerEvent[] {
  const out: WorkerEvent[] = [{ kind: 'session', session: 1, event: 'start' }];
  let seq = 0;
  for (const s of blkSessionSteps()) {
    if ('kind' in s) { out.push(s); continue; }
    const r = s.record(++seq, { time: 1_700_000_000_000_000 + seq * 1000 });
    out.push({ kind: 'message', rec: { session: 1, ...r } });
  }
  return out;
}

/** Write the fixture as a capture file; returns its message count. */
export function writeBlkCapture(path: string): number {
  const w = new CaptureWriter(path, { tool: 'vhost-lens test fixture', frontend: 'listen:/tmp/fe.sock', backend: 'connect:/tmp/be.sock', device: 'blk' });
  let n = 0;
  for (const e of blkSessionEvents()) { w.write(e); if (e.kind === 'message') n++; }
  w.close();
  return n;
}
