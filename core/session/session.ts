// Session model: decodes relayed messages, pairs replies with requests and derives the negotiated state.
import { decodeMessage, problem, type DecodedMessage, type Problem } from '../protocol/codec';
import { FEATURE_BIT, PROTOCOL_BIT, hasBit, type DeviceType } from '../protocol/features';
import { type Channel, type Side, type Category } from '../protocol/table';
import type { DecodeContext, MemRegion } from '../protocol/payloads';
import type { FdInfo } from '../sys/native';
import { Iotlb } from '../memory/iotlb';

/** A decoded message as the rest of the product sees it (u64 fields are bigint). */
export interface SessionMessage extends DecodedMessage {
  session: number;
  seq: number;
  /** Microseconds since the Unix epoch. */
  time: number;
  bytes: Uint8Array;
  fdInfo: FdInfo[];
  category?: Category;
  /** For a reply: the seq of its request; for a request: the seq of its reply once seen. */
  replyTo?: number;
  replySeq?: number;
  /** Whether this request expects a reply (table rule, NEED_REPLY with REPLY_ACK, LOG_SHMFD). */
  expectsReply?: boolean;
  substituted?: string[];
}

export interface Region extends MemRegion {
  /** Host-thread dup of the region's fd (undefined when the session did not keep one, e.g. replay). */
  fd?: number;
  fdInfo?: FdInfo;
  addedBy: string;
  seq: number;
}

export interface Vring {
  index: number;
  num?: number;
  addr?: { flags: number; desc: bigint; used: bigint; avail: bigint; log: bigint };
  /** Last SET_VRING_BASE value (split: next avail idx; packed: idx and wrap counters). */
  base?: { num: number; availIdx?: number; availWrap?: boolean; usedIdx?: number; usedWrap?: boolean };
  /** GET_VRING_BASE reply: where the device stopped. */
  stoppedAt?: number;
  stopped: boolean;
  enabled?: boolean;
  kick?: 'fd' | 'no-fd';
  call?: 'fd' | 'no-fd';
  err?: 'fd' | 'no-fd';
}

export interface SessionState {
  id: number;
  device: DeviceType;
  features: { offered?: bigint; acked?: bigint };
  protocolFeatures: { offered?: bigint; acked?: bigint };
  owner: boolean;
  queueNum?: number;
  maxMemSlots?: number;
  memory: Region[];
  vrings: Map<number, Vring>;
  status?: number;
  config?: { offset: number; data: Uint8Array };
  backendChannel: 'none' | 'open' | 'closed';
  log?: { mmapSize: bigint; mmapOffset: bigint };
  /** IOVA map from the front-end's IOTLB_MSG updates and invalidations (VIRTIO_F_ACCESS_PLATFORM). */
  iotlb?: Iotlb;
}

export type StateChange =
  | { what: 'features'; offered?: bigint; acked?: bigint }
  | { what: 'protocol-features'; offered?: bigint; acked?: bigint }
  | { what: 'memory'; regions: number }
  | { what: 'vring'; index: number }
  | { what: 'status'; status: number }
  | { what: 'backend-channel'; state: 'open' | 'closed' }
  | { what: 'device'; device: DeviceType }
  | { what: 'iotlb'; op: 'UPDATE' | 'INVALIDATE'; iova: bigint; size: bigint; uaddr?: bigint; entries: number };

/** Hooks for resources the session owns (memory fds kept by the relay). */
export interface SessionResources {
  closeFd(fd: number): void;
}

interface PendingRequest { seq: number; msg: SessionMessage }

export class Session {
  readonly state: SessionState;
  readonly messages: SessionMessage[] = [];
  private readonly unreplied = new Map<string, PendingRequest[]>();
  private deviceGiven: boolean;

  constructor(id: number, private readonly res: SessionResources, device: DeviceType = 'unknown', private readonly keep = 10000) {
    this.deviceGiven = device !== 'unknown';
    this.state = {
      id, device, features: {}, protocolFeatures: {}, owner: false, memory: [], vrings: new Map(), backendChannel: 'none',
    };
  }

  get ctx(): DecodeContext {
    return {
      packed: hasBit(this.state.features.acked, FEATURE_BIT.RING_PACKED),
      xenMmap: hasBit(this.state.protocolFeatures.acked, PROTOCOL_BIT.XEN_MMAP),
    };
  }

  /** Decode without changing state (breakpoint evaluation on a held message). */
  peek(channel: Channel, from: Side, bytes: Uint8Array, fdCount: number): DecodedMessage {
    return decodeMessage({ channel, from, header: bytes.subarray(0, 12), payload: bytes.subarray(12), fdCount }, this.ctx);
  }

