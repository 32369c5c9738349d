// ffi-rs implementation of the native interface (x86_64 Linux): one FFI call per operation, staging in a fixed scratch area.
import * as fs from 'node:fs';
import { FdLedger, type FdKind } from '../sys/ledger';
import { NativeError, type Native, type RecvResult, type ListenOptions, type FdInfo, type EpollEvent, type RemoteCopier } from '../sys/native';

// ---- ffi-rs binding: the platform package's raw `load` skips the wrapper's per-call parameter rewriting.
interface Binding {
  open(p: { library: string; path: string }): void;
  load(p: object): any;
  DataType: Record<string, number>;
  FFITypeTag: Record<string, number>;
}
function binding(): Binding {
  try {
    return require('@yuuang/ffi-rs-linux-x64-gnu') as Binding;
  } catch {
    return require('ffi-rs') as Binding;
  }
}
const nb = binding();
const T = nb.DataType;
nb.open({ library: 'libc', path: 'libc.so.6' });

interface Call { paramsValue: unknown[] }
function fn(funcName: string, retType: number, paramsType: number[]): Call {
  return { library: 'libc', funcName, retType, paramsType, paramsValue: new Array(paramsType.length).fill(0), freeResultMemory: false } as Call;
}
const I32 = T.I32, I64 = T.I64, STR = T.String;
const F = {
  socket: fn('socket', I32, [I32, I32, I32]),
  bind: fn('bind', I32, [I32, I64, I32]),
  listen: fn('listen', I32, [I32, I32]),
  connect: fn('connect', I32, [I32, I64, I32]),
  accept4: fn('accept4', I32, [I32, I64, I64, I32]),
  recvmsg: fn('recvmsg', I64, [I32, I64, I32]),
  sendmsg: fn('sendmsg', I64, [I32, I64, I32]),
  recv: fn('recv', I64, [I32, I64, I64, I32]),
  send: fn('send', I64, [I32, I64, I64, I32]),
  socketpair: fn('socketpair', I32, [I32, I32, I32, I64]),
  eventfd: fn('eventfd', I32, [I32, I32]),
  memfd_create: fn('memfd_create', I32, [STR, I32]),
  fcntl: fn('fcntl', I32, [I32, I32, I32]),
  shutdown: fn('shutdown', I32, [I32, I32]),
  close: fn('close', I32, [I32]),
  epoll_create1: fn('epoll_create1', I32, [I32]),
  epoll_ctl: fn('epoll_ctl', I32, [I32, I32, I32, I64]),
  epoll_wait: fn('epoll_wait', I32, [I32, I64, I32, I32]),
  memcpy: fn('memcpy', I64, [I64, I64, I64]),
  ioctl: fn('ioctl', I32, [I32, I64, I64]),
  getsockopt: fn('getsockopt', I32, [I32, I32, I32, I64, I64]),
  process_vm_readv: fn('process_vm_readv', I64, [I32, I64, I64, I64, I64, I64]),
  process_vm_writev: fn('process_vm_writev', I64, [I32, I64, I64, I64, I64, I64]),
  errno_location: fn('__errno_location', I64, []),
};
function call(f: Call, ...args: unknown[]): number {
  for (let i = 0; i < args.length; i++) f.paramsValue[i] = args[i];
  return nb.load(f) as number;
}

// ---- constants (x86_64 Linux)
const AF_UNIX = 1, SOCK_STREAM = 1, SOCK_NONBLOCK = 0x800, SOCK_CLOEXEC = 0x80000;
const MSG_DONTWAIT = 0x40, MSG_NOSIGNAL = 0x4000, MSG_CMSG_CLOEXEC = 0x40000000, MSG_CTRUNC = 0x8;
const SOL_SOCKET = 1, SCM_RIGHTS = 1;
const EFD_CLOEXEC = 0x80000, EFD_NONBLOCK = 0x800, MFD_CLOEXEC = 1;
const EPOLL_CLOEXEC = 0x80000, F_DUPFD_CLOEXEC = 1030, SHUT_RDWR = 2;
const EINTR = 4, EAGAIN = 11, ECONNREFUSED = 111;
const SO_PEERCRED = 17;
const TUNSETIFF = 0x400454ca, IFF_TAP = 0x0002, IFF_NO_PI = 0x1000;
const EPOLL_OPS = { add: 1, del: 2, mod: 3 } as const;

