// Payload decoder dispatch by device type (net, blk, fs, and hex for anything else); never throws.
import type { GuestMemoryReader } from '../memory/guestMemory';
import type { DeviceType } from '../protocol/features';
import { decodeBlkChain, type BlkPayload } from './blk';
import { decodeFsChain, looksLikeFuse, FUSE_IN_HEADER_SIZE, type FsPayload } from './fs';
import { gather, hexPreview } from './gather';
import { decodeNetChain, type NetPayload } from './net';
import type { Chain } from './ring';

export interface HexPayload {
  kind: 'hex';
  summary: string;
  /** Device-readable bytes (first few), and device-written bytes once used. */
  out?: string;
  in?: string;
  error?: string;
}

export type Payload = NetPayload | BlkPayload | FsPayload | HexPayload;

export interface PayloadContext {
  device: DeviceType;
  /** Negotiated virtio features (net header size). */
  features?: bigint;
  /** virtio-net control queue index when known. */
  ctrlQueue?: number;
  /** Bytes of data to preview (blk data, hex dumps); default 16. */
  preview?: number;
}

/** Decode what a chain carries. Memory failures become a payload with `error`, never an exception. */
export function decodePayload(mem: GuestMemoryReader, chain: Chain, vring: number, ctx: PayloadContext): Payload {
  const preview = ctx.preview ?? 16;
  try {
    if (chain.error && chain.descs.length === 0) return { kind: 'hex', summary: 'chain not decodable', error: chain.error.message };
    switch (ctx.device) {
      case 'net': return decodeNetChain(mem, chain, vring, { features: ctx.features, ctrlQueue: ctx.ctrlQueue });
      case 'blk': return decodeBlkChain(mem, chain, { preview });
      case 'fs': return decodeFsChain(mem, chain, { preview });
      default: {
        // Not told and not inferred: a chain that carries a well-formed FUSE request is decoded as virtio-fs.
        const o = gather(mem, chain, false, Math.max(preview, FUSE_IN_HEADER_SIZE));
        if (looksLikeFuse(o.bytes, chain)) return decodeFsChain(mem, chain, { preview });
        const out = o.bytes.subarray(0, preview);
        const p: HexPayload = { kind: 'hex', summary: `${chain.readable} bytes out, ${chain.writable} bytes in${chain.state === 'used' ? ` (${chain.usedLen ?? 0} written)` : ''}` };
        if (out.byteLength) p.out = hexPreview(out, preview);
        if (chain.state === 'used' && chain.usedLen) {
          const i = gather(mem, chain, true, preview, chain.usedLen);
          if (i.bytes.byteLength) p.in = hexPreview(i.bytes, preview);
        }
        return p;
      }
    }
  } catch (e) {
    return { kind: 'hex', summary: `payload unreadable: ${(e as Error).message}`, error: (e as Error).message };
  }
}