  /** Feed one relayed message; returns it decoded and the state changes it caused. Never throws. */
  ingest(r: {
    seq: number; time: number; channel: Channel; from: Side; bytes: Uint8Array; fds: FdInfo[]; kept?: number[];
    substituted?: string[]; relayProblems?: string[];
  }): { msg: SessionMessage; changes: StateChange[] } {
    const d = this.peek(r.channel, r.from, r.bytes, r.fds.length);
    const msg: SessionMessage = {
      ...d, session: this.state.id, seq: r.seq, time: r.time, bytes: r.bytes, fdInfo: r.fds, category: d.spec?.category,
      substituted: r.substituted,
    };
    for (const p of r.relayProblems ?? []) msg.problems.push(problem(p.startsWith('MSG_CTRUNC') ? 'ctrunc' : 'truncated-payload', p));
    const changes: StateChange[] = [];
    let kept = r.kept;
    try {
      this.pair(msg);
      this.gateCheck(msg);
      kept = this.apply(msg, kept, changes);
    } catch (e) {
      msg.problems.push(problem('decoder-fault', `state tracking fault: ${(e as Error).message}`));
    }
    for (const fd of kept ?? []) this.res.closeFd(fd); // kept fds nobody took (malformed message)
    this.messages.push(msg);
    if (this.messages.length > this.keep) this.messages.splice(0, this.messages.length - this.keep);
    return { msg, changes };
  }

  /** Requests still waiting for a reply they were promised. */
  missingReplies(): SessionMessage[] {
    return [...this.unreplied.values()].flat().filter((p) => p.msg.expectsReply).map((p) => p.msg);
  }

  /** Release what the session holds (memory fds). */
  close(): void {
    for (const r of this.state.memory) if (r.fd !== undefined) this.res.closeFd(r.fd);
    this.state.memory = [];
  }

  private pair(m: SessionMessage): void {
    // A message from the wrong side is neither a request of this channel nor a reply to one.
    if (!m.spec || m.problems.some((x) => x.code === 'wrong-direction')) return;
    const key = `${m.channel}:${m.code}`;
    if (!m.reply) {
      m.expectsReply = this.expectsReply(m);
      const q = this.unreplied.get(key) ?? [];
      q.push({ seq: m.seq, msg: m });
      if (q.length > 64) q.shift();
      this.unreplied.set(key, q);
      return;
    }
    // The oldest request that asked for a reply; an older one that did not ask cannot claim it.
    const q = this.unreplied.get(key) ?? [];
    const asked = q.findIndex((p) => p.msg.expectsReply);
    const req = q.length ? q.splice(asked < 0 ? 0 : asked, 1)[0] : undefined;
    if (!req) {
      m.problems.push(problem('unexpected-reply', `reply to ${m.name} without a pending request`));
      return;
    }
    m.replyTo = req.seq;
    req.msg.replySeq = m.seq;
    if (!req.msg.expectsReply) {
      m.problems.push(problem('unexpected-reply', `${m.name} reply although the request did not ask for one`, 'warning'));
    }
  }

  private expectsReply(m: SessionMessage): boolean {
    const spec = m.spec!;
    if (spec.replyRule === 'always') return true;
    const pf = this.state.protocolFeatures.acked;
    if (m.needReply && hasBit(pf, PROTOCOL_BIT.REPLY_ACK)) return true;
    if (spec.name === 'SET_LOG_BASE') return hasBit(pf, PROTOCOL_BIT.LOG_SHMFD);
    return false;
  }

  /** A request whose gating feature was not negotiated is suspicious (warning, not error). */
  private gateCheck(m: SessionMessage): void {
    const g = m.spec?.gate;
    if (!g || m.reply) return;
    if (g.protocol && this.state.protocolFeatures.acked !== undefined && !hasBit(this.state.protocolFeatures.acked, PROTOCOL_BIT[g.protocol])) {
      m.problems.push(problem('not-negotiated', `${m.name} needs protocol feature ${g.protocol}, which was not negotiated`, 'warning'));
    }
    if (g.feature === 'PROTOCOL_FEATURES' && this.state.features.offered !== undefined && !hasBit(this.state.features.offered, FEATURE_BIT.PROTOCOL_FEATURES)) {
      m.problems.push(problem('not-negotiated', `${m.name} needs VHOST_USER_F_PROTOCOL_FEATURES, which the back-end did not offer`, 'warning'));
    }
  }

  private vring(i: number): Vring {
    let v = this.state.vrings.get(i);
    if (!v) { v = { index: i, stopped: false }; this.state.vrings.set(i, v); }
    return v;
  }

