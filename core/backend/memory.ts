// Device-side guest memory: bounds-checked pread/pwrite on region fds, or one process_vm_readv/writev per scatter list where proven safe; no mmap.
import * as fs from 'node:fs';
import type { RemoteCopier } from '../sys/native';
import { regionMappedBy, parseMaps } from './remote';

/** One region of the front-end's memory table, as the device keeps it (addresses below 2^53, else refused). */
export interface DeviceRegion {
  gpa: number;
  uva: number;
  size: number;
  /** Offset of the region's first byte in the fd. */
  offset: number;
  fd: number;
}

export class DeviceMemoryError extends Error {
  override readonly name = 'DeviceMemoryError';
  constructor(readonly space: 'gpa' | 'uva', readonly addr: number, readonly len: number, detail: string) {
    super(`${space.toUpperCase()} 0x${addr.toString(16)}+${len}: ${detail}`);
  }
}

const SAFE = Number.MAX_SAFE_INTEGER;
const bigToNum = (b: bigint): number => (b >= 0n && b <= BigInt(SAFE) ? Number(b) : NaN);

/** Convert a memory-table entry; throws with a reason when it cannot be used. */
export function deviceRegion(r: { guestPhysAddr: bigint; memorySize: bigint; userspaceAddr: bigint; mmapOffset: bigint }, fd: number): DeviceRegion {
  const gpa = bigToNum(r.guestPhysAddr), size = bigToNum(r.memorySize), uva = bigToNum(r.userspaceAddr), offset = bigToNum(r.mmapOffset);
  if ([gpa, size, uva, offset].some((x) => Number.isNaN(x)) || gpa + size > SAFE || uva + size > SAFE || offset + size > SAFE) {
    throw new Error(`memory region gpa 0x${r.guestPhysAddr.toString(16)} size 0x${r.memorySize.toString(16)}: addresses beyond 2^53 are not supported`);
  }
  if (size === 0) throw new Error(`memory region gpa 0x${gpa.toString(16)} has size 0`);
  return { gpa, uva, size, offset, fd };
}

/**
 * Guest memory as the device sees it: reads and writes by guest-physical address, each inside one region
 * (or contiguous neighbours), through the region fds. Every access is checked before any byte moves.
 */
export class DeviceMemory {
  private regions: DeviceRegion[] = [];
  private last = 0;
  /** Bumped on every change of the table (rings re-translate their addresses). */
  generation = 0;
  reads = 0;
  writes = 0;
  /** Copies done through the front-end's address space, and attempts that fell back to the fds. */
  remoteOps = 0;
  remoteFallbacks = 0;
  private remote?: { pid: number; copier: RemoteCopier };
  private remoteOk: boolean[] = [];
  private uvaScratch: number[] = [];
  private segA: number[] = [];
  private segL: number[] = [];

  /**
   * Copy through the front-end's own mapping of guest memory (process_vm_readv/writev, one call for a whole
   * scatter list) wherever /proc/PID/maps proves the mapping is the region's file at its offset.
   */
  enableRemote(pid: number, copier: RemoteCopier): void {
    this.remote = { pid, copier };
    this.reverify();
  }

  /** The staging buffer: reads into it and writes from it may take the one-call path. */
  get staging(): Buffer | undefined { return this.remote?.copier.staging; }
  /** How many regions the fast path covers. */
  get remoteRegions(): number { return this.remoteOk.filter(Boolean).length; }

  private reverify(): void {
    if (!this.remote) return;
    let maps;
    try { maps = parseMaps(fs.readFileSync(`/proc/${this.remote.pid}/maps`, 'utf8')); } catch { this.remoteOk = this.regions.map(() => false); return; }
    this.remoteOk = this.regions.map((r) => regionMappedBy(this.remote!.pid, r, maps));
  }

  get list(): readonly DeviceRegion[] { return this.regions; }
  get empty(): boolean { return this.regions.length === 0; }

  set(regions: DeviceRegion[]): void {
    for (let i = 0; i < regions.length; i++) {
      for (let j = 0; j < i; j++) {
        const a = regions[i], b = regions[j];
        if (a.gpa < b.gpa + b.size && b.gpa < a.gpa + a.size) throw new Error(`memory regions overlap in guest-physical space (0x${a.gpa.toString(16)}, 0x${b.gpa.toString(16)})`);
      }
    }
    this.regions = regions.slice();
    this.last = 0;
    this.generation++;
    this.reverify();
  }

  add(r: DeviceRegion): void { this.set([...this.regions, r]); }

  /** Remove the region matching gpa, uva and size; returns it (its fd is the caller's to close). */
  remove(gpa: number, uva: number, size: number): DeviceRegion | undefined {
    const i = this.regions.findIndex((r) => r.gpa === gpa && r.uva === uva && r.size === size);
    if (i < 0) return undefined;
    const [r] = this.regions.splice(i, 1);
    this.last = 0;
    this.generation++;
    this.reverify();
    return r;
  }

  clear(): DeviceRegion[] {
    const old = this.regions;
    this.regions = [];
    this.remoteOk = [];
    this.generation++;
    return old;
  }

  private find(gpa: number): DeviceRegion | undefined {
    const rs = this.regions, n = rs.length;
    for (let k = 0, i = this.last; k < n; k++, i = i + 1 === n ? 0 : i + 1) {
      const r = rs[i];
      if (gpa >= r.gpa && gpa < r.gpa + r.size) { this.last = i; return r; }
    }
    return undefined;
  }

