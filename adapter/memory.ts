// Guest memory for the debugger: readMemory over a session's regions (partial reads at region ends), and hex dumps for the Debug Console.
import { MemoryError, type GuestMemoryReader } from '../core/memory/guestMemory';

export class MemoryUnavailable extends Error {}

/** Per-request cap: VS Code's memory view reads in small pages; a hostile count cannot make us allocate more. */
export const MAX_READ = 1 << 20;

export interface ReadResult { data: Uint8Array; unreadable: number }

/**
 * Read up to `count` bytes at `addr`: as many as are readable from the start (a read running past the last region
 * stops there and reports the rest as unreadable; a start in no region, or at an IOVA no IOTLB entry maps, reads
 * nothing). Throws MemoryUnavailable when memory cannot be read at all (no fds kept: replay).
 */
export function readGuest(mem: GuestMemoryReader, space: 'gpa' | 'uva', addr: bigint, count: number): ReadResult {
  const n0 = Math.max(0, Math.min(Math.floor(count), MAX_READ));
  if (n0 === 0) return { data: new Uint8Array(0), unreadable: Math.max(0, count) };
  const check = (n: number): MemoryError | undefined => (space === 'gpa' ? mem.checkGpa(addr, n) : mem.checkUva(addr, n));
  const fatal = (e: MemoryError): never => {
    if (e.code === 'no-fd') throw new MemoryUnavailable('guest memory is not available: no memory fd is kept for this region (a replayed capture records messages, not memory)');
    if (e.code === 'iommu-unsupported') throw new MemoryUnavailable(e.message);
    throw new MemoryUnavailable(e.message);
  };
  let n = n0;
  if (check(n)) {
    const one = check(1);
    if (one) {
      if (one.code === 'unmapped' || one.code === 'iova-unmapped') return { data: new Uint8Array(0), unreadable: count };
      fatal(one);
    }
    // Largest readable prefix: check(lo) passes, check(hi) fails (a region end, or a gap between regions).
    let lo = 1, hi = n;
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      if (check(mid)) hi = mid; else lo = mid;
    }
    n = lo;
  }
  try {
    const data = space === 'gpa' ? mem.readGpa(addr, n) : mem.readUva(addr, n);
    return { data, unreadable: count - n };
  } catch (e) {
    if (e instanceof MemoryError) fatal(e);
    throw e;
  }
}

/** Classic hex dump: address, 16 bytes, ASCII. */
export function hexDump(addr: bigint, data: Uint8Array): string {
  const lines: string[] = [];
  for (let off = 0; off < data.byteLength; off += 16) {
    const row = data.subarray(off, off + 16);
    const hexes = Array.from(row, (b) => b.toString(16).padStart(2, '0'));
    const left = hexes.slice(0, 8).join(' '), right = hexes.slice(8).join(' ');
    const ascii = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    lines.push(`0x${(addr + BigInt(off)).toString(16).padStart(8, '0')}  ${left.padEnd(23)}  ${right.padEnd(23)}  |${ascii}|`);
  }
  return lines.join('\n');
}
