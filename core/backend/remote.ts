// Checks that a front-end process maps a memory region exactly as its memory table says (/proc/PID/maps vs the region fd).
import * as fs from 'node:fs';
import type { DeviceRegion } from './memory';

interface Vma { start: number; end: number; perms: string; offset: number; major: number; minor: number; inode: number }

export function parseMaps(text: string): Vma[] {
  const out: Vma[] = [];
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) ([0-9a-f]+):([0-9a-f]+) (\d+)/.exec(line);
    if (!m) continue;
    out.push({ start: parseInt(m[1], 16), end: parseInt(m[2], 16), perms: m[3], offset: parseInt(m[4], 16), major: parseInt(m[5], 16), minor: parseInt(m[6], 16), inode: Number(m[7]) });
  }
  return out;
}

/**
 * True when every byte of [uva, uva+size) is mapped shared and read-write in the process, from the same file
 * (device and inode of the region's fd) at the matching file offset. Only then may the device copy guest memory
 * through the front-end's address space (process_vm_readv/writev) instead of pread/pwrite on the fd: a proxy or any
 * other process at the end of the socket fails this check and the device keeps using the fd.
 */
export function regionMappedBy(pid: number, r: DeviceRegion, maps?: Vma[]): boolean {
  let st: fs.Stats;
  try { st = fs.fstatSync(r.fd); } catch { return false; }
  const major = (st.dev >> 8) & 0xfff, minor = (st.dev & 0xff) | ((st.dev >> 12) & 0xfff00);
  let vmas = maps;
  if (!vmas) {
    try { vmas = parseMaps(fs.readFileSync(`/proc/${pid}/maps`, 'utf8')); } catch { return false; }
  }
  const lo = r.uva, hi = r.uva + r.size;
  const parts: [number, number][] = [];
  for (const v of vmas) {
    if (v.end <= lo || v.start >= hi) continue;
    if (v.inode !== st.ino || v.major !== major || v.minor !== minor) return false;
    if (v.perms[0] !== 'r' || v.perms[1] !== 'w' || v.perms[3] !== 's') return false;
    if (v.offset - v.start !== r.offset - r.uva) return false;
    parts.push([Math.max(v.start, lo), Math.min(v.end, hi)]);
  }
  parts.sort((a, b) => a[0] - b[0]);
  let cur = lo;
  for (const [a, b] of parts) { if (a > cur) return false; cur = Math.max(cur, b); }
  return cur >= hi;
}
