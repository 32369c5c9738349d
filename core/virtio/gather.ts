// Gather the bytes of a chain's device-readable or device-writable buffers from guest memory, capped (payload decoders' input).
import type { GuestMemoryReader } from '../memory/guestMemory';
import type { Chain } from './ring';

export interface Gathered {
  bytes: Uint8Array;
  /** Total bytes the chosen buffers hold (or the limit), whether or not all were read. */
  total: number;
}

/**
 * Concatenate the buffers of one direction in chain order, reading at most `max` bytes and counting at most
 * `limit` (e.g. the used length for device-written data). Throws MemoryError if a buffer cannot be read.
 * With `into`, the bytes live in that buffer and are valid until the caller reuses it.
 */
export function gather(mem: GuestMemoryReader, chain: Chain, write: boolean, max: number, limit = Infinity, into?: Uint8Array): Gathered {
  let total = 0;
  for (const d of chain.descs) if (d.write === write) total += d.len;
  total = Math.min(total, limit);
  const want = Math.min(total, max);
  // `into` (a caller's scratch buffer, if big enough) saves an allocation; the result is then a view of it.
  const out = into && into.byteLength >= want ? into.subarray(0, want) : new Uint8Array(want);
  let off = 0;
  for (const d of chain.descs) {
    if (off >= want) break;
    if (d.write !== write || d.len === 0) continue;
    const n = Math.min(d.len, want - off);
    mem.readGpaInto(d.addr, out, off, n);
    off += n;
  }
  return { bytes: out, total };
}

export function hexPreview(b: Uint8Array, max: number): string {
  let s = '';
  const n = Math.min(b.byteLength, max);
  for (let i = 0; i < n; i++) s += (i && i % 4 === 0 ? ' ' : '') + b[i].toString(16).padStart(2, '0');
  return n < b.byteLength ? `${s} …` : s;
}