  /** Apply a message to the state. Returns the kept fds it did not take ownership of. */
  private apply(m: SessionMessage, kept: number[] | undefined, changes: StateChange[]): number[] | undefined {
    const p = m.payload as Record<string, any> | undefined;
    const s = this.state;
    if (!m.spec || !p || m.problems.some((x) => x.code === 'truncated-payload' || x.code === 'decoder-fault' || x.code === 'wrong-direction')) return kept;
    if (m.channel === 'backend') return kept;
    const idx = typeof p.index === 'number' ? p.index : undefined;
    if (m.reply) {
      switch (m.name) {
        case 'GET_FEATURES': s.features.offered = p.features; changes.push({ what: 'features', offered: p.features }); this.inferDevice(changes); break;
        case 'GET_PROTOCOL_FEATURES': s.protocolFeatures.offered = p.features; changes.push({ what: 'protocol-features', offered: p.features }); this.inferDevice(changes); break;
        case 'GET_QUEUE_NUM': s.queueNum = Number(p.queueNum); break;
        case 'GET_MAX_MEM_SLOTS': s.maxMemSlots = Number(p.slots); break;
        case 'GET_STATUS': s.status = Number(p.status); changes.push({ what: 'status', status: s.status }); break;
        case 'GET_VRING_BASE': if (idx !== undefined) { const v = this.vring(idx); v.stoppedAt = p.num; changes.push({ what: 'vring', index: idx }); } break;
        case 'GET_CONFIG': if (p.data) { s.config = { offset: p.offset, data: p.data }; this.inferDevice(changes); } break;
        case 'SET_BACKEND_REQ_FD': break;
      }
      return kept;
    }
    switch (m.name) {
      case 'SET_OWNER': s.owner = true; break;
      case 'RESET_OWNER': s.owner = false; break;
      case 'SET_FEATURES': s.features.acked = p.features; changes.push({ what: 'features', acked: p.features }); break;
      case 'SET_PROTOCOL_FEATURES': s.protocolFeatures.acked = p.features; changes.push({ what: 'protocol-features', acked: p.features }); break;
      case 'SET_MEM_TABLE': {
        for (const r of s.memory) if (r.fd !== undefined) this.res.closeFd(r.fd);
        s.memory = (p.regions as MemRegion[]).map((reg, i) => ({
          ...reg, fd: kept?.[i], fdInfo: m.fdInfo[i], addedBy: m.name, seq: m.seq,
        }));
        const used = Math.min(s.memory.length, kept?.length ?? 0);
        changes.push({ what: 'memory', regions: s.memory.length });
        return kept?.slice(used);
      }
      case 'ADD_MEM_REG': {
        const { padding: _pad, ...reg } = p as Record<string, any>;
        s.memory.push({ ...(reg as MemRegion), fd: kept?.[0], fdInfo: m.fdInfo[0], addedBy: m.name, seq: m.seq });
        changes.push({ what: 'memory', regions: s.memory.length });
        return kept?.slice(1);
      }
      case 'REM_MEM_REG': {
        const i = s.memory.findIndex((r) => r.guestPhysAddr === p.guestPhysAddr && r.userspaceAddr === p.userspaceAddr && r.memorySize === p.memorySize);
        if (i < 0) m.problems.push(problem('bad-field', `REM_MEM_REG names no known region (gpa 0x${p.guestPhysAddr.toString(16)})`));
        else {
          const [r] = s.memory.splice(i, 1);
          if (r.fd !== undefined) this.res.closeFd(r.fd);
          changes.push({ what: 'memory', regions: s.memory.length });
        }
        break;
      }
      case 'SET_LOG_BASE': s.log = { mmapSize: p.mmapSize, mmapOffset: p.mmapOffset }; break;
      case 'SET_VRING_NUM': this.vring(idx!).num = p.num; changes.push({ what: 'vring', index: idx! }); break;
      case 'SET_VRING_ADDR': {
        const v = this.vring(idx!);
        v.addr = { flags: p.flags, desc: p.desc, used: p.used, avail: p.avail, log: p.log };
        changes.push({ what: 'vring', index: idx! });
        break;
      }
      case 'SET_VRING_BASE': {
        const v = this.vring(idx!);
        v.base = { num: p.num, availIdx: p.availIdx, availWrap: p.availWrap, usedIdx: p.usedIdx, usedWrap: p.usedWrap };
        v.stopped = false;
        changes.push({ what: 'vring', index: idx! });
        break;
      }
      case 'GET_VRING_BASE': this.vring(idx!).stopped = true; changes.push({ what: 'vring', index: idx! }); break;
      case 'SET_VRING_KICK': case 'SET_VRING_CALL': case 'SET_VRING_ERR': {
        const v = this.vring(idx!);
        const k = m.name === 'SET_VRING_KICK' ? 'kick' : m.name === 'SET_VRING_CALL' ? 'call' : 'err';
        v[k] = p.noFd ? 'no-fd' : 'fd';
        if (k === 'kick') v.stopped = false;
        changes.push({ what: 'vring', index: idx! });
        break;
      }
      case 'SET_VRING_ENABLE': this.vring(idx!).enabled = p.num !== 0; changes.push({ what: 'vring', index: idx! }); break;
      case 'SET_STATUS': s.status = Number(p.status); changes.push({ what: 'status', status: s.status }); break;
      case 'SET_CONFIG': s.config = { offset: p.offset, data: p.data }; break;
      case 'SET_BACKEND_REQ_FD': if (m.fds === 1) { s.backendChannel = 'open'; changes.push({ what: 'backend-channel', state: 'open' }); } break;
      case 'RESET_DEVICE':
        s.status = 0;
        changes.push({ what: 'status', status: 0 });
        for (const v of s.vrings.values()) { v.enabled = false; v.stopped = true; changes.push({ what: 'vring', index: v.index }); }
        break;
      case 'SEND_RARP': case 'NET_SET_MTU': this.setDevice('net', changes); break;
      case 'IOTLB_MSG': this.applyIotlb(m, p, changes); break;
    }
    return kept;
  }

