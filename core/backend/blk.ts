// virtio-blk device model on a raw image file (virtio 1.2 5.2): IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES; read-only option.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PROTOCOL_BIT } from '../protocol/features';
import { VIRTIO_F_VERSION_1, VIRTIO_F_RING_PACKED, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, bit, type Device, type DeviceContext } from './device';
import { chainCopyCheck, readChain, writeChain, type Chain, type VirtQueue } from './virtqueue';
import { DeviceMemoryError } from './memory';

export const BLK_F = { SIZE_MAX: 1, SEG_MAX: 2, GEOMETRY: 4, RO: 5, BLK_SIZE: 6, FLUSH: 9, TOPOLOGY: 10, CONFIG_WCE: 11, MQ: 12, DISCARD: 13, WRITE_ZEROES: 14 } as const;
export const BLK_T = { IN: 0, OUT: 1, FLUSH: 4, GET_ID: 8, DISCARD: 11, WRITE_ZEROES: 13 } as const;
export const BLK_S = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;
export const SECTOR = 512;
export const BLK_ID_BYTES = 20;
/** seg_max offered in the config (Linux subtracts the header and status descriptors). */
export const SEG_MAX = 126;
/** Largest request the device accepts (bytes of data); larger ones get IOERR. */
export const MAX_REQUEST = 64 << 20;
/** DISCARD / WRITE_ZEROES limits offered in the config. */
export const MAX_DISCARD_SECTORS = 1 << 21; // 1 GiB
export const MAX_WRITE_ZEROES_SECTORS = 1 << 16; // 32 MiB
const CHUNK = 128 << 10;
/** Longest one drain runs before the pump serves other fds again. */
const SLICE_US = 20_000;

export interface BlkOptions {
  image: string;
  readonly?: boolean;
  numQueues?: number;
  /** GET_ID string (at most 20 bytes); default "vhost-lens:<image basename>". */
  serial?: string;
  /** Busy-poll the ring this long after it runs dry (kicks stay disabled meanwhile); 0 = purely kick-driven. */
  pollUs?: number;
}

export interface BlkCounters { reads: number; writes: number; flushes: number; getIds: number; discards: number; writeZeroes: number; ioerr: number; unsupp: number; bytesRead: number; bytesWritten: number; bad: number }

/**
 * The virtio-blk device. Requests are validated in full (sector range inside the image, data length a multiple of
 * 512, every buffer inside guest memory) before any byte of the image is read or written.
 */
export class BlkDevice implements Device {
  readonly kind = 'blk';
  readonly features: bigint;
  readonly protocolFeatures: bigint;
  readonly vrings: number;
  readonly queueNum: number;
  readonly capacity: number; // sectors
  readonly readonly: boolean;
  readonly counters: BlkCounters = { reads: 0, writes: 0, flushes: 0, getIds: 0, discards: 0, writeZeroes: 0, ioerr: 0, unsupp: 0, bytesRead: 0, bytesWritten: 0, bad: 0 };
  private fd: number;
  private ctx?: DeviceContext;
  private readonly hdr = Buffer.alloc(16);
  private readonly seg = Buffer.alloc(16);
  private readonly status = Buffer.alloc(1);
  private scratch = Buffer.alloc(CHUNK);
  private readonly id: Buffer;

