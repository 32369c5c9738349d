// virtio-net payload decoder: virtio_net_hdr, then Ethernet/802.1Q/ARP/IPv4/IPv6/TCP/UDP/ICMP as one summary line per frame.
import type { GuestMemoryReader } from '../memory/guestMemory';
import { gather, hexPreview } from './gather';
import type { Chain } from './ring';

/** VIRTIO_NET_F_* bits used here (virtio 1.2 5.1.3). */
export const NET_F = { MRG_RXBUF: 15, CTRL_VQ: 17, HASH_REPORT: 57, VERSION_1: 32 } as const;
export const NET_HDR_F_NEEDS_CSUM = 1;
export const NET_HDR_F_DATA_VALID = 2;
export const NET_HDR_F_RSC_INFO = 4;
export const GSO_TYPES: Record<number, string> = { 0: 'NONE', 1: 'TCPV4', 3: 'UDP', 4: 'TCPV6', 5: 'UDP_L4' };
export const GSO_ECN = 0x80;

export interface NetHeader {
  size: number;
  flags: number;
  gsoType: number;
  gso: string;
  hdrLen: number;
  gsoSize: number;
  csumStart: number;
  csumOffset: number;
  numBuffers?: number;
  hashValue?: number;
  hashReport?: number;
}

export interface EthInfo { dst: string; src: string; type: number; vlan?: { id: number; pcp: number; tpid: number }[] }

export interface NetPayload {
  kind: 'net';
  dir: 'tx' | 'rx' | 'ctrl';
  summary: string;
  hdr?: NetHeader;
  /** Frame length after the virtio-net header (TX: readable bytes; RX: used len). */
  frameLen: number;
  eth?: EthInfo;
  hex?: string;
  /** Control queue: class/command names and the ack byte once used. */
  ctrl?: { class: number; cmd: number; name: string; ack?: number };
  error?: string;
}

const bit = (f: bigint | undefined, b: number): boolean => f !== undefined && ((f >> BigInt(b)) & 1n) === 1n;

/** Header size: 10 bytes legacy, 12 with VERSION_1 or MRG_RXBUF (num_buffers), 20 with HASH_REPORT. */
export function netHeaderSize(features?: bigint): number {
  if (bit(features, NET_F.HASH_REPORT)) return 20;
  return bit(features, NET_F.VERSION_1) || bit(features, NET_F.MRG_RXBUF) ? 12 : 10;
}

const le16 = (b: Uint8Array, o: number): number => b[o] | (b[o + 1] << 8);

export function decodeNetHeader(b: Uint8Array, size: number): NetHeader | undefined {
  if (b.byteLength < size) return undefined;
  const gsoType = b[1];
  const h: NetHeader = {
    size, flags: b[0], gsoType, gso: (GSO_TYPES[gsoType & 0x7f] ?? `0x${(gsoType & 0x7f).toString(16)}`) + (gsoType & GSO_ECN ? '+ECN' : ''),
    hdrLen: le16(b, 2), gsoSize: le16(b, 4), csumStart: le16(b, 6), csumOffset: le16(b, 8),
  };
  if (size >= 12) h.numBuffers = le16(b, 10);
  if (size >= 20) { h.hashValue = (le16(b, 12) | (le16(b, 14) << 16)) >>> 0; h.hashReport = le16(b, 16); }
  return h;
}

// ---- frame summary -------------------------------------------------------------------------------------------

const HEX2 = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
export const mac = (b: Uint8Array, o: number): string =>
  `${HEX2[b[o]]}:${HEX2[b[o + 1]]}:${HEX2[b[o + 2]]}:${HEX2[b[o + 3]]}:${HEX2[b[o + 4]]}:${HEX2[b[o + 5]]}`;
export const ipv4 = (b: Uint8Array, o: number): string => `${b[o]}.${b[o + 1]}.${b[o + 2]}.${b[o + 3]}`;

/** RFC 5952 text form: lowercase, no leading zeros, the longest run (>= 2) of zero groups as '::'. */
export function ipv6(b: Uint8Array, o: number): string {
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push((b[o + 2 * i] << 8) | b[o + 2 * i + 1]);
  if (g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff) return `::ffff:${ipv4(b, o + 12)}`;
  let bestAt = -1, bestLen = 1;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) { bestAt = i; bestLen = j - i; }
    i = j;
  }
  const hex = (xs: number[]): string => xs.map((x) => x.toString(16)).join(':');
  if (bestAt < 0) return hex(g);
  return `${hex(g.slice(0, bestAt))}::${hex(g.slice(bestAt + bestLen))}`;
}

