// virtio-net device model (virtio 1.2 5.1): TX to a TAP device or back to the guest (loopback + ARP/ICMP responder), MRG_RXBUF RX.
import * as fs from 'node:fs';
import { PROTOCOL_BIT } from '../protocol/features';
import { EPOLLIN, type Native } from '../sys/native';
import type { EventPump } from '../node/pump';
import { VIRTIO_F_VERSION_1, VIRTIO_F_RING_PACKED, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, bit, has, type Device, type DeviceContext } from './device';
import { fence, readChain, writeChain, type Chain, type VirtQueue } from './virtqueue';
import { Responder, parseIpv4, parseMac, rarpFrame, macText } from './packets';

export const NET_F = { CSUM: 0, MTU: 3, MAC: 5, MRG_RXBUF: 15, STATUS: 16, CTRL_VQ: 17, GUEST_ANNOUNCE: 21, MQ: 22 } as const;
/** Largest frame accepted from the guest or the TAP device (no offloads are offered: 1514 + VLAN slack; jumbo allowed). */
export const MAX_FRAME = 65535;
/** Frames waiting for RX buffers, per queue pair; beyond this the oldest are dropped. */
export const RX_BACKLOG = 512;
const TAP_BATCH = 64;
/** Longest the TX loop runs before it lets the pump serve other fds (control messages, RX kicks). */
const TX_SLICE_US = 2000;

export type NetMode = 'tap' | 'loopback';

export interface NetOptions {
  mode: NetMode;
  /** TAP interface name (tap mode); created if absent. */
  tap?: string;
  /** Loopback responder's addresses (default 10.0.0.1, 52:54:00:00:00:01). */
  ip?: string;
  mac?: string;
  queuePairs?: number;
  /** Busy-poll the TX ring this long after it runs dry (kicks stay disabled meanwhile); 0 = purely kick-driven. */
  pollUs?: number;
}

export interface NetCounters {
  txFrames: number; txBytes: number; rxFrames: number; rxBytes: number; rxDropped: number; txDropped: number;
  bad: number; rarp: number; arpReplies: number; echoReplies: number; echoed: number; tapReads: number;
}

export class NetDevice implements Device {
  readonly kind = 'net';
  readonly features: bigint;
  readonly protocolFeatures: bigint;
  readonly vrings: number;
  readonly queueNum: number;
  readonly pairs: number;
  readonly responder?: Responder;
  readonly counters: NetCounters = { txFrames: 0, txBytes: 0, rxFrames: 0, rxBytes: 0, rxDropped: 0, txDropped: 0, bad: 0, rarp: 0, arpReplies: 0, echoReplies: 0, echoed: 0, tapReads: 0 };
  tapFd?: number;
  tapName?: string;
  private ctx?: DeviceContext;
  private hdrLen = 12;
  private mrg = false;
  private readonly pending: Buffer[][];
  private tapPaused = false;
  private tapBuf = Buffer.alloc(0);
  private readonly hold: Chain[] = [];
  private readonly txA: number[] = [];
  private readonly txL: number[] = [];
  private readonly txPlan: number[] = [];
  private readonly rxA: number[] = [];
  private readonly rxL: number[] = [];
  private rxOff = 0;