export const ERRNO_NAMES: Record<number, string> = {
  1: 'EPERM', 2: 'ENOENT', 4: 'EINTR', 9: 'EBADF', 11: 'EAGAIN', 12: 'ENOMEM', 13: 'EACCES', 17: 'EEXIST', 20: 'ENOTDIR',
  22: 'EINVAL', 23: 'ENFILE', 24: 'EMFILE', 32: 'EPIPE', 36: 'ENAMETOOLONG', 88: 'ENOTSOCK', 98: 'EADDRINUSE',
  104: 'ECONNRESET', 105: 'ENOBUFS', 107: 'ENOTCONN', 110: 'ETIMEDOUT', 111: 'ECONNREFUSED',
};
const errName = (e: number): string => ERRNO_NAMES[e] ?? `errno ${e}`;

// ---- scratch area: fixed offsets, its address taken once (it never moves: allocUnsafeSlow is off the V8 heap)
const OFF_MSGHDR = 0, OFF_IOV = 64, OFF_CTRL = 128, CTRL_SIZE = 1032; // room for 253 fds (SCM_MAX_FD)
const OFF_IFREQ = 1408; // struct ifreq (40 bytes) for openTap, between the sockaddr and the epoll events
const OFF_ADDR = 1280, OFF_EVENTS = 1536, MAX_EVENTS = 64, OFF_INT = 2400, OFF_EV1 = 2432;
const OFF_DATA = 4096, DATA_SIZE = 65536;
const scratch = Buffer.allocUnsafeSlow(OFF_DATA + DATA_SIZE).fill(0);
const base: number = nb.load({
  library: 'libc', funcName: 'memcpy', retType: I64, freeResultMemory: false,
  paramsType: [{ ffiTypeTag: nb.FFITypeTag.Array, type: T.U8Array, length: scratch.length }, { ffiTypeTag: nb.FFITypeTag.Array, type: T.U8Array, length: scratch.length }, I64],
  paramsValue: [scratch, scratch, 0],
});
const errnoPtr = call(F.errno_location);

/** Address of a Buffer allocated off the V8 heap (allocUnsafeSlow): memcpy(b, b, 0) returns its first argument. */
function addressOf(b: Buffer): number {
  return nb.load({
    library: 'libc', funcName: 'memcpy', retType: I64, freeResultMemory: false,
    paramsType: [{ ffiTypeTag: nb.FFITypeTag.Array, type: T.U8Array, length: b.length }, { ffiTypeTag: nb.FFITypeTag.Array, type: T.U8Array, length: b.length }, I64],
    paramsValue: [b, b, 0],
  }) as number;
}

const IOV_MAX = 1024;

/** process_vm_readv/writev with one local iovec (the staging area) and up to IOV_MAX remote ones per call. */
class FfiRemoteCopier implements RemoteCopier {
  readonly staging: Buffer;
  private readonly stagingAddr: number;
  private readonly iov = Buffer.allocUnsafeSlow(16 * (IOV_MAX + 1));
  private readonly iov32 = new Uint32Array(this.iov.buffer, this.iov.byteOffset, 4 * (IOV_MAX + 1));
  private readonly iovAddr: number;
  constructor(private readonly pid: number, bytes: number) {
    this.staging = Buffer.allocUnsafeSlow(Math.max(bytes, 4096));
    this.stagingAddr = addressOf(this.staging);
    this.iovAddr = addressOf(this.iov);
  }
  private put(off: number, v: number): void {
    const lo = v % 4294967296;
    this.iov32[off >> 2] = lo;
    this.iov32[(off >> 2) + 1] = (v - lo) / 4294967296;
  }
  copy(write: boolean, addrs: ArrayLike<number>, lens: ArrayLike<number>, count: number, off = 0): number {
    let done = 0;
    for (let i = 0; i < count;) {
      const n = Math.min(IOV_MAX, count - i);
      let total = 0;
      for (let k = 0; k < n; k++) {
        this.put(16 * (k + 1), addrs[i + k]);
        this.put(16 * (k + 1) + 8, lens[i + k]);
        total += lens[i + k];
      }
      if (off + done + total > this.staging.length) return -22; // EINVAL: larger than the staging area
      this.put(0, this.stagingAddr + off + done);
      this.put(8, total);
      let r: number;
      for (;;) {
        r = call(write ? F.process_vm_writev : F.process_vm_readv, this.pid, this.iovAddr, 1, this.iovAddr + 16, n, 0);
        if (r >= 0) break;
        const e = errno();
        if (e !== EINTR) return -e;
      }
      done += r;
      if (r !== total) return done;
      i += n;
    }
    return done;
  }
}

