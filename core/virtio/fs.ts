// virtio-fs payload decoder: FUSE requests (fuse_in_header and per-opcode arguments) and, once used, their replies (fuse_out_header and results).
import type { GuestMemoryReader } from '../memory/guestMemory';
import { gather, hexPreview } from './gather';
import type { Chain } from './ring';

/** FUSE opcodes (include/uapi/linux/fuse.h), names without the FUSE_ prefix. */
export const FUSE_OPCODES: Record<number, string> = {
  1: 'LOOKUP', 2: 'FORGET', 3: 'GETATTR', 4: 'SETATTR', 5: 'READLINK', 6: 'SYMLINK', 8: 'MKNOD', 9: 'MKDIR',
  10: 'UNLINK', 11: 'RMDIR', 12: 'RENAME', 13: 'LINK', 14: 'OPEN', 15: 'READ', 16: 'WRITE', 17: 'STATFS',
  18: 'RELEASE', 20: 'FSYNC', 21: 'SETXATTR', 22: 'GETXATTR', 23: 'LISTXATTR', 24: 'REMOVEXATTR', 25: 'FLUSH',
  26: 'INIT', 27: 'OPENDIR', 28: 'READDIR', 29: 'RELEASEDIR', 30: 'FSYNCDIR', 31: 'GETLK', 32: 'SETLK', 33: 'SETLKW',
  34: 'ACCESS', 35: 'CREATE', 36: 'INTERRUPT', 37: 'BMAP', 38: 'DESTROY', 39: 'IOCTL', 40: 'POLL', 41: 'NOTIFY_REPLY',
  42: 'BATCH_FORGET', 43: 'FALLOCATE', 44: 'READDIRPLUS', 45: 'RENAME2', 46: 'LSEEK', 47: 'COPY_FILE_RANGE',
  48: 'SETUPMAPPING', 49: 'REMOVEMAPPING', 50: 'SYNCFS', 51: 'TMPFILE', 52: 'STATX', 4096: 'CUSE_INIT',
};

/** Requests the device answers with nothing (no fuse_out_header). */
const NO_REPLY = new Set([2, 36, 42]);

/** Linux errno names for the errors FUSE replies carry most. */
const ERRNO: Record<number, string> = {
  1: 'EPERM', 2: 'ENOENT', 4: 'EINTR', 5: 'EIO', 9: 'EBADF', 11: 'EAGAIN', 12: 'ENOMEM', 13: 'EACCES', 16: 'EBUSY',
  17: 'EEXIST', 18: 'EXDEV', 20: 'ENOTDIR', 21: 'EISDIR', 22: 'EINVAL', 24: 'EMFILE', 27: 'EFBIG', 28: 'ENOSPC',
  30: 'EROFS', 34: 'ERANGE', 36: 'ENAMETOOLONG', 38: 'ENOSYS', 39: 'ENOTEMPTY', 61: 'ENODATA', 95: 'EOPNOTSUPP',
};

export const FUSE_IN_HEADER_SIZE = 40;
export const FUSE_OUT_HEADER_SIZE = 16;
/** fuse_attr, fuse_entry_out (nodeid … attr), fuse_attr_out (attr_valid … attr) sizes. */
const ATTR_SIZE = 88;
const ENTRY_OUT_SIZE = 40 + ATTR_SIZE;
/** Longest name shown (NAME_MAX is 255); two names at most (RENAME, SYMLINK). */
const NAME_SHOWN = 80;
const REQUEST_READ = FUSE_IN_HEADER_SIZE + 24 + 2 * 256;

export type FsValue = number | bigint | string;

export interface FsReply {
  /** fuse_out_header.len: header plus result bytes. */
  len: number;
  /** 0 or a negative errno. */
  error: number;
  errno?: string;
  unique: bigint;
  /** Decoded results (e.g. nodeid, size, fh, written). */
  result?: Record<string, FsValue>;
  /** READ / READDIR / READLINK / GETXATTR data length and preview. */
  dataLen?: number;
  preview?: string;
}

export interface FsPayload {
  kind: 'fs';
  opcode: number;
  /** Opcode name (LOOKUP, READ, …) or `opcode N`. */
  op: string;
  unique: bigint;
  nodeid: bigint;
  /** fuse_in_header.len: the whole request, header, arguments and any WRITE data. */
  len: number;
  uid: number;
  gid: number;
  pid: number;
  /** Decoded arguments (e.g. fh, offset, size, flags). */
  args?: Record<string, FsValue>;
  /** File names the request carries (LOOKUP, CREATE, RENAME …). */
  names?: string[];
  /** WRITE: the first data bytes. */
  preview?: string;
  reply?: FsReply;
  /** Where the chain and its headers disagree (lengths, unique). Decoding goes on. */
  problems?: string[];
  summary: string;
  error?: string;
}