const ETHERTYPES: Record<number, string> = { 0x0800: 'IPv4', 0x0806: 'ARP', 0x86dd: 'IPv6', 0x8035: 'RARP', 0x88cc: 'LLDP', 0x8809: 'slow-protocols', 0x88f7: 'PTP' };
const IP_PROTOS: Record<number, string> = { 1: 'ICMP', 2: 'IGMP', 6: 'TCP', 17: 'UDP', 47: 'GRE', 50: 'ESP', 58: 'ICMPv6', 132: 'SCTP' };
const ICMP_TYPES: Record<number, string> = {
  0: 'echo reply', 3: 'dest unreachable', 4: 'source quench', 5: 'redirect', 8: 'echo request', 11: 'time exceeded',
  12: 'parameter problem', 13: 'timestamp request', 14: 'timestamp reply',
};
const ICMP6_TYPES: Record<number, string> = {
  1: 'dest unreachable', 2: 'packet too big', 3: 'time exceeded', 4: 'parameter problem', 128: 'echo request', 129: 'echo reply',
  130: 'multicast listener query', 131: 'multicast listener report', 133: 'router solicitation', 134: 'router advertisement',
  135: 'neighbor solicitation', 136: 'neighbor advertisement', 137: 'redirect', 143: 'multicast listener report v2',
};

// Set by the parsers when the frame was cut short or malformed (cheaper than searching the summary afterwards).
let partial = false;
const bad = (msg: string): string => { partial = true; return msg; };

const be16 = (b: Uint8Array, o: number): number => (b[o] << 8) | b[o + 1];
const be32 = (b: Uint8Array, o: number): number => ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;

function tcpFlags(f: number): string {
  let s = '';
  if (f & 0x02) s += 'S';
  if (f & 0x01) s += 'F';
  if (f & 0x04) s += 'R';
  if (f & 0x08) s += 'P';
  if (f & 0x20) s += 'U';
  if (f & 0x40) s += 'E';
  if (f & 0x80) s += 'W';
  if (f & 0x10) s += '.';
  return s || 'none';
}

/** L4 summary over an IP payload starting at o (bytes available up to b.length), l4Len = length by the IP header. */
function l4(b: Uint8Array, o: number, proto: number, src: string, dst: string, l4Len: number, v6: boolean, ipLen: number, ipPrefix: string): string {
  const addr = (a: string, p: number): string => (v6 ? `[${a}]:${p}` : `${a}:${p}`);
  if (proto === 17) {
    if (b.length < o + 8) return bad(`${ipPrefix} UDP truncated`);
    const ulen = be16(b, o + 4);
    return `UDP ${addr(src, be16(b, o))} > ${addr(dst, be16(b, o + 2))} len=${Math.max(0, (ulen || l4Len) - 8)}`;
  }
  if (proto === 6) {
    if (b.length < o + 20) return bad(`${ipPrefix} TCP truncated`);
    const off = (b[o + 12] >> 4) * 4;
    const flags = b[o + 13];
    let s = `TCP ${addr(src, be16(b, o))} > ${addr(dst, be16(b, o + 2))} [${tcpFlags(flags)}] seq=${be32(b, o + 4)}`;
    if (flags & 0x10) s += ` ack=${be32(b, o + 8)}`;
    return `${s} win=${be16(b, o + 14)} len=${Math.max(0, l4Len - off)}`;
  }
  if (proto === 1 || proto === 58) {
    const name = proto === 1 ? 'ICMP' : 'ICMPv6';
    if (b.length < o + 4) return bad(`${ipPrefix} ${name} truncated`);
    const type = b[o], code = b[o + 1];
    const tname = (proto === 1 ? ICMP_TYPES : ICMP6_TYPES)[type];
    let s = `${ipPrefix} ${name} ${tname ?? `type ${type}`}`;
    const echo = proto === 1 ? type === 0 || type === 8 : type === 128 || type === 129;
    if (echo && b.length >= o + 8) s += ` id=${be16(b, o + 4)} seq=${be16(b, o + 6)}`;
    else if (proto === 58 && (type === 135 || type === 136) && b.length >= o + 24) s += type === 135 ? ` who-has ${ipv6(b, o + 8)}` : ` ${ipv6(b, o + 8)}`;
    else if (!echo && code) s += ` code ${code}`;
    return `${s} len=${ipLen}`;
  }
  return `${ipPrefix} ${IP_PROTOS[proto] ?? `proto ${proto}`} len=${ipLen}`;
}