/** Write a u64 that is known to fit a double (addresses, lengths) without allocating a bigint. */
function w64(off: number, v: number): void {
  const lo = v % 4294967296;
  scratch.writeUInt32LE(lo, off);
  scratch.writeUInt32LE((v - lo) / 4294967296, off + 4);
}
const r64 = (off: number): number => scratch.readUInt32LE(off) + scratch.readUInt32LE(off + 4) * 4294967296;
// Fixed msghdr fields: no name, one iovec at OFF_IOV whose base is the data area.
w64(OFF_MSGHDR + 16, base + OFF_IOV);
w64(OFF_MSGHDR + 24, 1);
w64(OFF_IOV, base + OFF_DATA);

function errno(): number {
  call(F.memcpy, base + OFF_INT, errnoPtr, 4);
  return scratch.readInt32LE(OFF_INT);
}

function sockaddr(path: string): number {
  const b = Buffer.from(path);
  if (b.length > 107) throw new NativeError('sockaddr', 36, 'ENAMETOOLONG', `socket path longer than 107 bytes: ${path}`);
  scratch.fill(0, OFF_ADDR, OFF_ADDR + 110);
  scratch.writeUInt16LE(AF_UNIX, OFF_ADDR);
  b.copy(scratch, OFF_ADDR + 2);
  return 110;
}

function groupId(group: string | number): number {
  if (typeof group === 'number') return group;
  if (/^\d+$/.test(group)) return Number(group);
  for (const line of fs.readFileSync('/etc/group', 'utf8').split('\n')) {
    const [name, , gid] = line.split(':');
    if (name === group) return Number(gid);
  }
  throw new NativeError('listen', 22, 'EINVAL', `no such group: ${group}`);
}

export interface FfiOptions {
  /** Test hook: receive with a control buffer holding only this many fds (provokes MSG_CTRUNC). */
  ctrlFds?: number;
}

export class FfiNative implements Native {
  private readonly ctrlSize: number;
  constructor(readonly ledger: FdLedger = new FdLedger(), opts: FfiOptions = {}) {
    this.ctrlSize = opts.ctrlFds === undefined ? CTRL_SIZE : 16 + ((4 * opts.ctrlFds + 7) & ~7);
  }

  private fail(op: string, detail = '', e = errno()): never {
    throw new NativeError(op, e, errName(e), detail);
  }

  private socket(label: string, kind: FdKind): number {
    const fd = call(F.socket, AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) this.fail('socket');
    return this.ledger.track(fd, kind, label);
  }

  listenUnix(path: string, opts: ListenOptions = {}): number {
    let st: fs.Stats | undefined;
    try { st = fs.lstatSync(path); } catch { /* absent: fine */ }
    if (st) {
      if (!st.isSocket()) throw new NativeError('listen', 17, 'EEXIST', `${path} exists and is not a socket`);
      let live = false;
      try { this.close(this.connectUnix(path)); live = true; } catch (e) {
        if (!(e instanceof NativeError) || e.errno !== ECONNREFUSED) throw e;
      }
      if (live) throw new NativeError('listen', 98, 'EADDRINUSE', `${path} is in use: something is listening on it`);
      fs.unlinkSync(path); // stale socket left by a dead listener
    }
    const fd = this.socket(path, 'listen');
    try {
      const len = sockaddr(path);
      if (call(F.bind, fd, base + OFF_ADDR, len) < 0) this.fail('bind', path);
      // Permissions are set before listen(): until then every connect() is refused.
      fs.chmodSync(path, opts.mode ?? 0o600);
      if (opts.group !== undefined) fs.chownSync(path, -1, groupId(opts.group));
      if (call(F.listen, fd, opts.backlog ?? 16) < 0) this.fail('listen', path);
    } catch (e) {
      this.close(fd);
      throw e;
    }
    return fd;
  }