  constructor(readonly opts: BlkOptions) {
    this.readonly = !!opts.readonly;
    try {
      this.fd = fs.openSync(opts.image, this.readonly ? 'r' : 'r+');
    } catch (e) {
      throw new Error(`cannot open image ${opts.image}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    const st = fs.fstatSync(this.fd);
    if (!st.isFile() && !st.isBlockDevice()) { fs.closeSync(this.fd); throw new Error(`image ${opts.image} is not a regular file`); }
    this.capacity = Math.floor(st.size / SECTOR);
    const nq = opts.numQueues ?? 1;
    if (!(nq >= 1 && nq <= 64)) { fs.closeSync(this.fd); throw new Error(`numQueues must be 1..64, got ${nq}`); }
    this.vrings = nq;
    this.queueNum = nq;
    let f = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_RING_PACKED) | bit(VIRTIO_RING_F_INDIRECT_DESC) | bit(VIRTIO_RING_F_EVENT_IDX)
      | bit(BLK_F.SEG_MAX) | bit(BLK_F.BLK_SIZE) | bit(BLK_F.FLUSH) | bit(BLK_F.MQ) | bit(BLK_F.DISCARD) | bit(BLK_F.WRITE_ZEROES);
    if (this.readonly) f |= bit(BLK_F.RO);
    this.features = f;
    this.protocolFeatures = bit(PROTOCOL_BIT.MQ) | bit(PROTOCOL_BIT.REPLY_ACK) | bit(PROTOCOL_BIT.CONFIG) | bit(PROTOCOL_BIT.CONFIGURE_MEM_SLOTS);
    const serial = Buffer.from(opts.serial ?? `vhost-lens:${path.basename(opts.image)}`);
    this.id = Buffer.alloc(BLK_ID_BYTES);
    serial.copy(this.id, 0, 0, BLK_ID_BYTES);
  }

  /** virtio_blk_config (virtio 1.2 5.2.4), 60 bytes. */
  config(): Uint8Array {
    const b = Buffer.alloc(60);
    b.writeBigUInt64LE(BigInt(this.capacity), 0);
    b.writeUInt32LE(0, 8); // size_max (not offered)
    b.writeUInt32LE(SEG_MAX, 12);
    b.writeUInt32LE(SECTOR, 20); // blk_size
    b.writeUInt16LE(this.queueNum, 34); // num_queues
    b.writeUInt32LE(MAX_DISCARD_SECTORS, 36);
    b.writeUInt32LE(1, 40); // max_discard_seg
    b.writeUInt32LE(1, 44); // discard_sector_alignment
    b.writeUInt32LE(MAX_WRITE_ZEROES_SECTORS, 48);
    b.writeUInt32LE(1, 52); // max_write_zeroes_seg
    b[56] = 0; // write_zeroes_may_unmap
    return b;
  }

  attach(ctx: DeviceContext): void { this.ctx = ctx; }
  detach(): void { this.ctx = undefined; }
  setFeatures(): void { /* nothing device-specific depends on them */ }

  close(): void {
    try { fs.closeSync(this.fd); } catch { /* closed already */ }
    this.fd = -1;
  }

  describe(): Record<string, number | string> {
    return { image: this.opts.image, capacitySectors: this.capacity, readonly: String(this.readonly), ...this.counters };
  }

  kick(q: VirtQueue): void {
    const r = q.drain((chains) => {
      for (const c of chains) q.use(c, this.request(q, c));
      return true;
    }, 64, this.opts.pollUs ?? 0, SLICE_US);
    if (r.yielded) this.ctx!.rerun(q);
  }

  /** Serve one request; returns the used length (bytes written into the chain). */
  private request(q: VirtQueue, c: Chain): number {
    const ctx = this.ctx!;
    const bad = (why: string): number => {
      this.counters.bad++;
      ctx.report(`vring ${q.index} request ${c.head}: ${why}`);
      return 0;
    };
    if (c.error) return bad(c.error);
    if (c.readable < 16) return bad(`request header needs 16 readable bytes, the chain has ${c.readable}`);
    if (c.writable < 1) return bad('no writable status byte');
    const why = chainCopyCheck(ctx.mem, c);
    // The status byte is the chain's last writable byte: if it cannot be written, nothing can be reported.
    const statusOk = this.statusReachable(c);
    if (why && !statusOk) return bad(`${why}; the status byte is unreachable`);
    try {
      readChain(ctx.mem, c, 0, this.hdr, 0, 16);
    } catch (e) {
      bad((e as Error).message);
      return statusOk ? this.finish(c, BLK_S.IOERR, 0) : 0;
    }
    if (why) { bad(why); return this.finish(c, BLK_S.IOERR, 0); }
    const type = this.hdr.readUInt32LE(0);
    const sectorHi = this.hdr.readUInt32LE(12), sectorLo = this.hdr.readUInt32LE(8);
    const sector = sectorHi >= 0x200000 ? Infinity : sectorHi * 4294967296 + sectorLo;
    try {
      switch (type) {
        case BLK_T.IN: return this.rw(q, c, sector, false);
        case BLK_T.OUT: return this.rw(q, c, sector, true);
        case BLK_T.FLUSH:
          this.counters.flushes++;
          if (!this.readonly) fs.fdatasyncSync(this.fd);
          return this.finish(c, BLK_S.OK, 0);
        case BLK_T.GET_ID: {
          this.counters.getIds++;
          const n = Math.min(BLK_ID_BYTES, c.writable - 1);
          writeChain(ctx.mem, c, 0, this.id, 0, n);
          return this.finish(c, BLK_S.OK, n);
        }
        case BLK_T.DISCARD: case BLK_T.WRITE_ZEROES: return this.ranges(q, c, type);
        default:
          this.counters.unsupp++;
          return this.finish(c, BLK_S.UNSUPP, 0);
      }
    } catch (e) {
      if (e instanceof DeviceMemoryError) bad(e.message);
      else ctx.report(`vring ${q.index} request ${c.head}: image I/O failed: ${(e as Error).message}`);
      return this.finish(c, BLK_S.IOERR, 0);
    }
  }

  private statusReachable(c: Chain): boolean {
    for (let i = c.n - 1; i >= 0; i--) {
      if (!c.write[i] || c.len[i] === 0) continue;
      const a = c.addr[i] + c.len[i] - 1;
      return !Number.isNaN(a) && this.ctx!.mem.check(a, 1) === undefined;
    }
    return false;
  }

  /** Write the status byte; used length = data bytes written + 1. */
  private finish(c: Chain, status: number, dataWritten: number): number {
    if (status === BLK_S.IOERR) this.counters.ioerr++;
    this.status[0] = status;
    writeChain(this.ctx!.mem, c, c.writable - 1, this.status, 0, 1);
    return dataWritten + 1;
  }

  private rw(q: VirtQueue, c: Chain, sector: number, write: boolean): number {
    const ctx = this.ctx!;
    const len = write ? c.readable - 16 : c.writable - 1;
    const fail = (why: string): number => { ctx.report(`vring ${q.index} ${write ? 'OUT' : 'IN'} request ${c.head}: ${why}`); return this.finish(c, BLK_S.IOERR, 0); };
    if (write && this.readonly) { this.counters.ioerr++; return this.finish(c, BLK_S.IOERR, 0); }
    if (len % SECTOR) return fail(`data length ${len} is not a multiple of ${SECTOR}`);
    if (len > MAX_REQUEST) return fail(`data length ${len} exceeds the ${MAX_REQUEST}-byte request limit`);
    if (!(sector <= this.capacity) || sector + len / SECTOR > this.capacity) return fail(`sectors ${sector}+${len / SECTOR} beyond the image (${this.capacity} sectors)`);
    const base = sector * SECTOR;
    // The staging buffer lets a whole request move in one process_vm_readv/writev when the fast path is on.
    const staging = ctx.mem.staging;
    const buf = staging && staging.length >= CHUNK ? staging : this.scratch;
    for (let done = 0; done < len;) {
      const n = Math.min(CHUNK, len - done);
      if (write) {
        readChain(ctx.mem, c, 16 + done, buf, 0, n);
        this.pwrite(buf, n, base + done);
      } else {
        this.pread(buf, n, base + done);
        writeChain(ctx.mem, c, done, buf, 0, n);
      }
      done += n;
    }
    if (write) { this.counters.writes++; this.counters.bytesWritten += len; } else { this.counters.reads++; this.counters.bytesRead += len; }
    return this.finish(c, BLK_S.OK, write ? 0 : len);
  }

  /** DISCARD (a hint: validated, then nothing to do on a raw file) and WRITE_ZEROES (zeros written). */
  private ranges(q: VirtQueue, c: Chain, type: number): number {
    const ctx = this.ctx!;
    const what = type === BLK_T.DISCARD ? 'DISCARD' : 'WRITE_ZEROES';
    const fail = (why: string): number => { ctx.report(`vring ${q.index} ${what} request ${c.head}: ${why}`); return this.finish(c, BLK_S.IOERR, 0); };
    if (this.readonly) { this.counters.ioerr++; return this.finish(c, BLK_S.IOERR, 0); }
    const bytes = c.readable - 16;
    if (bytes === 0 || bytes % 16) return fail(`segment list of ${bytes} bytes (16 per segment)`);
    if (bytes / 16 > 1) return this.finish(c, BLK_S.UNSUPP, 0); // max_*_seg = 1
    readChain(ctx.mem, c, 16, this.seg, 0, 16);
    const hi = this.seg.readUInt32LE(4);
    const sector = hi >= 0x200000 ? Infinity : hi * 4294967296 + this.seg.readUInt32LE(0);
    const count = this.seg.readUInt32LE(8), flags = this.seg.readUInt32LE(12);
    if (flags & ~1) return this.finish(c, BLK_S.UNSUPP, 0);
    const max = type === BLK_T.DISCARD ? MAX_DISCARD_SECTORS : MAX_WRITE_ZEROES_SECTORS;
    if (count > max) return fail(`${count} sectors exceed the ${max} offered`);
    if (!(sector <= this.capacity) || sector + count > this.capacity) return fail(`sectors ${sector}+${count} beyond the image (${this.capacity} sectors)`);
    if (type === BLK_T.DISCARD) { this.counters.discards++; return this.finish(c, BLK_S.OK, 0); }
    this.counters.writeZeroes++;
    const zero = Buffer.alloc(Math.min(CHUNK, count * SECTOR));
    for (let done = 0; done < count * SECTOR;) {
      const n = Math.min(zero.length, count * SECTOR - done);
      this.pwrite(zero, n, sector * SECTOR + done);
      done += n;
    }
    return this.finish(c, BLK_S.OK, 0);
  }

  private pread(buf: Buffer, len: number, pos: number): void {
    for (let done = 0; done < len;) {
      const n = fs.readSync(this.fd, buf, done, len - done, pos + done);
      if (n <= 0) { buf.fill(0, done, len); return; } // past the end of a file shorter than a sector multiple
      done += n;
    }
  }

  private pwrite(buf: Buffer, len: number, pos: number): void {
    for (let done = 0; done < len;) {
      const n = fs.writeSync(this.fd, buf, done, len - done, pos + done);
      if (n <= 0) throw new Error(`short write at offset ${pos + done}`);
      done += n;
    }
  }
}
