// Ethernet frames the net back-end makes itself: ARP replies, ICMP echo replies (loopback responder) and RARP announcements.

export const ETH_P_IP = 0x0800;
export const ETH_P_ARP = 0x0806;
export const ETH_P_RARP = 0x8035;
export const BROADCAST = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

export function parseMac(s: string): Uint8Array {
  const m = /^([0-9a-f]{2})(?::([0-9a-f]{2})){5}$/i.test(s) ? s.split(':').map((x) => parseInt(x, 16)) : undefined;
  if (!m) throw new Error(`not a MAC address: "${s}" (use aa:bb:cc:dd:ee:ff)`);
  return new Uint8Array(m);
}

export function parseIpv4(s: string): Uint8Array {
  const parts = s.split('.');
  if (parts.length !== 4 || parts.some((p) => !/^\d{1,3}$/.test(p) || Number(p) > 255)) throw new Error(`not an IPv4 address: "${s}"`);
  return new Uint8Array(parts.map(Number));
}

export const macText = (m: Uint8Array): string => [...m].map((b) => b.toString(16).padStart(2, '0')).join(':');

/** Internet checksum (RFC 1071) over b[off, off+len). */
export function inetChecksum(b: Uint8Array, off: number, len: number): number {
  let sum = 0;
  for (let i = 0; i + 1 < len; i += 2) sum += (b[off + i] << 8) | b[off + i + 1];
  if (len & 1) sum += b[off + len - 1] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

const eq = (a: Uint8Array, ao: number, b: Uint8Array, n: number): boolean => {
  for (let i = 0; i < n; i++) if (a[ao + i] !== b[i]) return false;
  return true;
};

/**
 * A tiny host on the guest's link: answers ARP requests for its address and ICMP echo requests sent to it.
 * `answer` returns the reply frame, or undefined when the frame is not for the responder.
 */
export class Responder {
  arpReplies = 0;
  echoReplies = 0;
  constructor(readonly mac: Uint8Array, readonly ip: Uint8Array) {}

  answer(f: Uint8Array, off: number, len: number): Uint8Array | undefined {
    if (len < 14) return undefined;
    const type = (f[off + 12] << 8) | f[off + 13];
    if (type === ETH_P_ARP) return this.arp(f, off, len);
    if (type === ETH_P_IP) return this.icmp(f, off, len);
    return undefined;
  }

  private arp(f: Uint8Array, off: number, len: number): Uint8Array | undefined {
    const a = off + 14;
    if (len < 14 + 28) return undefined;
    const htype = (f[a] << 8) | f[a + 1], ptype = (f[a + 2] << 8) | f[a + 3], op = (f[a + 6] << 8) | f[a + 7];
    if (htype !== 1 || ptype !== ETH_P_IP || f[a + 4] !== 6 || f[a + 5] !== 4 || op !== 1) return undefined;
    if (!eq(f, a + 24, this.ip, 4)) return undefined; // target protocol address
    const r = new Uint8Array(60);
    r.set(f.subarray(a + 8, a + 14), 0); // to the sender
    r.set(this.mac, 6);
    r[12] = ETH_P_ARP >> 8; r[13] = ETH_P_ARP & 0xff;
    r.set([0, 1, 0x08, 0x00, 6, 4, 0, 2], 14);
    r.set(this.mac, 22); r.set(this.ip, 28); // sender = us
    r.set(f.subarray(a + 8, a + 18), 32); // target = the requester (MAC + IP)
    this.arpReplies++;
    return r;
  }

  private icmp(f: Uint8Array, off: number, len: number): Uint8Array | undefined {
    const ip = off + 14;
    if (len < 14 + 20) return undefined;
    const ihl = (f[ip] & 0x0f) * 4;
    if (f[ip] >> 4 !== 4 || ihl < 20 || f[ip + 9] !== 1) return undefined;
    const total = (f[ip + 2] << 8) | f[ip + 3];
    if (total < ihl + 8 || 14 + total > len) return undefined;
    if (((f[ip + 6] << 8) | f[ip + 7]) & 0x3fff) return undefined; // fragments: not answered
    if (!eq(f, ip + 16, this.ip, 4)) return undefined;
    const ic = ip + ihl;
    if (f[ic] !== 8 || f[ic + 1] !== 0) return undefined; // echo request
    const r = new Uint8Array(Math.max(60, 14 + total));
    r.set(f.subarray(off + 6, off + 12), 0); // back to the sender's MAC
    r.set(this.mac, 6);
    r[12] = ETH_P_IP >> 8; r[13] = ETH_P_IP & 0xff;
    r.set(f.subarray(ip, ip + total), 14);
    const rip = 14, ric = 14 + ihl;
    r.set(f.subarray(ip + 12, ip + 16), rip + 16); // destination = old source
    r.set(this.ip, rip + 12);
    r[rip + 8] = 64; // TTL
    r[rip + 10] = 0; r[rip + 11] = 0;
    const hc = inetChecksum(r, rip, ihl);
    r[rip + 10] = hc >> 8; r[rip + 11] = hc & 0xff;
    r[ric] = 0; // echo reply
    r[ric + 2] = 0; r[ric + 3] = 0;
    const cc = inetChecksum(r, ric, total - ihl);
    r[ric + 2] = cc >> 8; r[ric + 3] = cc & 0xff;
    this.echoReplies++;
    return r;
  }
}

/** RARP "request reverse" broadcast announcing `mac` (what QEMU and DPDK send after migration). */
export function rarpFrame(mac: Uint8Array): Uint8Array {
  const r = new Uint8Array(60);
  r.set(BROADCAST, 0);
  r.set(mac, 6);
  r[12] = ETH_P_RARP >> 8; r[13] = ETH_P_RARP & 0xff;
  r.set([0, 1, 0x08, 0x00, 6, 4, 0, 3], 14);
  r.set(mac, 22); // sender hardware address
  r.set(mac, 32); // target hardware address
  return r;
}
