// vhost-user back-end protocol state for one front-end connection: negotiation, memory, vrings, notifiers, replies.
import * as fs from 'node:fs';
import { decodeMessage, FLAG_NEED_REPLY, FLAG_REPLY, VERSION, MAX_PAYLOAD } from '../protocol/codec';
import { specFor } from '../protocol/table';
import { PROTOCOL_BIT } from '../protocol/features';
import { EPOLLIN, type Native } from '../sys/native';
import type { EventPump } from '../node/pump';
import { DeviceMemory, deviceRegion, type DeviceRegion } from './memory';
import { QueueError, VirtQueue } from './virtqueue';
import { VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_RING_PACKED, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, bit, has, type Device } from './device';

/** Memory slots offered with CONFIGURE_MEM_SLOTS (QEMU asks, then adds regions one by one). */
export const MAX_MEM_SLOTS = 32;

/** Staging area of the one-call copy path (largest gather/scatter a device does at once). */
export const STAGING_BYTES = 4 << 20;

export type VmCopy = 'auto' | 'off' | 'require';

export interface VhostSessionOptions {
  /** Pid of the front-end (SO_PEERCRED), for the process_vm_readv/writev copy path. */
  peerPid?: number;
  /** auto: use the one-call path where /proc/PID/maps proves it safe; off: pread/pwrite only; require: report when it cannot be used. */
  vmCopy?: VmCopy;
}

export interface VhostHooks {
  /** A problem caused by the front-end or the guest (the session goes on). */
  report(message: string): void;
  /** Kick eventfd read: `count` is the eventfd counter (signals coalesced by the kernel). */
  kicked(vring: number, count: number): void;
  /** A kick is about to be processed (the ring is as the driver left it): exact ring capture looks now. */
  beforeRun?(vring: number): void;
  /** New used entries were published, before the driver is signalled: exact ring capture looks now. */
  usedPublished?(vring: number): void;
}

interface Handled { reply?: Uint8Array; ok: boolean }

/**
 * The back-end side of one vhost-user session. Every fd handed to `handle` becomes the session's: it is kept
 * (memory, kick/call/err) or closed at once, and `close()` releases what is kept.
 */
export class VhostSession {
  readonly mem = new DeviceMemory();
  readonly queues: VirtQueue[];
  features?: bigint;
  protocolFeatures?: bigint;
  owner = false;
  status = 0;
  private readonly eight = Buffer.alloc(8);
  private closed = false;

  constructor(private readonly native: Native, private readonly pump: EventPump, readonly device: Device, private readonly hooks: VhostHooks,
    private readonly opts: VhostSessionOptions = {}) {
    this.queues = Array.from({ length: device.vrings }, (_, i) => new VirtQueue(i, this.mem));
    if (hooks.usedPublished) for (const q of this.queues) q.onUsed = () => hooks.usedPublished!(q.index);
    // Default: guest memory only through the region fds this session received (pread/pwrite). The one-call copy
    // through the front-end's own mapping is opt-in: it needs ptrace rights over the front-end.
    const mode = opts.vmCopy ?? 'off';
    if (mode !== 'off' && opts.peerPid !== undefined && native.remoteCopier) {
      try { this.mem.enableRemote(opts.peerPid, native.remoteCopier(opts.peerPid, STAGING_BYTES)); } catch (e) {
        if (mode === 'require') hooks.report(`one-call copy path unavailable: ${(e as Error).message}`);
      }
    } else if (mode === 'require') hooks.report('one-call copy path unavailable: the front-end\'s pid is unknown');
    device.attach({ mem: this.mem, queues: this.queues, pump, report: (m) => hooks.report(m), rerun: (q) => this.rerun(q) });
  }

  get offeredFeatures(): bigint { return this.device.features | bit(VHOST_USER_F_PROTOCOL_FEATURES); }
  private get replyAck(): boolean { return this.protocolFeatures !== undefined && has(this.protocolFeatures, PROTOCOL_BIT.REPLY_ACK); }

  /**
   * Handle one request (header + payload bytes, its fds). Returns the reply message to send, if any.
   * Never throws for bad input: problems are reported and, where the protocol allows, answered with a failure.
   */
  handle(bytes: Uint8Array, fds: number[]): Uint8Array | undefined {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const code = dv.getUint32(0, true), flags = dv.getUint32(4, true);
    const needReply = (flags & FLAG_NEED_REPLY) !== 0;
    const spec = specFor('main', code);
    let r: Handled;
    try {
      r = this.dispatch(code, bytes, fds);
    } catch (e) {
      r = { ok: false };
      this.hooks.report(`${spec?.name ?? `request ${code}`}: ${(e as Error).message}`);
    }
    if (r.reply) return r.reply;
    if (spec?.replyRule === 'always') {
      // A request that must be answered: never leave the front-end waiting, answer with a zero u64 (or an empty config).
      return this.encode(code, spec.name === 'GET_CONFIG' ? this.configReply(0, 0, 0, true) : this.u64(r.ok ? 0n : 1n));
    }
    if (needReply && this.replyAck) return this.encode(code, this.u64(r.ok ? 0n : 1n));
    return undefined;
  }

