// Exact ring capture at notification time (relay worker, with --notifiers --rings): new avail entries are walked when
// the driver kicks, before the device is woken; new used entries when the device calls, before the driver is woken.
// Buffers are therefore still valid; their bytes are recorded for the host to decode. Opt-in: it costs the kick path.
import { decodeMessage } from '../protocol/codec';
import { FEATURE_BIT, hasBit } from '../protocol/features';
import { RegionMemory, type RegionSpec } from '../memory/guestMemory';
import { DescTable, DESC_SIZE, WalkContext, type Chain, type RingConfig } from '../virtio/ring';
import { readSplitIndices, walkSplitChain } from '../virtio/split';
import type { Native } from '../sys/native';

/** Bytes read from guest memory at capture time (guest-physical address). */
export interface CapturedBytes { addr: bigint; bytes: Uint8Array }

export interface RingCapture {
  vring: number;
  at: 'kick' | 'call';
  /** Microseconds since the epoch. */
  time: number;
  availIdx?: number;
  usedIdx?: number;
  chains: Chain[];
  bytes: CapturedBytes[];
  /** Why some entries were not captured (index jump, unreadable ring…). */
  note?: string;
}

/** Bytes recorded per buffer: enough for every payload decoder's headers and previews. */
export const CAPTURE_PREVIEW = 512;

interface VringTrack {
  num?: number;
  desc?: bigint; avail?: bigint; used?: bigint;
  base?: number;
  lastAvail?: number;
  lastUsed?: number;
}

// Requests that change what the capture needs to know.
const SET_FEATURES = 2, SET_MEM_TABLE = 5, SET_VRING_NUM = 8, SET_VRING_ADDR = 9, SET_VRING_BASE = 10, GET_VRING_BASE = 11;
const ADD_MEM_REG = 37, REM_MEM_REG = 38;
const INTEREST = new Set([SET_FEATURES, SET_MEM_TABLE, SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE, ADD_MEM_REG, REM_MEM_REG]);

export class NotifyCapture {
  private regions: (RegionSpec & { fd: number })[] = [];
  private readonly mem = new RegionMemory([]);
  private features?: bigint;
  private readonly vrings = new Map<number, VringTrack>();

  constructor(private readonly native: Native) {}

  private vring(i: number): VringTrack {
    let v = this.vrings.get(i);
    if (!v) { v = {}; this.vrings.set(i, v); }
    return v;
  }

  private setRegions(next: (RegionSpec & { fd: number })[]): void {
    const old = this.regions;
    this.regions = next;
    this.mem.update(next); // before closing: a closed fd number must never be read again
    for (const r of old) if (!next.includes(r)) this.native.close(r.fd);
  }

  /** A front-end request about to be relayed, with the fds it carries (dups are kept for memory regions). */
  observe(bytes: Uint8Array, fds: readonly number[]): void {
    const code = bytes[0] | (bytes[1] << 8) | (bytes[2] << 16) | (bytes[3] << 24);
    if (!INTEREST.has(code) || (bytes[4] & 0x4)) return;
    const d = decodeMessage({ channel: 'main', from: 'frontend', header: bytes.subarray(0, 12), payload: bytes.subarray(12), fdCount: fds.length });
    const p = d.payload as Record<string, any> | undefined;
    if (!p || d.problems.some((x) => x.severity === 'error')) return;
    switch (code) {
      case SET_FEATURES: this.features = p.features; break;
      case SET_MEM_TABLE:
        this.setRegions((p.regions as RegionSpec[]).slice(0, fds.length).map((r, i) => ({ ...r, fd: this.native.dup(fds[i], 'guest memory (ring capture)') })));
        break;
      case ADD_MEM_REG:
        this.setRegions([...this.regions, { guestPhysAddr: p.guestPhysAddr, memorySize: p.memorySize, userspaceAddr: p.userspaceAddr, mmapOffset: p.mmapOffset, fd: this.native.dup(fds[0], 'guest memory (ring capture)') }]);
        break;
      case REM_MEM_REG:
        this.setRegions(this.regions.filter((r) => !(r.guestPhysAddr === p.guestPhysAddr && r.userspaceAddr === p.userspaceAddr && r.memorySize === p.memorySize)));
        break;
      case SET_VRING_NUM: { const v = this.vring(p.index); v.num = p.num; v.lastAvail = v.lastUsed = undefined; break; }
      case SET_VRING_ADDR: { const v = this.vring(p.index); v.desc = p.desc; v.avail = p.avail; v.used = p.used; v.lastAvail = v.lastUsed = undefined; break; }
      case SET_VRING_BASE: { const v = this.vring(p.index); v.base = p.num & 0xffff; v.lastAvail = v.lastUsed = undefined; break; }
      case GET_VRING_BASE: { const v = this.vring(p.index); v.lastAvail = v.lastUsed = undefined; break; }
    }
  }