export interface FsDecodeOptions {
  /** Bytes of WRITE / READ data to preview as hex (default 16). */
  preview?: number;
}

const dvOf = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);

/**
 * Whether the chain's first readable bytes look like a FUSE request (used to recognise virtio-fs when the device
 * type was neither given nor inferred): a known opcode, a header length equal to the bytes the chain offers, and
 * room for a reply unless the opcode has none.
 */
export function looksLikeFuse(head: Uint8Array, chain: Chain): boolean {
  if (head.byteLength < FUSE_IN_HEADER_SIZE || chain.readable < FUSE_IN_HEADER_SIZE) return false;
  const dv = dvOf(head);
  const len = dv.getUint32(0, true), opcode = dv.getUint32(4, true);
  if (!(opcode in FUSE_OPCODES) || len !== chain.readable) return false;
  return NO_REPLY.has(opcode) ? chain.writable === 0 : chain.writable >= FUSE_OUT_HEADER_SIZE;
}

/** Decode a virtio-fs request chain (hiprio or request queue). Throws MemoryError only. */
export function decodeFsChain(mem: GuestMemoryReader, chain: Chain, opts: FsDecodeOptions = {}): FsPayload {
  const previewLen = opts.preview ?? 16;
  const req = gather(mem, chain, false, REQUEST_READ + previewLen + 1).bytes;
  if (req.byteLength < FUSE_IN_HEADER_SIZE) {
    return {
      kind: 'fs', opcode: -1, op: '?', unique: 0n, nodeid: 0n, len: 0, uid: 0, gid: 0, pid: 0,
      summary: `request without a 40-byte fuse_in_header (${chain.readable} readable bytes)`, error: 'short header',
    };
  }
  const dv = dvOf(req);
  const opcode = dv.getUint32(4, true);
  const p: FsPayload = {
    kind: 'fs', opcode, op: FUSE_OPCODES[opcode] ?? `opcode ${opcode}`, len: dv.getUint32(0, true),
    unique: dv.getBigUint64(8, true), nodeid: dv.getBigUint64(16, true),
    uid: dv.getUint32(24, true), gid: dv.getUint32(28, true), pid: dv.getUint32(32, true), summary: '',
  };
  const problems: string[] = [];
  if (p.len !== chain.readable) problems.push(`fuse_in_header.len ${p.len} but the chain offers ${chain.readable} readable bytes`);
  decodeArgs(p, req.subarray(FUSE_IN_HEADER_SIZE), previewLen);
  if (chain.state === 'used') decodeReply(mem, chain, p, problems, previewLen);
  if (problems.length) p.problems = problems;
  p.summary = summarize(p, chain);
  return p;
}

/** NUL-terminated strings from `b`, at most `count`. */
function names(b: Uint8Array, count: number): string[] {
  const out: string[] = [];
  let o = 0;
  while (out.length < count && o < b.byteLength) {
    let end = b.indexOf(0, o);
    if (end < 0) end = b.byteLength;
    out.push(Buffer.from(b.subarray(o, end)).toString('utf8'));
    o = end + 1;
  }
  return out;
}

