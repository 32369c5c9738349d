// Benchmark client: GET_FEATURES request/reply round trips and pipelined throughput against a vhost-user socket.
import { FfiNative } from '../core/node/ffi';
import { FrameReader } from '../core/node/wire';
import { encodeMessage } from '../core/protocol/codec';
import { EPOLLIN } from '../core/sys/native';

export interface RttResult { samplesUs: number[]; pipelinedPerSec: number }

/** Blocking waits through epoll (no busy loop, so the client does not steal the relay's CPU). */
export function measureRtt(path: string, rounds: number, pipelineCount: number): RttResult {
  const n = new FfiNative();
  const fd = n.connectUnix(path);
  const ep = n.epollCreate();
  n.epollCtl(ep, 'add', fd, EPOLLIN);
  const reader = new FrameReader(n, fd, true);
  const req = encodeMessage({ channel: 'main', code: 1 });
  const recvOne = (): void => {
    for (;;) {
      const r = reader.step();
      if (r.t === 'frame') return;
      if (r.t === 'eof' || r.t === 'oversize') throw new Error('connection closed');
      n.epollWait(ep, 5000);
    }
  };
  const samplesUs: number[] = [];
  for (let i = 0; i < rounds + 50; i++) {
    const t0 = process.hrtime.bigint();
    n.write(fd, req, 0, req.byteLength, true);
    recvOne();
    if (i >= 50) samplesUs.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  const t0 = process.hrtime.bigint();
  let sent = 0, got = 0;
  const window = 32;
  while (got < pipelineCount) {
    while (sent < pipelineCount && sent - got < window) { n.write(fd, req, 0, req.byteLength, true); sent++; }
    recvOne();
    got++;
  }
  const pipelinedPerSec = pipelineCount / (Number(process.hrtime.bigint() - t0) / 1e9);
  n.close(ep);
  n.close(fd);
  return { samplesUs, pipelinedPerSec };
}

if (require.main === module) {
  const [path, rounds = '2000', pipe = '5000'] = process.argv.slice(2);
  const r = measureRtt(path, Number(rounds), Number(pipe));
  const s = [...r.samplesUs].sort((a, b) => a - b);
  console.log(JSON.stringify({ p50: s[Math.floor(s.length * 0.5)], p99: s[Math.floor(s.length * 0.99)], pipelinedPerSec: r.pipelinedPerSec }));
}