  private config(vring: number): { cfg: RingConfig; v: VringTrack } | undefined {
    const v = this.vrings.get(vring);
    if (!v || v.num === undefined || v.desc === undefined || !this.regions.length) return undefined;
    // Packed rings and IOVAs are left to the polling watcher.
    if (hasBit(this.features, FEATURE_BIT.RING_PACKED) || hasBit(this.features, FEATURE_BIT.ACCESS_PLATFORM)) return undefined;
    return {
      v,
      cfg: {
        index: vring, num: v.num, desc: v.desc, avail: v.avail!, used: v.used!, packed: false,
        eventIdx: hasBit(this.features, FEATURE_BIT.RING_EVENT_IDX),
        indirect: this.features === undefined || hasBit(this.features, FEATURE_BIT.RING_INDIRECT_DESC),
      },
    };
  }

  /** The driver kicked `vring`: walk what it offered since the last look. Call before waking the device. */
  onKick(vring: number, time: number): RingCapture | undefined {
    return this.capture(vring, 'kick', time);
  }

  /** The device called `vring`: walk what it completed since the last look. Call before waking the driver. */
  onCall(vring: number, time: number): RingCapture | undefined {
    return this.capture(vring, 'call', time);
  }

  private capture(vring: number, at: 'kick' | 'call', time: number): RingCapture | undefined {
    const c = this.config(vring);
    if (!c) return undefined;
    const { cfg, v } = c;
    const ctx = new WalkContext(this.mem, cfg);
    const { availIdx, usedIdx } = readSplitIndices(ctx);
    if (v.lastAvail === undefined) v.lastAvail = v.base ?? usedIdx;
    if (v.lastUsed === undefined) v.lastUsed = usedIdx;
    const out: RingCapture = { vring, at, time, availIdx, usedIdx, chains: [], bytes: [] };
    const from = at === 'kick' ? v.lastAvail : v.lastUsed;
    const to = at === 'kick' ? availIdx : usedIdx;
    let count = (to - from) & 0xffff;
    let start = from;
    if (count > cfg.num) {
      out.note = `${at === 'kick' ? 'avail' : 'used'} index moved by ${count} (> ring size ${cfg.num}) since the last notification: only the last ${cfg.num} entries captured`;
      start = (to - cfg.num) & 0xffff;
      count = cfg.num;
    }
    if (at === 'kick') v.lastAvail = availIdx; else v.lastUsed = usedIdx;
    if (!count) return out;
    const table = new DescTable(ctx.readRing(cfg.desc, cfg.num * DESC_SIZE, 'descriptor table'));
    const ring = ctx.readRing(at === 'kick' ? cfg.avail + 4n : cfg.used + 4n, at === 'kick' ? 2 * cfg.num : 8 * cfg.num, at === 'kick' ? 'avail ring' : 'used ring');
    const dv = new DataView(ring.buffer, ring.byteOffset, ring.byteLength);
    for (let k = 0; k < count; k++) {
      const pos = (start + k) & 0xffff;
      const slot = pos % cfg.num;
      if (at === 'kick') {
        const chain = walkSplitChain(ctx, table, dv.getUint16(2 * slot, true));
        chain.availPos = pos;
        out.chains.push(chain);
        this.record(chain, out.bytes, false);
      } else {
        const id = dv.getUint32(8 * slot, true), len = dv.getUint32(8 * slot + 4, true);
        const chain = id < cfg.num ? walkSplitChain(ctx, table, id) : { head: id, descs: [], readable: 0, writable: 0, state: 'used' as const };
        chain.state = 'used';
        chain.usedLen = len;
        chain.usedPos = pos;
        out.chains.push(chain);
        this.record(chain, out.bytes, true);
      }
    }
    return out;
  }

  /** Keep the bytes a payload decoder reads: the start of each buffer, and the last byte of the last writable one. */
  private record(chain: Chain, into: CapturedBytes[], used: boolean): void {
    const writable = chain.descs.filter((d) => d.write);
    for (const d of chain.descs) {
      if (d.write && !used) continue; // not written yet
      const n = Math.min(d.len, CAPTURE_PREVIEW);
      if (n) this.grab(d.addr, n, into);
      if (d.write && d === writable[writable.length - 1] && d.len > n) this.grab(d.addr + BigInt(d.len - 1), 1, into);
    }
  }

  private grab(addr: bigint, len: number, into: CapturedBytes[]): void {
    try { into.push({ addr, bytes: this.mem.readGpa(addr, len) }); } catch { /* outside memory: the chain says why */ }
  }

  close(): void {
    this.setRegions([]);
    this.vrings.clear();
  }
}