function ipv4Summary(b: Uint8Array, o: number): string {
  if (b.length < o + 20) return bad('IPv4 truncated');
  const ihl = (b[o] & 0x0f) * 4;
  if (b[o] >> 4 !== 4 || ihl < 20) return bad(`IPv4 bad header (version/ihl 0x${b[o].toString(16)})`);
  const total = be16(b, o + 2);
  const proto = b[o + 9];
  const src = ipv4(b, o + 12), dst = ipv4(b, o + 16);
  const frag = be16(b, o + 6);
  const prefix = `IPv4 ${src} > ${dst}`;
  if ((frag & 0x1fff) !== 0) return `${prefix} ${IP_PROTOS[proto] ?? `proto ${proto}`} fragment off=${(frag & 0x1fff) * 8} len=${total}`;
  return l4(b, o + ihl, proto, src, dst, total - ihl, false, total, prefix);
}

function ipv6Summary(b: Uint8Array, o: number): string {
  if (b.length < o + 40) return bad('IPv6 truncated');
  const plen = be16(b, o + 4);
  let next = b[o + 6];
  const src = ipv6(b, o + 8), dst = ipv6(b, o + 24);
  const prefix = `IPv6 ${src} > ${dst}`;
  let p = o + 40;
  let left = plen;
  // Extension headers: hop-by-hop, routing, destination options (at most 8, bounded), fragment.
  for (let k = 0; k < 8 && (next === 0 || next === 43 || next === 60 || next === 44); k++) {
    if (b.length < p + 8) return bad(`${prefix} truncated extension header`);
    if (next === 44) {
      if ((be16(b, p + 2) & 0xfff8) !== 0) return `${prefix} fragment len=${plen + 40}`;
      next = b[p]; p += 8; left -= 8;
      continue;
    }
    const hl = (b[p + 1] + 1) * 8;
    next = b[p]; p += hl; left -= hl;
  }
  return l4(b, p, next, src, dst, Math.max(0, left), true, plen + 40, prefix);
}

function arpSummary(b: Uint8Array, o: number): string {
  if (b.length < o + 28) return bad('ARP truncated');
  const op = be16(b, o + 6);
  if (be16(b, o) !== 1 || be16(b, o + 2) !== 0x0800 || b[o + 4] !== 6 || b[o + 5] !== 4) return `ARP op ${op} (non-Ethernet/IPv4)`;
  const sha = mac(b, o + 8), spa = ipv4(b, o + 14), tpa = ipv4(b, o + 24);
  if (op === 1) return spa === tpa ? `ARP announce ${spa}` : `ARP who-has ${tpa} tell ${spa}`;
  if (op === 2) return `ARP reply ${spa} is-at ${sha}`;
  if (op === 3 || op === 4) return `RARP ${op === 3 ? 'request' : 'reply'} ${sha}`;
  return `ARP op ${op}`;
}

/** One summary line for an Ethernet frame (b may be a prefix of the frame; frameLen is its full length). */
export function summarizeFrame(b: Uint8Array, frameLen = b.length): { summary: string; eth?: EthInfo; understood: boolean } {
  if (b.length < 14) return { summary: `frame truncated (${frameLen} bytes)`, understood: false };
  partial = false;
  const eth: EthInfo = { dst: mac(b, 0), src: mac(b, 6), type: be16(b, 12) };
  let o = 14;
  let prefix = '';
  // 802.1Q / 802.1ad tags (at most 2 nested).
  for (let k = 0; k < 2 && (eth.type === 0x8100 || eth.type === 0x88a8); k++) {
    if (b.length < o + 4) return { summary: `vlan truncated`, eth, understood: false };
    const tci = be16(b, o);
    (eth.vlan ??= []).push({ id: tci & 0x0fff, pcp: tci >> 13, tpid: eth.type });
    prefix += `vlan ${tci & 0x0fff} `;
    eth.type = be16(b, o + 2);
    o += 4;
  }
  let s: string;
  switch (eth.type) {
    case 0x0806: case 0x8035: s = arpSummary(b, o); break;
    case 0x0800: s = ipv4Summary(b, o); break;
    case 0x86dd: s = ipv6Summary(b, o); break;
    default:
      if (eth.type >= 0x0600 && !ETHERTYPES[eth.type]) partial = true;
      s = eth.type < 0x0600
        ? `802.3 ${eth.src} > ${eth.dst} len=${frameLen}`
        : `ether ${eth.src} > ${eth.dst} ${ETHERTYPES[eth.type] ?? `type 0x${eth.type.toString(16).padStart(4, '0')}`} len=${frameLen}`;
  }
  return { summary: prefix + s, eth, understood: !partial };
}

// ---- control queue ---------------------------------------------------------------------------------------------