  constructor(readonly opts: NetOptions, private readonly native: Native, private readonly pump: EventPump) {
    const pairs = opts.queuePairs ?? 1;
    if (!(pairs >= 1 && pairs <= 16)) throw new Error(`queuePairs must be 1..16, got ${pairs}`);
    if (opts.mode === 'tap' && pairs !== 1) throw new Error('tap mode serves one queue pair');
    this.pairs = pairs;
    this.vrings = 2 * pairs;
    this.queueNum = pairs;
    this.pending = Array.from({ length: pairs }, () => []);
    let f = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_RING_PACKED) | bit(VIRTIO_RING_F_INDIRECT_DESC) | bit(VIRTIO_RING_F_EVENT_IDX) | bit(NET_F.MRG_RXBUF);
    if (pairs > 1) f |= bit(NET_F.MQ) | bit(NET_F.CTRL_VQ);
    this.features = f;
    this.protocolFeatures = bit(PROTOCOL_BIT.MQ) | bit(PROTOCOL_BIT.REPLY_ACK) | bit(PROTOCOL_BIT.RARP) | bit(PROTOCOL_BIT.CONFIGURE_MEM_SLOTS);
    if (opts.mode === 'loopback') {
      this.responder = new Responder(parseMac(opts.mac ?? '52:54:00:00:00:01'), parseIpv4(opts.ip ?? '10.0.0.1'));
    } else {
      if (!opts.tap) throw new Error('tap mode needs a TAP interface name');
      if (!native.openTap) throw new Error('this platform layer cannot open TAP devices');
      const t = native.openTap(opts.tap);
      this.tapFd = t.fd;
      this.tapName = t.name;
      this.tapBuf = Buffer.alloc(MAX_FRAME + 12);
      pump.watch(t.fd, EPOLLIN, () => this.onTap());
    }
  }

  attach(ctx: DeviceContext): void {
    this.ctx = ctx;
    this.hdrLen = 12;
    this.mrg = false;
  }

  detach(): void {
    this.ctx = undefined;
    for (const p of this.pending) { this.counters.rxDropped += p.length; p.length = 0; }
    this.resumeTap();
  }

  close(): void {
    if (this.tapFd !== undefined) {
      this.pump.unwatch(this.tapFd);
      this.native.close(this.tapFd);
      this.tapFd = undefined;
    }
  }

  setFeatures(f: bigint): void {
    this.mrg = has(f, NET_F.MRG_RXBUF);
    // virtio_net_hdr is 12 bytes with VERSION_1 or MRG_RXBUF (num_buffers), else 10 (legacy).
    this.hdrLen = has(f, VIRTIO_F_VERSION_1) || this.mrg ? 12 : 10;
  }

  describe(): Record<string, number | string> {
    return {
      mode: this.opts.mode, ...(this.tapName ? { tap: this.tapName } : {}),
      ...(this.responder ? { ip: [...this.responder.ip].join('.'), mac: macText(this.responder.mac) } : {}),
      ...this.counters,
    };
  }

  kick(q: VirtQueue): void {
    const pair = q.index >> 1;
    if ((q.index & 1) === 0) { this.fillRx(pair); return; }
    this.tx(q, pair);
  }

  stopped(): void { /* pending frames wait for the ring to start again */ }

  rarp(mac: Uint8Array): void {
    this.counters.rarp++;
    // Like DPDK: the announcement enters the switch as if the guest had sent it (TAP: the network; loopback: the guest).
    const f = Buffer.alloc(this.hdrLen + 60);
    f.set(rarpFrame(mac), this.hdrLen);
    this.out(0, f);
    this.fillRx(0);
  }

  // ---- TX: guest -> TAP / loopback -----------------------------------------------------------------------

  private tx(q: VirtQueue, pair: number): void {
    const ctx = this.ctx!;
    const hdr = this.hdrLen;
    const r = q.drain((chains) => {
      // One gather for the whole batch into the first half of the staging area (one process_vm_readv when the
      // fast path is on); chains that do not fit, or without staging, are read one by one.
      const staging = ctx.mem.staging;
      const room = staging ? staging.length >> 1 : 0;
      const A = this.txA, L = this.txL, P = this.txPlan;
      A.length = 0; L.length = 0; P.length = 0;
      let off = 0;
      for (const c of chains) {
        if (c.error) { this.bad(q, c, c.error); q.use(c, 0); continue; }
        const total = c.readable;
        if (total < hdr + 14 || total > hdr + MAX_FRAME) {
          this.bad(q, c, `TX chain of ${total} readable bytes (header ${hdr} + frame of 14..${MAX_FRAME})`);
          q.use(c, 0);
          continue;
        }
        if (staging && off + total <= room) {
          const why = this.readableSegs(c, A, L);
          if (why) { this.bad(q, c, why); q.use(c, 0); continue; }
          P.push(c.head, off, total, c.count);
          off += total;
          continue;
        }
        const buf = Buffer.allocUnsafe(total);
        try {
          readChain(ctx.mem, c, 0, buf, 0, total);
        } catch (e) {
          this.bad(q, c, (e as Error).message);
          q.use(c, 0);
          continue;
        }
        q.use(c, 0);
        this.sent(pair, buf, total);
      }
      if (P.length) {
        ctx.mem.readSegs(A, L, A.length, staging!, 0);
        // Frames stay in the staging area (views) while this batch goes to RX; the ones left waiting are copied out.
        for (let i = 0; i < P.length; i += 4) {
          q.push(P[i], 0, P[i + 3]);
          this.sent(pair, staging!.subarray(P[i + 1], P[i + 1] + P[i + 2]), P[i + 2]);
        }
      }
      this.fillRx(pair);
      if (P.length) this.ownPending(pair, staging!);
      return true;
    }, 64, this.opts.pollUs ?? 0, TX_SLICE_US);
    if (r.yielded) ctx.rerun(q);
  }

  /** Copy pending frames that still point into the staging area (the next gather overwrites it). */
  private ownPending(pair: number, staging: Buffer): void {
    const p = this.pending[pair];
    for (let i = 0; i < p.length; i++) if (p[i].buffer === staging.buffer) p[i] = Buffer.from(p[i]);
  }

  private sent(pair: number, buf: Buffer, total: number): void {
    this.counters.txFrames++;
    this.counters.txBytes += total - this.hdrLen;
    buf.fill(0, 0, this.hdrLen);
    this.out(pair, buf);
  }

  /** Append a chain's readable buffers to a scatter list after checking them; returns why not, if not. */
  private readableSegs(c: Chain, A: number[], L: number[]): string | undefined {
    const n0 = A.length;
    for (let i = 0; i < c.n && !c.write[i]; i++) {
      const a = c.addr[i], l = c.len[i];
      if (l === 0) continue;
      const why = Number.isNaN(a) ? 'buffer address beyond guest memory' : this.ctx!.mem.check(a, l);
      if (why) { A.length = n0; L.length = n0; return `buffer ${i} (0x${a.toString(16)}+${l}): ${why}`; }
      A.push(a); L.push(l);
    }
    return undefined;
  }

  /** Queue a frame's bytes for the chain's writable buffers (batched scatter), or write them now. */
  private stageRx(c: Chain, buf: Buffer): string | undefined {
    const mem = this.ctx!.mem;
    const staging = mem.staging;
    const base = staging ? staging.length >> 1 : 0;
    if (!staging || this.rxOff + buf.length > staging.length - base) {
      writeChain(mem, c, 0, buf, 0, buf.length);
      return undefined;
    }
    const n0 = this.rxA.length;
    let left = buf.length;
    for (let i = 0; i < c.n && left > 0; i++) {
      if (!c.write[i] || c.len[i] === 0) continue;
      const a = c.addr[i], l = Math.min(c.len[i], left);
      const why = Number.isNaN(a) ? 'buffer address beyond guest memory' : mem.check(a, l);
      if (why) { this.rxA.length = n0; this.rxL.length = n0; return `RX buffer ${i} (0x${a.toString(16)}+${l}): ${why}`; }
      this.rxA.push(a); this.rxL.push(l);
      left -= l;
    }
    buf.copy(staging, base + this.rxOff);
    this.rxOff += buf.length;
    return undefined;
  }

  /** Write every staged RX frame (one process_vm_writev on the fast path). */
  private flushRxStage(): void {
    if (!this.rxA.length) return;
    const mem = this.ctx!.mem;
    const staging = mem.staging!;
    try { mem.writeSegs(this.rxA, this.rxL, this.rxA.length, staging, staging.length >> 1); } finally {
      this.rxA.length = 0; this.rxL.length = 0; this.rxOff = 0;
    }
  }

  /** A frame leaves the guest (header room in front, zeroed). */
  private out(pair: number, buf: Buffer): void {
    const hdr = this.hdrLen;
    if (this.tapFd !== undefined) {
      try { fs.writeSync(this.tapFd, buf, hdr, buf.length - hdr); } catch { this.counters.txDropped++; }
      return;
    }
    const ans = this.responder!.answer(buf, hdr, buf.length - hdr);
    if (ans) {
      const r = Buffer.alloc(hdr + ans.byteLength);
      r.set(ans, hdr);
      this.counters.arpReplies = this.responder!.arpReplies;
      this.counters.echoReplies = this.responder!.echoReplies;
      this.enqueue(pair, r);
      return;
    }
    this.counters.echoed++;
    this.enqueue(pair, buf);
  }

  private enqueue(pair: number, buf: Buffer): void {
    const p = this.pending[pair];
    p.push(buf);
    if (p.length > RX_BACKLOG) { p.shift(); this.counters.rxDropped++; }
  }

  // ---- RX: frames -> guest ---------------------------------------------------------------------------------

  /** Put pending frames into the RX ring of `pair` while it has buffers (MRG_RXBUF: a frame may take several). */
  private fillRx(pair: number): void {
    const pend = this.pending[pair];
    const ctx = this.ctx;
    const q = ctx?.queues[2 * pair];
    if (!q || !q.runnable) return;
    q.prepare();
    // RX kicks matter only while frames wait for buffers: otherwise the driver need not kick (NO_NOTIFY).
    if (!pend.length) { q.notifyOn(false); return; }
    const hdr = this.hdrLen;
    let batch: Chain[] = [];
    let bi = 0;
    let sent = 0;
    const next = (): Chain | undefined => {
      if (bi < batch.length) return batch[bi++];
      const n = q.availCount();
      if (!n) return undefined;
      batch = q.pop(Math.min(n, Math.max(pend.length - sent, 1), 64));
      bi = 0;
      return batch[bi++];
    };
    try {
      frames: while (sent < pend.length) {
        const buf = pend[sent];
        let c = next();
        if (!c) {
          q.notifyOn(true);
          fence();
          if (q.availCount() === 0) break;
          continue;
        }
        if (c.error || c.writable < hdr) {
          this.bad(q, c, c.error ?? `RX chain with ${c.writable} writable bytes, less than the ${hdr}-byte header`);
          q.use(c, 0);
          continue;
        }
        if (c.writable >= buf.length || !this.mrg) {
          if (c.writable < buf.length) {
            this.bad(q, c, `RX buffer of ${c.writable} bytes for a ${buf.length - hdr}-byte frame without MRG_RXBUF: frame dropped`);
            q.use(c, 0);
            sent++;
            this.counters.rxDropped++;
            continue;
          }
          if (hdr === 12) buf.writeUInt16LE(1, 10);
          const why = this.stageRx(c, buf);
          if (why) { this.bad(q, c, why); q.use(c, 0); continue; }
          q.use(c, buf.length);
        } else {
          // Several buffers for one frame: copy the chains (the pool is reused by the next pop).
          const held = this.hold;
          held.length = 0;
          let room = 0, badInFrame = false;
          while (c && room < buf.length) {
            if (c.error || c.writable === 0) { this.bad(q, c, c.error ?? 'RX chain without writable bytes'); q.use(c, 0); badInFrame = true; }
            else { held.push(c.clone()); room += c.writable; }
            if (room >= buf.length) break;
            c = next();
          }
          if (room < buf.length) {
            if (badInFrame) {
              // Chains already answered sit between ours: return the held ones empty and drop the frame.
              for (const h of held) q.use(h, 0);
              sent++;
              this.counters.rxDropped++;
              continue;
            }
            // Not enough buffers yet: give the chains back and wait for the driver's next RX kick.
            q.unpop(held.length + (batch.length - bi));
            batch = []; bi = 0;
            q.notifyOn(true);
            break frames;
          }
          buf.writeUInt16LE(held.length, 10);
          let off = 0;
          for (const h of held) {
            const n = Math.min(h.writable, buf.length - off);
            writeChain(ctx!.mem, h, 0, buf, off, n);
            q.use(h, n);
            off += n;
          }
        }
        sent++;
        this.counters.rxFrames++;
        this.counters.rxBytes += buf.length - hdr;
      }
    } catch (e) {
      // A buffer outside guest memory: the frame is lost, the ring goes on.
      this.ctx?.report(`vring ${q.index} RX: ${(e as Error).message}`);
      this.counters.bad++;
      sent = Math.min(pend.length, sent + 1);
    } finally {
      if (bi < batch.length) q.unpop(batch.length - bi);
      try { this.flushRxStage(); } catch (e) { this.ctx?.report(`vring ${q.index} RX: ${(e as Error).message}`); }
      q.flush();
      if (sent) pend.splice(0, sent);
    }
    if (!pend.length) q.notifyOn(false);
    if (pend.length < RX_BACKLOG / 4) this.resumeTap();
  }

  // ---- TAP side --------------------------------------------------------------------------------------------

  private onTap(): void {
    const fd = this.tapFd;
    if (fd === undefined) return;
    const hdr = this.hdrLen;
    for (let i = 0; i < TAP_BATCH; i++) {
      let n: number;
      try { n = fs.readSync(fd, this.tapBuf, 0, MAX_FRAME, null); } catch { break; } // EAGAIN: drained
      if (n <= 0) break;
      this.counters.tapReads++;
      if (!this.ctx) { this.counters.rxDropped++; continue; } // no front-end: the frame has nowhere to go
      const f = Buffer.alloc(hdr + n);
      this.tapBuf.copy(f, hdr, 0, n);
      this.enqueue(0, f);
    }
    if (this.ctx) this.fillRx(0);
    if (this.pending[0].length >= RX_BACKLOG / 2 && !this.tapPaused) {
      this.tapPaused = true;
      this.pump.modify(fd, 0);
    }
  }

  private resumeTap(): void {
    if (!this.tapPaused || this.tapFd === undefined) return;
    this.tapPaused = false;
    this.pump.modify(this.tapFd, EPOLLIN);
  }

  private bad(q: VirtQueue, c: Chain, why: string): void {
    this.counters.bad++;
    this.ctx?.report(`vring ${q.index} ${q.index & 1 ? 'TX' : 'RX'} chain ${c.head}: ${why}`);
  }
}