function decodeArgs(p: FsPayload, a: Uint8Array, previewLen: number): void {
  const dv = dvOf(a);
  const has = (n: number): boolean => a.byteLength >= n;
  const args: Record<string, FsValue> = {};
  let rest: Uint8Array | undefined;
  let nameCount = 0;
  switch (p.opcode) {
    case 1: case 10: case 11: case 24: rest = a; nameCount = 1; break; // LOOKUP, UNLINK, RMDIR, REMOVEXATTR
    case 6: rest = a; nameCount = 2; break; // SYMLINK: name, target
    case 2: if (has(8)) args.nlookup = dv.getBigUint64(0, true); break;
    case 3: if (has(16)) { args.getattrFlags = dv.getUint32(0, true); if (args.getattrFlags & 1) args.fh = dv.getBigUint64(8, true); } break;
    case 4: if (has(16)) {
      const valid = dv.getUint32(0, true);
      args.valid = `0x${valid.toString(16)}`;
      if (valid & 8 && has(24)) args.size = dv.getBigUint64(16, true); // FATTR_SIZE
      if (valid & 1 && has(72)) args.mode = `0${dv.getUint32(68, true).toString(8)}`; // FATTR_MODE
    } break;
    case 8: if (has(16)) { args.mode = `0${dv.getUint32(0, true).toString(8)}`; args.rdev = dv.getUint32(4, true); rest = a.subarray(16); nameCount = 1; } break;
    case 9: if (has(8)) { args.mode = `0${dv.getUint32(0, true).toString(8)}`; rest = a.subarray(8); nameCount = 1; } break;
    case 12: if (has(8)) { args.newdir = dv.getBigUint64(0, true); rest = a.subarray(8); nameCount = 2; } break;
    case 45: if (has(16)) { args.newdir = dv.getBigUint64(0, true); args.flags = dv.getUint32(8, true); rest = a.subarray(16); nameCount = 2; } break;
    case 13: if (has(8)) { args.oldnodeid = dv.getBigUint64(0, true); rest = a.subarray(8); nameCount = 1; } break;
    case 14: case 27: if (has(8)) { args.flags = `0x${dv.getUint32(0, true).toString(16)}`; } break;
    case 15: case 28: case 44: if (has(24)) { args.fh = dv.getBigUint64(0, true); args.offset = dv.getBigUint64(8, true); args.size = dv.getUint32(16, true); } break;
    case 16: if (has(24)) {
      args.fh = dv.getBigUint64(0, true); args.offset = dv.getBigUint64(8, true); args.size = dv.getUint32(16, true);
      const data = a.subarray(40);
      if (previewLen > 0 && data.byteLength > 0) p.preview = hexPreview(data, previewLen);
    } break;
    case 18: case 29: case 25: if (has(8)) args.fh = dv.getBigUint64(0, true); break;
    case 20: case 30: if (has(12)) { args.fh = dv.getBigUint64(0, true); args.datasync = dv.getUint32(8, true) & 1; } break;
    case 21: if (has(8)) { args.size = dv.getUint32(0, true); args.flags = dv.getUint32(4, true); rest = a.subarray(8); nameCount = 1; } break;
    case 22: if (has(8)) { args.size = dv.getUint32(0, true); rest = a.subarray(8); nameCount = 1; } break;
    case 23: if (has(4)) args.size = dv.getUint32(0, true); break;
    case 26: if (has(16)) {
      args.major = dv.getUint32(0, true); args.minor = dv.getUint32(4, true);
      args.maxReadahead = dv.getUint32(8, true); args.flags = `0x${dv.getUint32(12, true).toString(16)}`;
    } break;
    case 34: if (has(4)) args.mask = dv.getUint32(0, true); break;
    case 35: if (has(16)) {
      args.flags = `0x${dv.getUint32(0, true).toString(16)}`; args.mode = `0${dv.getUint32(4, true).toString(8)}`;
      rest = a.subarray(16); nameCount = 1;
    } break;
    case 36: if (has(8)) args.interrupts = dv.getBigUint64(0, true); break;
    case 42: if (has(8)) args.count = dv.getUint32(0, true); break;
    case 43: if (has(28)) { args.fh = dv.getBigUint64(0, true); args.offset = dv.getBigUint64(8, true); args.length = dv.getBigUint64(16, true); args.mode = dv.getUint32(24, true); } break;
    case 46: if (has(20)) { args.fh = dv.getBigUint64(0, true); args.offset = dv.getBigUint64(8, true); args.whence = dv.getUint32(16, true); } break;
    case 48: if (has(40)) { args.fh = dv.getBigUint64(0, true); args.foffset = dv.getBigUint64(8, true); args.length = dv.getBigUint64(16, true); args.moffset = dv.getBigUint64(32, true); } break;
  }
  if (Object.keys(args).length) p.args = args;
  if (rest && nameCount) {
    const n = names(rest, nameCount);
    if (n.length) p.names = n;
  }
}