const CTRL_CLASSES: Record<number, [string, Record<number, string>]> = {
  0: ['RX', { 0: 'PROMISC', 1: 'ALLMULTI', 2: 'ALLUNI', 3: 'NOMULTI', 4: 'NOUNI', 5: 'NOBCAST' }],
  1: ['MAC', { 0: 'TABLE_SET', 1: 'ADDR_SET' }],
  2: ['VLAN', { 0: 'ADD', 1: 'DEL' }],
  3: ['ANNOUNCE', { 0: 'ACK' }],
  4: ['MQ', { 0: 'VQ_PAIRS_SET', 1: 'RSS_CONFIG', 2: 'HASH_CONFIG' }],
  5: ['GUEST_OFFLOADS', { 0: 'SET' }],
  6: ['NOTF_COAL', { 0: 'TX_SET', 1: 'RX_SET', 2: 'VQ_SET', 3: 'VQ_GET' }],
  8: ['STATS', { 0: 'QUERY', 1: 'GET' }],
};

// ---- chain decoder ---------------------------------------------------------------------------------------------

/** Frame bytes read for a summary land here (nothing keeps them: the payload holds strings and numbers). */
const SCRATCH = new Uint8Array(1024);

export interface NetDecodeOptions {
  features?: bigint;
  /** Index of the control queue when known (2 * max_queue_pairs with CTRL_VQ). */
  ctrlQueue?: number;
  /** Bytes of frame to read for the summary (default 256). */
  maxRead?: number;
  /** Hex bytes to show when the frame is not understood (default 32). */
  hexBytes?: number;
}

/**
 * TX queues (odd index) carry the frame in device-readable buffers; RX queues (even index) in the
 * device-writable buffers, meaningful only once used (up to the used length). Throws MemoryError only.
 */
export function decodeNetChain(mem: GuestMemoryReader, chain: Chain, vring: number, opts: NetDecodeOptions = {}): NetPayload {
  const maxRead = Math.min(opts.maxRead ?? 256, SCRATCH.byteLength);
  const hsz = netHeaderSize(opts.features);
  if (opts.ctrlQueue !== undefined && vring === opts.ctrlQueue) {
    const g = gather(mem, chain, false, 64);
    const cls = g.bytes[0] ?? -1, cmd = g.bytes[1] ?? -1;
    const c = CTRL_CLASSES[cls];
    const name = c ? `${c[0]} ${c[1][cmd] ?? `cmd ${cmd}`}` : `class ${cls} cmd ${cmd}`;
    let ack: number | undefined;
    if (chain.state === 'used') {
      const last = [...chain.descs].reverse().find((d) => d.write && d.len > 0);
      if (last) ack = mem.readGpa(last.addr + BigInt(last.len - 1), 1)[0];
    }
    const args = g.bytes.subarray(2);
    return {
      kind: 'net', dir: 'ctrl', frameLen: g.total, ctrl: { class: cls, cmd, name, ack },
      summary: `CTRL ${name}${args.length ? ` ${hexPreview(args, 16)}` : ''}${ack === undefined ? '' : ack === 0 ? ' -> OK' : ` -> ERR ${ack}`}`,
    };
  }
  const tx = (vring & 1) === 1;
  if (!tx && chain.state !== 'used') {
    return { kind: 'net', dir: 'rx', frameLen: 0, summary: `RX buffer ${chain.writable} bytes (not filled yet)` };
  }
  const g = tx ? gather(mem, chain, false, maxRead, Infinity, SCRATCH) : gather(mem, chain, true, maxRead, chain.usedLen ?? 0, SCRATCH);
  const dir = tx ? 'tx' : 'rx';
  const hdr = decodeNetHeader(g.bytes, hsz);
  if (!hdr) return { kind: 'net', dir, frameLen: 0, summary: `${dir.toUpperCase()} ${g.total} bytes: shorter than the ${hsz}-byte virtio-net header`, hex: hexPreview(g.bytes, 32) };
  const frameLen = g.total - hsz;
  const frame = g.bytes.subarray(hsz);
  const { summary, eth, understood } = summarizeFrame(frame, frameLen);
  let s = summary;
  if ((hdr.gsoType & 0x7f) !== 0) s += ` [gso ${hdr.gso} mss ${hdr.gsoSize}]`;
  if (!tx && hdr.numBuffers !== undefined && hdr.numBuffers > 1) s += ` (1 of ${hdr.numBuffers} buffers)`;
  const out: NetPayload = { kind: 'net', dir, summary: s, hdr, frameLen, eth };
  if (!understood) out.hex = hexPreview(frame, opts.hexBytes ?? 32);
  return out;
}