  /** Front-end virtual address (SET_VRING_ADDR) to guest-physical, for a range that must lie in one region. */
  uvaToGpa(uva: number, len: number): number {
    for (const r of this.regions) {
      if (uva >= r.uva && uva < r.uva + r.size) {
        if (uva + len > r.uva + r.size) throw new DeviceMemoryError('uva', uva, len, 'runs past the end of its memory region');
        return r.gpa + (uva - r.uva);
      }
    }
    throw new DeviceMemoryError('uva', uva, len, 'address is in no memory region');
  }

  /** Undefined when [gpa, gpa+len) is readable and writable, else the reason. */
  check(gpa: number, len: number): string | undefined {
    if (!(len >= 0) || !Number.isSafeInteger(len)) return 'invalid length';
    if (!Number.isSafeInteger(gpa) || gpa < 0 || gpa + len > SAFE) return 'address out of range';
    let cur = gpa, left = len;
    for (let guard = 0; guard <= this.regions.length; guard++) {
      const r = this.find(cur);
      if (!r) return cur === gpa ? 'address is in no memory region' : 'access runs past the end of its memory region';
      const avail = r.gpa + r.size - cur;
      if (left <= avail) return undefined;
      left -= avail;
      cur += avail;
    }
    return 'access runs past the end of its memory region';
  }

  /** Gather segments (guest-physical address, length) into dst[dstOff..], contiguously. Throws DeviceMemoryError. */
  readSegs(addrs: ArrayLike<number>, lens: ArrayLike<number>, count: number, dst: Uint8Array, dstOff: number): void {
    if (this.remote && dst === this.remote.copier.staging && count > 1 && this.remoteCopy(false, addrs, lens, count, dstOff)) return;
    for (let i = 0, off = dstOff; i < count; off += lens[i], i++) this.read(addrs[i], dst, off, lens[i]);
  }

  /** Scatter src[srcOff..] over segments. Throws DeviceMemoryError. */
  writeSegs(addrs: ArrayLike<number>, lens: ArrayLike<number>, count: number, src: Uint8Array, srcOff: number): void {
    if (this.remote && src === this.remote.copier.staging && count > 1 && this.remoteCopy(true, addrs, lens, count, srcOff)) return;
    for (let i = 0, off = srcOff; i < count; off += lens[i], i++) this.write(addrs[i], src, off, lens[i]);
  }

  /** Segment scratch lists for callers that build a scatter list (reused: valid until the next call). */
  segs(): { addrs: number[]; lens: number[] } { this.segA.length = 0; this.segL.length = 0; return { addrs: this.segA, lens: this.segL }; }

  private remoteCopy(write: boolean, addrs: ArrayLike<number>, lens: ArrayLike<number>, count: number, off: number): boolean {
    const uvas = this.uvaScratch;
    uvas.length = count;
    let total = 0;
    for (let i = 0; i < count; i++) {
      const a = addrs[i], l = lens[i];
      const r = this.find(a);
      if (!r || !this.remoteOk[this.last] || a + l > r.gpa + r.size) return false;
      uvas[i] = r.uva + (a - r.gpa);
      total += l;
    }
    const n = this.remote!.copier.copy(write, uvas, lens, count, off);
    if (n === total) { this.remoteOps++; return true; }
    this.remoteFallbacks++;
    return false;
  }

  read(gpa: number, dst: Uint8Array, dstOff: number, len: number): void {
    this.access(gpa, dst, dstOff, len, false);
  }

  write(gpa: number, src: Uint8Array, srcOff: number, len: number): void {
    this.access(gpa, src, srcOff, len, true);
  }

  private access(gpa: number, buf: Uint8Array, off: number, len: number, write: boolean): void {
    if (len === 0) return;
    // Fast path: one region.
    const r0 = this.find(gpa);
    if (r0 && gpa + len <= r0.gpa + r0.size && len > 0) {
      this.io(r0, gpa - r0.gpa, buf, off, len, write, gpa);
      return;
    }
    const why = this.check(gpa, len);
    if (why) throw new DeviceMemoryError('gpa', gpa, len, why);
    let cur = gpa, done = 0;
    while (done < len) {
      const r = this.find(cur)!;
      const n = Math.min(len - done, r.gpa + r.size - cur);
      this.io(r, cur - r.gpa, buf, off + done, n, write, gpa);
      done += n;
      cur += n;
    }
  }

  private io(r: DeviceRegion, inRegion: number, buf: Uint8Array, off: number, len: number, write: boolean, addr: number): void {
    let done = 0;
    while (done < len) {
      let n: number;
      try {
        n = write
          ? fs.writeSync(r.fd, buf, off + done, len - done, r.offset + inRegion + done)
          : fs.readSync(r.fd, buf, off + done, len - done, r.offset + inRegion + done);
      } catch (e) {
        throw new DeviceMemoryError('gpa', addr, len, `${write ? 'pwrite' : 'pread'} on fd ${r.fd}: ${(e as Error).message}`);
      }
      if (n <= 0) throw new DeviceMemoryError('gpa', addr, len, `short ${write ? 'write' : 'read'} on fd ${r.fd}`);
      done += n;
    }
    if (write) this.writes++; else this.reads++;
  }
}
