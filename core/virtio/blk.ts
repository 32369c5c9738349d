// virtio-blk payload decoder: virtio_blk_outhdr, data length, status byte once used, optional data preview (virtio 1.2 5.2.6).
import type { GuestMemoryReader } from '../memory/guestMemory';
import { gather, hexPreview } from './gather';
import type { Chain } from './ring';

export const BLK_TYPES: Record<number, string> = {
  0: 'IN', 1: 'OUT', 2: 'SCSI_CMD', 4: 'FLUSH', 8: 'GET_ID', 10: 'GET_LIFETIME', 11: 'DISCARD', 13: 'WRITE_ZEROES',
  14: 'SECURE_ERASE', 15: 'ZONE_APPEND', 16: 'ZONE_REPORT', 18: 'ZONE_OPEN', 20: 'ZONE_CLOSE', 22: 'ZONE_FINISH',
  24: 'ZONE_RESET', 26: 'ZONE_RESET_ALL',
};
export const BLK_STATUS: Record<number, string> = { 0: 'OK', 1: 'IOERR', 2: 'UNSUPP' };
/** Legacy barrier bit in the type field (VIRTIO_BLK_T_BARRIER). */
export const BLK_T_BARRIER = 0x8000_0000;
export const BLK_OUTHDR_SIZE = 16;
export const SECTOR_SIZE = 512;

export interface BlkSegment { sector: bigint; numSectors: number; unmap: boolean }

export interface BlkPayload {
  kind: 'blk';
  type: string;
  typeCode: number;
  ioprio: number;
  sector: bigint;
  /** Data bytes: readable after the header plus writable before the status byte. */
  len: number;
  /** Once used: the status byte's name (OK, IOERR, UNSUPP) or its number. */
  status?: string;
  statusCode?: number;
  usedLen?: number;
  summary: string;
  preview?: string;
  /** GET_ID: the device id string once used. */
  id?: string;
  /** DISCARD / WRITE_ZEROES / SECURE_ERASE ranges (first few). */
  segments?: BlkSegment[];
  error?: string;
}

export interface BlkDecodeOptions {
  /** Bytes of data to preview as hex (default 0: none). */
  preview?: number;
}

/** Decode a virtio-blk request chain. Throws MemoryError only. */
export function decodeBlkChain(mem: GuestMemoryReader, chain: Chain, opts: BlkDecodeOptions = {}): BlkPayload {
  const previewLen = opts.preview ?? 0;
  // The header alone first (one read for the common case); more only for segments or a preview.
  let head = gather(mem, chain, false, BLK_OUTHDR_SIZE);
  if (head.bytes.byteLength < BLK_OUTHDR_SIZE) {
    return {
      kind: 'blk', type: '?', typeCode: -1, ioprio: 0, sector: 0n, len: 0,
      summary: `request without a 16-byte header (${chain.readable} readable bytes)`, error: 'short header',
    };
  }
  const dv = new DataView(head.bytes.buffer, head.bytes.byteOffset, head.bytes.byteLength);
  const rawType = dv.getUint32(0, true);
  const typeCode = rawType & ~BLK_T_BARRIER;
  const type = (BLK_TYPES[typeCode] ?? `type ${typeCode}`) + (rawType & BLK_T_BARRIER ? '|BARRIER' : '');
  const ioprio = dv.getUint32(4, true);
  const sector = dv.getBigUint64(8, true);
  const len = Math.max(0, chain.readable - BLK_OUTHDR_SIZE) + Math.max(0, chain.writable - 1);
  const p: BlkPayload = { kind: 'blk', type, typeCode, ioprio, sector, len, summary: '' };
  const segmented = typeCode === 11 || typeCode === 13 || typeCode === 14;
  if ((segmented || previewLen > 0) && chain.readable > BLK_OUTHDR_SIZE) {
    head = gather(mem, chain, false, BLK_OUTHDR_SIZE + Math.max(previewLen + 1, segmented ? 64 : 0));
  }
  const readData = head.bytes.subarray(BLK_OUTHDR_SIZE);
  if (segmented) {
    p.segments = [];
    for (let o = 0; o + 16 <= readData.byteLength && p.segments.length < 4; o += 16) {
      const s = new DataView(readData.buffer, readData.byteOffset + o, 16);
      p.segments.push({ sector: s.getBigUint64(0, true), numSectors: s.getUint32(8, true), unmap: (s.getUint32(12, true) & 1) === 1 });
    }
  }
  if (previewLen > 0 && readData.byteLength > 0) p.preview = hexPreview(readData, previewLen);
  if (chain.state === 'used') {
    p.usedLen = chain.usedLen;
    const last = lastWritable(chain);
    if (!last) p.error = 'no device-writable buffer for the status byte';
    else {
      p.statusCode = mem.readGpa(last.addr + BigInt(last.len - 1), 1)[0];
      p.status = BLK_STATUS[p.statusCode] ?? `status ${p.statusCode}`;
      const wantData = typeCode === 8 ? 20 : previewLen > 0 ? previewLen + 1 : 0; // one more than shown: says if there is more
      if (wantData > 0 && chain.writable > 1 && (typeCode === 0 || typeCode === 8)) {
        const w = gather(mem, chain, true, wantData, chain.writable - 1);
        if (typeCode === 8) {
          const end = w.bytes.indexOf(0);
          p.id = Buffer.from(w.bytes.subarray(0, end < 0 ? w.bytes.byteLength : end)).toString('latin1');
        } else p.preview = hexPreview(w.bytes, previewLen);
      }
    }
  }
  let s = `${type}`;
  if (typeCode === 0 || typeCode === 1 || typeCode === 15) s += ` sector=${sector} len=${len}`;
  else if (p.segments) s += p.segments.map((g) => ` [${g.sector}+${g.numSectors}${g.unmap ? ' unmap' : ''}]`).join('') + (len / 16 > p.segments.length ? ' …' : '');
  else if (len) s += ` len=${len}`;
  if (p.id !== undefined) s += ` id="${p.id}"`;
  s += chain.state === 'used' ? (p.status ? ` status=${p.status}` : ' status=?') : ' (in flight)';
  p.summary = s;
  return p;
}

function lastWritable(chain: Chain): { addr: bigint; len: number } | undefined {
  for (let i = chain.descs.length - 1; i >= 0; i--) {
    const d = chain.descs[i];
    if (d.write && d.len > 0) return d;
    if (d.write) return undefined; // a zero-length last writable buffer holds no status byte
  }
  return undefined;
}