  connectUnix(path: string): number {
    const fd = this.socket(path, 'socket');
    const len = (() => { try { return sockaddr(path); } catch (e) { this.close(fd); throw e; } })();
    if (call(F.connect, fd, base + OFF_ADDR, len) < 0) {
      const e = errno();
      this.close(fd);
      throw new NativeError('connect', e, errName(e), path);
    }
    return fd;
  }

  accept(listenFd: number): number {
    for (;;) {
      const fd = call(F.accept4, listenFd, 0, 0, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd >= 0) return this.ledger.track(fd, 'socket', `accepted on ${this.ledger.label(listenFd) ?? listenFd}`);
      const e = errno();
      if (e === EINTR) continue;
      if (e === EAGAIN) return -1;
      this.fail('accept', '', e);
    }
  }

  recvMsg(fd: number, dst: Uint8Array, off: number, len: number): RecvResult {
    const n0 = Math.min(len, DATA_SIZE);
    w64(OFF_MSGHDR + 32, base + OFF_CTRL);
    w64(OFF_MSGHDR + 40, this.ctrlSize);
    scratch.writeInt32LE(0, OFF_MSGHDR + 48);
    w64(OFF_IOV + 8, n0);
    let n: number;
    for (;;) {
      n = call(F.recvmsg, fd, base + OFF_MSGHDR, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      if (n >= 0) break;
      const e = errno();
      if (e === EINTR) continue;
      if (e === EAGAIN) return { n: -1, fds: [], ctrunc: false };
      this.fail('recvmsg', '', e);
    }
    const fds: number[] = [];
    const controllen = r64(OFF_MSGHDR + 40);
    const flags = scratch.readInt32LE(OFF_MSGHDR + 48);
    let c = 0;
    while (c + 16 <= controllen) {
      const clen = r64(OFF_CTRL + c);
      if (clen < 16) break;
      if (scratch.readInt32LE(OFF_CTRL + c + 8) === SOL_SOCKET && scratch.readInt32LE(OFF_CTRL + c + 12) === SCM_RIGHTS) {
        for (let i = 16; i + 4 <= clen; i += 4) fds.push(this.ledger.track(scratch.readInt32LE(OFF_CTRL + c + i), 'received', `from fd ${fd}`));
      }
      c += (clen + 7) & ~7;
    }
    if (n > 0) scratch.copy(dst, off, OFF_DATA, OFF_DATA + n);
    return { n, fds, ctrunc: (flags & MSG_CTRUNC) !== 0 };
  }

  sendMsg(fd: number, src: Uint8Array, off: number, len: number, fds: readonly number[] = []): number {
    const n0 = Math.min(len, DATA_SIZE);
    scratch.set(n0 === src.byteLength && off === 0 ? src : src.subarray(off, off + n0), OFF_DATA);
    if (fds.length) {
      if (fds.length > 253) throw new NativeError('sendmsg', 22, 'EINVAL', `${fds.length} fds exceed SCM_MAX_FD`);
      const clen = 16 + 4 * fds.length;
      w64(OFF_CTRL, clen);
      scratch.writeInt32LE(SOL_SOCKET, OFF_CTRL + 8);
      scratch.writeInt32LE(SCM_RIGHTS, OFF_CTRL + 12);
      for (let i = 0; i < fds.length; i++) scratch.writeInt32LE(fds[i], OFF_CTRL + 16 + 4 * i);
      w64(OFF_MSGHDR + 32, base + OFF_CTRL);
      w64(OFF_MSGHDR + 40, (clen + 7) & ~7);
    } else {
      w64(OFF_MSGHDR + 32, 0);
      w64(OFF_MSGHDR + 40, 0);
    }
    scratch.writeInt32LE(0, OFF_MSGHDR + 48);
    w64(OFF_IOV + 8, n0);
    for (;;) {
      const n = call(F.sendmsg, fd, base + OFF_MSGHDR, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n >= 0) return n;
      const e = errno();
      if (e === EINTR) continue;
      if (e === EAGAIN) return -1;
      this.fail('sendmsg', '', e);
    }
  }

  read(fd: number, dst: Uint8Array, off: number, len: number, owned: boolean): number {
    if (owned) {
      for (;;) {
        try {
          return fs.readSync(fd, dst, off, len, null);
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          if (code === 'EINTR') continue;
          if (code === 'EAGAIN') return -1;
          throw new NativeError('read', (e as NodeJS.ErrnoException).errno ?? 0, code ?? 'EIO');
        }
      }
    }
    const n0 = Math.min(len, DATA_SIZE);
    for (;;) {
      const n = call(F.recv, fd, base + OFF_DATA, n0, MSG_DONTWAIT);
      if (n >= 0) { if (n > 0) scratch.copy(dst, off, OFF_DATA, OFF_DATA + n); return n; }
      const e = errno();
      if (e === EINTR) continue;
      if (e === EAGAIN) return -1;
      this.fail('recv', '', e);
    }
  }

  write(fd: number, src: Uint8Array, off: number, len: number, owned: boolean): number {
    if (owned) {
      for (;;) {
        try {
          return fs.writeSync(fd, src, off, len);
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          if (code === 'EINTR') continue;
          if (code === 'EAGAIN') return -1;
          throw new NativeError('write', (e as NodeJS.ErrnoException).errno ?? 0, code ?? 'EIO');
        }
      }
    }
    return this.sendMsg(fd, src, off, len);
  }

  socketpair(label: string): [number, number] {
    // Blocking ends: one of them goes to a peer that may expect blocking semantics; we use MSG_DONTWAIT per call.
    if (call(F.socketpair, AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, base + OFF_INT) < 0) this.fail('socketpair');
    const a = scratch.readInt32LE(OFF_INT), b = scratch.readInt32LE(OFF_INT + 4);
    return [this.ledger.track(a, 'socket', `${label} (ours)`), this.ledger.track(b, 'socket', `${label} (peer's)`)];
  }

  eventfd(initval: number, label: string, flags: { nonblock?: boolean } = {}): number {
    const fd = call(F.eventfd, initval, EFD_CLOEXEC | (flags.nonblock === false ? 0 : EFD_NONBLOCK));
    if (fd < 0) this.fail('eventfd');
    return this.ledger.track(fd, 'eventfd', label);
  }

  memfd(name: string, size: number): number {
    const fd = call(F.memfd_create, name, MFD_CLOEXEC);
    if (fd < 0) this.fail('memfd_create');
    this.ledger.track(fd, 'memfd', name);
    try { fs.ftruncateSync(fd, size); } catch (e) { this.close(fd); throw e; }
    return fd;
  }

  dup(fd: number, label: string): number {
    const d = call(F.fcntl, fd, F_DUPFD_CLOEXEC, 0);
    if (d < 0) this.fail('dup');
    return this.ledger.track(d, 'dup', label);
  }

  close(fd: number): void {
    if (!this.ledger.release(fd, 'close')) return; // not ours: never close someone else's fd
    // libc close, not fs.closeSync: Node warns about closing fds it did not open itself.
    call(F.close, fd);
  }

  shutdown(fd: number): void {
    call(F.shutdown, fd, SHUT_RDWR);
  }

  epollCreate(): number {
    const fd = call(F.epoll_create1, EPOLL_CLOEXEC);
    if (fd < 0) this.fail('epoll_create1');
    return this.ledger.track(fd, 'epoll', 'epoll');
  }

  epollCtl(epfd: number, op: 'add' | 'mod' | 'del', fd: number, events: number): void {
    scratch.writeUInt32LE(events >>> 0, OFF_EV1);
    w64(OFF_EV1 + 4, fd);
    if (call(F.epoll_ctl, epfd, EPOLL_OPS[op], fd, base + OFF_EV1) < 0) this.fail(`epoll_ctl ${op}`, `fd ${fd}`);
  }

  epollWait(epfd: number, timeoutMs: number): EpollEvent[] {
    const n = call(F.epoll_wait, epfd, base + OFF_EVENTS, MAX_EVENTS, timeoutMs);
    if (n < 0) {
      const e = errno();
      if (e === EINTR) return [];
      this.fail('epoll_wait', '', e);
    }
    const out: EpollEvent[] = new Array(n);
    for (let i = 0; i < n; i++) {
      const o = OFF_EVENTS + 12 * i; // struct epoll_event is packed on x86_64
      out[i] = { events: scratch.readUInt32LE(o), fd: scratch.readUInt32LE(o + 4) };
    }
    return out;
  }

  openTap(name: string): { fd: number; name: string } {
    const b = Buffer.from(name);
    if (b.length === 0 || b.length > 15) throw new NativeError('openTap', 22, 'EINVAL', `interface name must be 1..15 bytes: "${name}"`);
    let fd: number;
    try {
      fd = fs.openSync('/dev/net/tun', fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    } catch (e) {
      const x = e as NodeJS.ErrnoException;
      throw new NativeError('open /dev/net/tun', x.errno ? -x.errno : 0, x.code ?? 'EIO');
    }
    this.ledger.track(fd, 'other', `tap ${name}`);
    scratch.fill(0, OFF_IFREQ, OFF_IFREQ + 40);
    b.copy(scratch, OFF_IFREQ);
    scratch.writeUInt16LE(IFF_TAP | IFF_NO_PI, OFF_IFREQ + 16);
    if (call(F.ioctl, fd, TUNSETIFF, base + OFF_IFREQ) < 0) {
      const e = errno();
      this.close(fd);
      throw new NativeError('ioctl TUNSETIFF', e, errName(e), name);
    }
    const end = scratch.indexOf(0, OFF_IFREQ);
    return { fd, name: scratch.toString('utf8', OFF_IFREQ, Math.min(end < 0 ? OFF_IFREQ + 16 : end, OFF_IFREQ + 16)) };
  }

  peerPid(fd: number): number | undefined {
    // struct ucred { pid_t pid; uid_t uid; gid_t gid; } at OFF_IFREQ, its length at OFF_INT.
    scratch.writeUInt32LE(12, OFF_INT);
    scratch.writeUInt32LE(0, OFF_INT + 4);
    if (call(F.getsockopt, fd, SOL_SOCKET, SO_PEERCRED, base + OFF_IFREQ, base + OFF_INT) < 0) return undefined;
    const pid = scratch.readInt32LE(OFF_IFREQ);
    return pid > 0 ? pid : undefined;
  }

  remoteCopier(pid: number, stagingBytes: number): RemoteCopier {
    return new FfiRemoteCopier(pid, stagingBytes);
  }

  fdInfo(fd: number): FdInfo {
    let name: string;
    try { name = fs.readlinkSync(`/proc/self/fd/${fd}`); } catch { return { kind: 'unknown' }; }
    const size = (): number | undefined => { try { return fs.fstatSync(fd).size; } catch { return undefined; } };
    if (name.startsWith('/memfd:')) return { kind: 'memfd', name: name.slice(7).replace(/ \(deleted\)$/, ''), size: size() };
    if (name === 'anon_inode:[eventfd]') return { kind: 'eventfd', name };
    if (name.startsWith('socket:')) return { kind: 'socket', name };
    if (name.startsWith('pipe:')) return { kind: 'pipe', name };
    if (name.startsWith('anon_inode:')) return { kind: 'anon', name };
    if (name.startsWith('/')) return { kind: 'file', name, size: size() };
    return { kind: 'unknown', name };
  }
}