  private dispatch(code: number, bytes: Uint8Array, fds: number[]): Handled {
    const d = decodeMessage({ channel: 'main', from: 'frontend', header: bytes.subarray(0, 12), payload: bytes.subarray(12), fdCount: fds.length });
    const take = (n: number): number[] => {
      // Keep the first n fds; close any extra (a buggy front-end may send fds with REM_MEM_REG, say).
      for (const f of fds.slice(n)) this.native.close(f);
      return fds.slice(0, n);
    };
    const fatal = d.problems.find((p) => p.severity === 'error' && p.code !== 'unexpected-fds' && p.code !== 'too-many-fds' && p.code !== 'missing-fds');
    if (d.reply) { take(0); throw new Error('a reply flag on a front-end request'); }
    if (!d.spec) { take(0); throw new Error(`unknown request code ${code}`); }
    if (d.size > MAX_PAYLOAD) { take(0); throw new Error(`payload of ${d.size} bytes exceeds ${MAX_PAYLOAD}`); }
    if (fatal || !d.payload) { take(0); throw new Error(fatal?.message ?? 'payload could not be decoded'); }
    const p = d.payload as Record<string, any>;
    const q = (): VirtQueue => {
      const i = p.index as number;
      if (!(i >= 0 && i < this.queues.length)) throw new Error(`vring ${i} does not exist (the device has ${this.queues.length})`);
      return this.queues[i];
    };
    switch (d.name) {
      case 'GET_FEATURES': take(0); return { ok: true, reply: this.encode(code, this.u64(this.offeredFeatures)) };
      case 'SET_FEATURES': {
        take(0);
        const f = p.features as bigint;
        const extra = f & ~this.offeredFeatures;
        if (extra) this.hooks.report(`SET_FEATURES acks bits the back-end did not offer: 0x${extra.toString(16)} (ignored)`);
        this.features = f & this.offeredFeatures;
        for (const vq of this.queues) {
          vq.eventIdx = has(this.features, VIRTIO_RING_F_EVENT_IDX);
          vq.indirectOk = has(this.features, VIRTIO_RING_F_INDIRECT_DESC);
          const packed = has(this.features, VIRTIO_F_RING_PACKED);
          if (packed !== vq.packed) { vq.packed = packed; vq.availWrap = vq.usedWrap = true; vq.lastAvail = vq.nextUsed = 0; }
          // Without protocol features a ring is enabled as soon as it starts (vhost-user.rst "Ring states").
          if (!has(this.features, VHOST_USER_F_PROTOCOL_FEATURES)) vq.enabled = true;
        }
        this.device.setFeatures(this.features);
        return { ok: extra === 0n };
      }
      case 'GET_PROTOCOL_FEATURES': take(0); return { ok: true, reply: this.encode(code, this.u64(this.device.protocolFeatures)) };
      case 'SET_PROTOCOL_FEATURES': {
        take(0);
        const f = p.features as bigint;
        const extra = f & ~this.device.protocolFeatures;
        if (extra) this.hooks.report(`SET_PROTOCOL_FEATURES enables bits the back-end did not offer: 0x${extra.toString(16)} (ignored)`);
        this.protocolFeatures = f & this.device.protocolFeatures;
        return { ok: extra === 0n };
      }
      case 'SET_OWNER': take(0); this.owner = true; return { ok: true };
      case 'RESET_OWNER': case 'RESET_DEVICE': take(0); this.reset(); return { ok: true };
      case 'GET_QUEUE_NUM': take(0); return { ok: true, reply: this.encode(code, this.u64(BigInt(this.device.queueNum))) };
      case 'GET_MAX_MEM_SLOTS': take(0); return { ok: true, reply: this.encode(code, this.u64(BigInt(MAX_MEM_SLOTS))) };
      case 'SET_MEM_TABLE': return { ok: this.setMemTable(p.regions, take(p.regions.length)) };
      case 'ADD_MEM_REG': {
        const [fd] = take(1);
        if (fd === undefined) throw new Error('ADD_MEM_REG without an fd');
        let r: DeviceRegion;
        try {
          if (this.mem.list.length >= MAX_MEM_SLOTS) throw new Error(`all ${MAX_MEM_SLOTS} memory slots are in use`);
          r = deviceRegion(p as any, fd);
          this.mem.add(r);
        } catch (e) { this.native.close(fd); throw e; }
        this.memoryChanged();
        return { ok: true };
      }
      case 'REM_MEM_REG': {
        take(0);
        const n = (b: bigint): number => Number(b);
        const r = this.mem.remove(n(p.guestPhysAddr), n(p.userspaceAddr), n(p.memorySize));
        if (!r) throw new Error(`REM_MEM_REG names no known region (gpa 0x${(p.guestPhysAddr as bigint).toString(16)})`);
        this.native.close(r.fd);
        for (const vq of this.queues) vq.memoryChanged();
        return { ok: true };
      }
      case 'SET_VRING_NUM': take(0); { const vq = q(); this.warnIfStarted(vq); vq.setNum(p.num); } return { ok: true };
      case 'SET_VRING_ADDR': take(0); q().setAddr(p.desc, p.used, p.avail, p.flags); return { ok: true };
      case 'SET_VRING_BASE': take(0); { const vq = q(); if (!vq.packed && p.num > 0xffff) throw new Error(`split ring base ${p.num} above 65535`); vq.setBase(p.num); } return { ok: true };
      case 'GET_VRING_BASE': {
        take(0);
        const vq = q();
        const next = vq.stop();
        this.dropKick(vq);
        this.dropFd(vq, 'callFd');
        this.device.stopped?.(vq);
        return { ok: true, reply: this.encode(code, this.vringState(vq.index, next)) };
      }
      case 'SET_VRING_KICK': case 'SET_VRING_CALL': case 'SET_VRING_ERR': {
        const noFd = p.noFd as boolean;
        const got = take(noFd ? 0 : 1);
        let vq: VirtQueue;
        try { vq = q(); } catch (e) { for (const f of got) this.native.close(f); throw e; }
        if (!noFd && got.length === 0) throw new Error(`${d.name} without an fd and without the no-fd bit`);
        if (d.name === 'SET_VRING_KICK') this.setKick(vq, got[0]);
        else {
          const key = d.name === 'SET_VRING_CALL' ? 'callFd' : 'errFd';
          this.dropFd(vq, key);
          vq[key] = got[0];
        }
        return { ok: true };
      }
      case 'SET_VRING_ENABLE': {
        take(0);
        const vq = q();
        vq.enabled = p.num !== 0;
        if (vq.enabled) this.run(vq); else this.device.stopped?.(vq);
        return { ok: true };
      }
      case 'GET_CONFIG': {
        take(0);
        return { ok: true, reply: this.encode(code, this.configReply(p.offset, p.size, p.flags, false)) };
      }
      case 'SET_CONFIG': take(0); return { ok: true };
      case 'SEND_RARP': {
        take(0);
        const mac = Buffer.alloc(8);
        mac.writeBigUInt64LE(p.mac as bigint);
        this.device.rarp?.(mac.subarray(0, 6));
        return { ok: true };
      }
      case 'NET_SET_MTU': take(0); return { ok: true };
      case 'SET_STATUS': take(0); this.status = Number(p.status) & 0xff; return { ok: true };
      case 'GET_STATUS': take(0); return { ok: true, reply: this.encode(code, this.u64(BigInt(this.status))) };
      case 'SET_LOG_FD': case 'SET_LOG_BASE': case 'SET_BACKEND_REQ_FD': case 'SET_INFLIGHT_FD':
        take(0);
        throw new Error(`${d.name} is not supported by this back-end (its feature was not offered)`);
      default:
        take(0);
        throw new Error(`${d.name} is not supported by this back-end`);
    }
  }

