// Message framing on a vhost-user socket: read exactly the 12-byte header with its fds, then the payload; queued sends.
import type { Native } from '../sys/native';

export const HDR = 12;
/** Payloads above this are not buffered: the connection falls back to raw byte relay. */
export const FRAME_CAP = 1 << 20;

export interface Frame {
  /** Header + payload, contiguous, exactly as received. */
  bytes: Uint8Array;
  fds: number[];
  ctrunc: boolean;
}

export type ReadResult =
  | { t: 'frame'; frame: Frame }
  | { t: 'more' }
  | { t: 'eof'; partial?: Frame }
  | { t: 'oversize'; header: Frame; size: number };

export class FrameReader {
  private hdr = new Uint8Array(HDR);
  private hdrGot = 0;
  private fds: number[] = [];
  private ctrunc = false;
  private buf?: Uint8Array;
  private got = 0;

  constructor(private readonly native: Native, readonly fd: number, private readonly owned: boolean) {}

  /** Fds of a message not yet complete (to close when the connection dies). */
  pendingFds(): number[] { return this.fds; }

  /** Read at most one message; never blocks. */
  step(): ReadResult {
    if (!this.buf) {
      const r = this.native.recvMsg(this.fd, this.hdr, this.hdrGot, HDR - this.hdrGot);
      if (r.fds.length) this.fds.push(...r.fds);
      if (r.ctrunc) this.ctrunc = true;
      if (r.n < 0) return { t: 'more' };
      if (r.n === 0) return { t: 'eof', partial: this.hdrGot || this.fds.length ? this.take(this.hdr.slice(0, this.hdrGot)) : undefined };
      this.hdrGot += r.n;
      if (this.hdrGot < HDR) return { t: 'more' };
      const size = new DataView(this.hdr.buffer).getUint32(8, true);
      if (size > FRAME_CAP) return { t: 'oversize', header: this.take(this.hdr.slice()), size };
      this.buf = new Uint8Array(HDR + size);
      this.buf.set(this.hdr);
      this.got = HDR;
    }
    while (this.got < this.buf.byteLength) {
      const n = this.native.read(this.fd, this.buf, this.got, this.buf.byteLength - this.got, this.owned);
      if (n < 0) return { t: 'more' };
      if (n === 0) return { t: 'eof', partial: this.take(this.buf.slice(0, this.got)) };
      this.got += n;
    }
    return { t: 'frame', frame: this.take(this.buf) };
  }

  private take(bytes: Uint8Array): Frame {
    const f = { bytes, fds: this.fds, ctrunc: this.ctrunc };
    this.hdrGot = 0;
    this.fds = [];
    this.ctrunc = false;
    this.buf = undefined;
    this.got = 0;
    return f;
  }
}

interface Pending { bytes: Uint8Array; off: number; fds: number[] }

/**
 * Ordered outgoing queue for one socket. Owns the fds it is given: each is closed right after the kernel has
 * taken it (the peer holds its own copy) or when the queue is discarded.
 */
export class Outbox {
  private q: Pending[] = [];
  private armed = false;
  constructor(private readonly native: Native, readonly fd: number, private readonly owned: boolean,
    private readonly wantWritable: (on: boolean) => void) {}

  get queued(): number { return this.q.length; }

  push(bytes: Uint8Array, fds: number[] = []): void {
    this.q.push({ bytes, off: 0, fds });
    if (this.q.length === 1) this.flush();
  }

  /** Send as much as the socket takes; called on push and on EPOLLOUT. Throws NativeError if the peer is gone. */
  flush(): void {
    while (this.q.length) {
      const p = this.q[0];
      const len = p.bytes.byteLength - p.off;
      const n = p.fds.length
        ? this.native.sendMsg(this.fd, p.bytes, p.off, len, p.fds)
        : this.native.write(this.fd, p.bytes, p.off, len, this.owned);
      if (n < 0) { this.arm(true); return; }
      if (p.fds.length) { for (const f of p.fds) this.native.close(f); p.fds = []; }
      p.off += n;
      if (p.off < p.bytes.byteLength) { this.arm(true); return; } // partial: the rest goes without fds
      this.q.shift();
    }
    this.arm(false);
  }

  /** Ask for EPOLLOUT only on a change of state: an epoll_ctl per message would double the relay's cost. */
  private arm(on: boolean): void {
    if (on === this.armed) return;
    this.armed = on;
    this.wantWritable(on);
  }

  discard(): void {
    for (const p of this.q) for (const f of p.fds) this.native.close(f);
    this.q = [];
  }
}