function decodeReply(mem: GuestMemoryReader, chain: Chain, p: FsPayload, problems: string[], previewLen: number): void {
  if (NO_REPLY.has(p.opcode)) return;
  const used = chain.usedLen ?? 0;
  if (used < FUSE_OUT_HEADER_SIZE) {
    problems.push(`used length ${used} is shorter than a fuse_out_header`);
    return;
  }
  const want = FUSE_OUT_HEADER_SIZE + Math.max(ENTRY_OUT_SIZE + 16, previewLen + 1);
  const b = gather(mem, chain, true, want, used).bytes;
  if (b.byteLength < FUSE_OUT_HEADER_SIZE) {
    problems.push(`used length ${used} but the device-writable buffers hold only ${chain.writable} bytes, less than a fuse_out_header`);
    return;
  }
  const dv = dvOf(b);
  const error = dv.getInt32(4, true);
  const r: FsReply = { len: dv.getUint32(0, true), error, unique: dv.getBigUint64(8, true) };
  if (error < 0) r.errno = ERRNO[-error] ?? `errno ${-error}`;
  if (r.unique !== p.unique) problems.push(`reply unique ${r.unique} does not match request unique ${p.unique}`);
  if (r.len !== used) problems.push(`fuse_out_header.len ${r.len} but the device wrote ${used} bytes`);
  const res = b.subarray(FUSE_OUT_HEADER_SIZE);
  const rv = dvOf(res);
  const has = (n: number): boolean => res.byteLength >= n;
  const out: Record<string, FsValue> = {};
  if (error === 0) {
    switch (p.opcode) {
      case 1: case 6: case 8: case 9: case 13: case 35:
        if (has(ENTRY_OUT_SIZE)) { out.nodeid = rv.getBigUint64(0, true); attr(rv, 40, out); }
        if (p.opcode === 35 && has(ENTRY_OUT_SIZE + 8)) out.fh = rv.getBigUint64(ENTRY_OUT_SIZE, true);
        break;
      case 3: case 4: if (has(16 + ATTR_SIZE)) attr(rv, 16, out); break;
      case 14: case 27: if (has(8)) out.fh = rv.getBigUint64(0, true); break;
      case 16: if (has(4)) out.written = rv.getUint32(0, true); break;
      case 26: if (has(24)) {
        out.major = rv.getUint32(0, true); out.minor = rv.getUint32(4, true);
        out.flags = `0x${rv.getUint32(12, true).toString(16)}`; out.maxWrite = rv.getUint32(20, true);
      } break;
      case 17: if (has(8)) out.blocks = rv.getBigUint64(0, true); break;
      case 46: if (has(8)) out.offset = rv.getBigUint64(0, true); break;
      case 5: case 15: case 22: case 23: case 28: case 44: {
        r.dataLen = Math.max(0, used - FUSE_OUT_HEADER_SIZE);
        if (previewLen > 0 && res.byteLength > 0) r.preview = hexPreview(res, previewLen);
        break;
      }
    }
  }
  if (Object.keys(out).length) r.result = out;
  p.reply = r;
}

/** fuse_attr at `o`: ino, size, mode. */
function attr(dv: DataView, o: number, out: Record<string, FsValue>): void {
  out.ino = dv.getBigUint64(o, true);
  out.size = dv.getBigUint64(o + 8, true);
  out.mode = `0${dv.getUint32(o + 60, true).toString(8)}`;
}

/** A name as a JSON string, escapes included, cut at NAME_SHOWN characters. */
function quote(name: string): string {
  let out = '';
  for (const ch of name) {
    const e = JSON.stringify(ch).slice(1, -1);
    if (out.length + e.length > NAME_SHOWN) return `"${out}…"`;
    out += e;
  }
  return `"${out}"`;
}

function summarize(p: FsPayload, chain: Chain): string {
  let s = `${p.op} unique=${p.unique}`;
  if (p.nodeid) s += ` nodeid=${p.nodeid}`;
  const a = p.args ?? {};
  if (p.opcode === 26) s += ` ${a.major}.${a.minor}`;
  else for (const k of ['fh', 'offset', 'size', 'valid', 'flags', 'mode', 'newdir', 'nlookup', 'count']) if (a[k] !== undefined) s += ` ${k}=${a[k]}`;
  if (p.names) s += ` ${p.names.map(quote).join(p.opcode === 6 ? ' -> ' : ' ')}`;
  if (chain.state !== 'used') return `${s}${NO_REPLY.has(p.opcode) ? '' : ' (in flight)'}`;
  const r = p.reply;
  if (!r) return NO_REPLY.has(p.opcode) ? s : `${s} → ?`;
  if (r.error) return `${s} → ${r.errno}`;
  const o = r.result ?? {};
  if (p.opcode === 26) return `${s} → ${o.major}.${o.minor} max_write=${o.maxWrite}`;
  const parts: string[] = [];
  for (const k of ['nodeid', 'fh', 'size', 'mode', 'written', 'offset']) if (o[k] !== undefined) parts.push(`${k}=${o[k]}`);
  if (r.dataLen !== undefined) parts.push(`${r.dataLen} bytes`);
  return `${s} → ${parts.length ? parts.join(' ') : 'OK'}`;
}