  private setMemTable(regions: { guestPhysAddr: bigint; memorySize: bigint; userspaceAddr: bigint; mmapOffset: bigint }[], fds: number[]): boolean {
    let next: DeviceRegion[];
    try {
      if (fds.length !== regions.length) throw new Error(`SET_MEM_TABLE has ${regions.length} regions and ${fds.length} fds`);
      next = regions.map((r, i) => deviceRegion(r, fds[i]));
      const old = this.mem.clear();
      try { this.mem.set(next); } catch (e) { this.mem.set(old); throw e; }
      for (const r of old) this.native.close(r.fd);
    } catch (e) {
      for (const f of fds) this.native.close(f);
      throw e;
    }
    this.memoryChanged();
    return true;
  }

  /** New memory: rings re-translate their addresses (and faulted ones get another chance). */
  private memoryChanged(): void {
    if (this.opts.vmCopy === 'require' && this.mem.remoteRegions < this.mem.list.length) {
      this.hooks.report(`one-call copy path covers ${this.mem.remoteRegions} of ${this.mem.list.length} memory regions (the others use pread/pwrite)`);
    }
    for (const vq of this.queues) vq.memoryChanged();
    for (const vq of this.queues) if (vq.runnable) this.run(vq);
  }

  private setKick(vq: VirtQueue, fd: number | undefined): void {
    this.dropKick(vq);
    vq.kickFd = fd;
    vq.started = true;
    if (fd !== undefined) this.pump.watch(fd, EPOLLIN, () => this.onKick(vq));
    else this.hooks.report(`vring ${vq.index}: SET_VRING_KICK without fd (polling) is not supported; the ring runs on other events only`);
    this.run(vq);
  }

