// Test-only builders for ring payloads: virtio-net headers and Ethernet/ARP/IPv4/IPv6/UDP/ICMP frames, virtio-blk requests.

export const macBytes = (s: string): number[] => s.split(':').map((x) => parseInt(x, 16));
export const ip4Bytes = (s: string): number[] => s.split('.').map(Number);
export function ip6Bytes(s: string): number[] {
  const [l, r] = s.split('::');
  const parse = (x: string | undefined): number[] => (x ? x.split(':').map((h) => parseInt(h, 16)) : []);
  const left = parse(l), right = parse(r);
  const groups = r === undefined ? left : [...left, ...new Array(8 - left.length - right.length).fill(0), ...right];
  return groups.flatMap((g) => [g >> 8, g & 0xff]);
}
const be16 = (v: number): number[] => [(v >> 8) & 0xff, v & 0xff];

export function netHdr(size = 12, o: { flags?: number; gsoType?: number; gsoSize?: number; numBuffers?: number } = {}): Uint8Array {
  const b = new Uint8Array(size);
  const v = new DataView(b.buffer);
  b[0] = o.flags ?? 0; b[1] = o.gsoType ?? 0; v.setUint16(4, o.gsoSize ?? 0, true);
  if (size >= 12) v.setUint16(10, o.numBuffers ?? 1, true);
  return b;
}

export function eth(dst: string, src: string, type: number, payload: number[], vlan?: number): number[] {
  return [...macBytes(dst), ...macBytes(src), ...(vlan !== undefined ? [0x81, 0x00, ...be16(vlan)] : []), ...be16(type), ...payload];
}

export function arpRequest(senderMac: string, senderIp: string, targetIp: string): number[] {
  return eth('ff:ff:ff:ff:ff:ff', senderMac, 0x0806, [0, 1, 8, 0, 6, 4, 0, 1, ...macBytes(senderMac), ...ip4Bytes(senderIp), 0, 0, 0, 0, 0, 0, ...ip4Bytes(targetIp)]);
}
export function arpReply(senderMac: string, senderIp: string, targetMac: string, targetIp: string): number[] {
  return eth(targetMac, senderMac, 0x0806, [0, 1, 8, 0, 6, 4, 0, 2, ...macBytes(senderMac), ...ip4Bytes(senderIp), ...macBytes(targetMac), ...ip4Bytes(targetIp)]);
}

export function ipv4(src: string, dst: string, proto: number, l4: number[], frag = 0): number[] {
  const total = 20 + l4.length;
  return [0x45, 0, ...be16(total), 0, 1, ...be16(frag), 64, proto, 0, 0, ...ip4Bytes(src), ...ip4Bytes(dst), ...l4];
}
export function icmpEcho(request: boolean, id: number, seq: number, dataLen = 56): number[] {
  return [request ? 8 : 0, 0, 0, 0, ...be16(id), ...be16(seq), ...new Array(dataLen).fill(0xab)];
}
export function udp(sport: number, dport: number, payloadLen: number): number[] {
  return [...be16(sport), ...be16(dport), ...be16(8 + payloadLen), 0, 0, ...new Array(payloadLen).fill(0)];
}
export function tcp(sport: number, dport: number, flags: number, seq: number, ack: number, payloadLen: number): number[] {
  return [...be16(sport), ...be16(dport), ...[seq >>> 24, (seq >> 16) & 255, (seq >> 8) & 255, seq & 255], ...[ack >>> 24, (ack >> 16) & 255, (ack >> 8) & 255, ack & 255],
    0x50, flags, ...be16(65535), 0, 0, 0, 0, ...new Array(payloadLen).fill(0)];
}
export function ipv6(src: string, dst: string, next: number, l4: number[]): number[] {
  return [0x60, 0, 0, 0, ...be16(l4.length), next, 64, ...ip6Bytes(src), ...ip6Bytes(dst), ...l4];
}

export const withHdr = (frame: number[], hdrSize = 12, o: Parameters<typeof netHdr>[1] = {}): Uint8Array =>
  new Uint8Array([...netHdr(hdrSize, o), ...frame]);

/** virtio_blk_outhdr {le32 type, le32 ioprio, le64 sector}. */
export function blkHdr(type: number, sector: bigint, ioprio = 0): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setUint32(0, type, true); v.setUint32(4, ioprio, true); v.setBigUint64(8, sector, true);
  return b;
}
export function discardSeg(sector: bigint, num: number, unmap = false): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, sector, true); v.setUint32(8, num, true); v.setUint32(12, unmap ? 1 : 0, true);
  return b;
}