  markBackendChannelClosed(): StateChange {
    this.state.backendChannel = 'closed';
    return { what: 'backend-channel', state: 'closed' };
  }

  private setDevice(d: DeviceType, changes: StateChange[]): void {
    if (this.deviceGiven || this.state.device === d) return;
    this.state.device = d;
    changes.push({ what: 'device', device: d });
  }

  /** The front-end maps (UPDATE) or unmaps (INVALIDATE) IOVAs; MISS and ACCESS_FAIL come from the back-end. */
  private applyIotlb(m: SessionMessage, p: Record<string, any>, changes: StateChange[]): void {
    const op = p.type === 2 ? 'UPDATE' : p.type === 3 ? 'INVALIDATE' : undefined;
    if (!op) {
      if (p.type === 1 || p.type === 4) m.problems.push(problem('bad-field', `IOTLB ${p.type === 1 ? 'MISS' : 'ACCESS_FAIL'} comes from the back-end, on its channel`, 'warning'));
      return;
    }
    const bad = Iotlb.rangeProblem(p.iova, p.size) ?? (op === 'UPDATE' && p.uaddr + p.size > 1n << 64n ? 'uaddr + size overflows 64 bits' : undefined);
    if (bad) { m.problems.push(problem('bad-field', `IOTLB ${op}: ${bad}; the map is unchanged`)); return; }
    const t = (this.state.iotlb ??= new Iotlb());
    if (op === 'UPDATE') {
      const dropped = t.update({ iova: p.iova, size: p.size, uaddr: p.uaddr, perm: p.perm });
      if (dropped) m.problems.push(problem('bad-field', `IOTLB holds ${t.entries.length} entries at most: the ${dropped} oldest were dropped`, 'warning'));
    } else t.invalidate(p.iova, p.size);
    changes.push({ what: 'iotlb', op, iova: p.iova, size: p.size, ...(op === 'UPDATE' ? { uaddr: p.uaddr } : {}), entries: t.entries.length });
  }

  /** The device type recognised from what the rings carry, when neither given nor inferred. */
  recognise(d: DeviceType): void {
    if (!this.deviceGiven && this.state.device === 'unknown') this.state.device = d;
  }

  /** Guess the device type from what the back-end offers (the user can say it instead). */
  private inferDevice(changes: StateChange[]): void {
    const f = this.state.features.offered;
    const pf = this.state.protocolFeatures.offered;
    const netBits = hasBit(f, 15) && hasBit(f, 17); // MRG_RXBUF + CTRL_VQ
    const blkBits = hasBit(f, 2) && hasBit(f, 6);   // SEG_MAX + BLK_SIZE
    if (hasBit(pf, PROTOCOL_BIT.RARP) || hasBit(pf, PROTOCOL_BIT.MTU) || (netBits && !blkBits)) this.setDevice('net', changes);
    else if ((blkBits && !netBits) || (this.state.config && this.state.config.data.byteLength >= 40)) this.setDevice('blk', changes);
  }
}

export type { Problem };
