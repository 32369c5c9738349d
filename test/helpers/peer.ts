// Synthetic vhost-user endpoints for native and relay tests (real-peer tests live in test/integration).
import { FfiNative } from '../../core/node/ffi';
import { FrameReader, Outbox, type Frame } from '../../core/node/wire';
import { encodeMessage, parseHeader, type EncodeInput, type Header } from '../../core/protocol/codec';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Poll until cond() is truthy; the deadline is a hang guard, not an assertion on speed. */
export async function until<T>(cond: () => T | undefined | false, what: string, ms = 10000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

export interface Received extends Frame { header: Header; payload: Uint8Array }

/** One end of a vhost-user connection driven from the test thread. */
export class TestPeer {
  readonly reader: FrameReader;
  readonly out: Outbox;
  closed = false;
  constructor(readonly native: FfiNative, readonly fd: number) {
    this.reader = new FrameReader(native, fd, false);
    this.out = new Outbox(native, fd, false, () => undefined);
  }
  static connect(native: FfiNative, path: string): TestPeer { return new TestPeer(native, native.connectUnix(path)); }

  send(m: EncodeInput | Uint8Array, fds: number[] = []): void {
    const bytes = m instanceof Uint8Array ? m : encodeMessage(m);
    this.out.push(bytes, fds);
    while (this.out.queued) this.out.flush();
  }

  /** Next complete message, or 'eof'. */
  async recv(ms = 10000): Promise<Received> {
    const end = Date.now() + ms;
    for (;;) {
      if (this.out.queued) this.out.flush();
      const r = this.reader.step();
      if (r.t === 'frame') return { ...r.frame, header: parseHeader(r.frame.bytes)!, payload: r.frame.bytes.subarray(12) };
      if (r.t === 'eof') throw new Error('peer closed the connection');
      if (Date.now() > end) throw new Error('timed out waiting for a message');
      await sleep(1);
    }
  }

  /** True once the other side has closed (EOF), without consuming a message. */
  async eof(ms = 10000): Promise<void> {
    const end = Date.now() + ms;
    for (;;) {
      const r = this.reader.step();
      if (r.t === 'eof') return;
      if (r.t === 'frame') { for (const f of r.frame.fds) this.native.close(f); }
      if (Date.now() > end) throw new Error('timed out waiting for EOF');
      await sleep(2);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.out.discard();
    for (const f of this.reader.pendingFds()) this.native.close(f);
    this.native.close(this.fd);
  }
}

/** Accept one connection on a listening fd (polling). */
export async function acceptOne(native: FfiNative, listenFd: number, ms = 10000): Promise<TestPeer> {
  const fd = await until(() => { const f = native.accept(listenFd); return f >= 0 ? f : undefined; }, 'a connection', ms);
  return new TestPeer(native, fd);
}

export function openFdCount(): number {
  return require('node:fs').readdirSync('/proc/self/fd').length;
}