  private onKick(vq: VirtQueue): void {
    const fd = vq.kickFd;
    if (fd === undefined) return;
    let n: number;
    try { n = fs.readSync(fd, this.eight, 0, 8, null); } catch { return; } // EAGAIN: consumed already
    if (n !== 8) return;
    const count = Number(this.eight.readBigUInt64LE(0));
    vq.stats.kicks += count;
    vq.stats.kickSignals++;
    this.hooks.kicked(vq.index, count);
    this.hooks.beforeRun?.(vq.index);
    this.run(vq);
  }

  /** Let the device process the ring if it may; a ring fault is reported once per configuration. */
  run(vq: VirtQueue): void {
    if (!vq.started || !vq.enabled || this.closed) return;
    if (vq.fault) return;
    try {
      this.device.kick(vq);
    } catch (e) {
      if (e instanceof QueueError && e.notReady) {
        this.hooks.report(`${e.message}: the ring cannot run yet`);
        return;
      }
      const msg = e instanceof QueueError ? e.message : `vring ${vq.index}: ${(e as Error).message}`;
      if (!vq.fault) vq.fault = msg;
      vq.signalError();
      this.hooks.report(`${msg} (ring stopped until it is set up again)`);
    }
  }

  private readonly rerunPending = new Set<number>();
  private rerun(vq: VirtQueue): void {
    if (this.rerunPending.has(vq.index) || this.closed) return;
    this.rerunPending.add(vq.index);
    this.pump.setTimer(0, () => { this.rerunPending.delete(vq.index); this.run(vq); });
  }

  private warnIfStarted(vq: VirtQueue): void {
    if (vq.started) this.hooks.report(`vring ${vq.index}: SET_VRING_NUM while the ring is started`);
  }

  private dropKick(vq: VirtQueue): void {
    if (vq.kickFd !== undefined) {
      this.pump.unwatch(vq.kickFd);
      this.native.close(vq.kickFd);
      vq.kickFd = undefined;
    }
  }

  private dropFd(vq: VirtQueue, key: 'callFd' | 'errFd'): void {
    const fd = vq[key];
    if (fd !== undefined) { this.native.close(fd); vq[key] = undefined; }
  }

  private reset(): void {
    for (const vq of this.queues) {
      vq.stop();
      vq.enabled = false;
      this.dropKick(vq);
      this.dropFd(vq, 'callFd');
      this.dropFd(vq, 'errFd');
      this.device.stopped?.(vq);
    }
    this.status = 0;
  }

  /** Release every fd the session keeps (memory, notifiers). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const vq of this.queues) {
      this.dropKick(vq);
      this.dropFd(vq, 'callFd');
      this.dropFd(vq, 'errFd');
    }
    for (const r of this.mem.clear()) this.native.close(r.fd);
    this.device.detach();
  }

  // ---- reply encoding -----------------------------------------------------------------------------------

  private encode(code: number, payload: Uint8Array): Uint8Array {
    const b = Buffer.alloc(12 + payload.byteLength);
    b.writeUInt32LE(code, 0);
    b.writeUInt32LE(VERSION | FLAG_REPLY, 4);
    b.writeUInt32LE(payload.byteLength, 8);
    b.set(payload, 12);
    return b;
  }

  private u64(v: bigint): Uint8Array { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt.asUintN(64, v)); return b; }
  private vringState(index: number, num: number): Uint8Array { const b = Buffer.alloc(8); b.writeUInt32LE(index, 0); b.writeUInt32LE(num >>> 0, 4); return b; }

  /** GET_CONFIG reply: the requested window of the device config (zero-size reply = failure, per the spec). */
  private configReply(offset: number, size: number, flags: number, fail: boolean): Uint8Array {
    const cfg = this.device.config?.();
    if (fail || !cfg || size > 256 || offset + size > 256) {
      if (!fail) this.hooks.report(cfg ? `GET_CONFIG offset ${offset} size ${size} is outside the 256-byte config space` : 'GET_CONFIG: this device has no config space');
      const b = Buffer.alloc(12);
      b.writeUInt32LE(offset >>> 0, 0);
      b.writeUInt32LE(0, 4);
      b.writeUInt32LE(flags >>> 0, 8);
      return b;
    }
    const b = Buffer.alloc(12 + size);
    b.writeUInt32LE(offset, 0);
    b.writeUInt32LE(size, 4);
    b.writeUInt32LE(flags >>> 0, 8);
    if (offset < cfg.byteLength) b.set(cfg.subarray(offset, Math.min(cfg.byteLength, offset + size)), 12);
    return b;
  }
}
