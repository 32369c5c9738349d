// The native interface the engine needs (UNIX sockets with SCM_RIGHTS, eventfd, memfd, epoll); no implementation here.
import type { FdLedger } from './ledger';

export class NativeError extends Error {
  constructor(readonly op: string, readonly errno: number, readonly code: string, detail = '') {
    super(`${op}: ${code}${detail ? ` (${detail})` : ''}`);
  }
}

export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLLRDHUP = 0x2000;

export interface RecvResult {
  /** Bytes received; 0 = end of file; -1 = would block. */
  n: number;
  fds: number[];
  /** The kernel truncated the control data (and closed fds that did not fit): a protocol error. */
  ctrunc: boolean;
}

export interface ListenOptions {
  /** File mode of the socket path (default 0o600). */
  mode?: number;
  /** Group name or gid to own the socket path (libvirt runs QEMU as another user). */
  group?: string | number;
  backlog?: number;
}

export interface FdInfo {
  kind: 'memfd' | 'eventfd' | 'socket' | 'file' | 'pipe' | 'anon' | 'unknown';
  /** Size for regular files and memfds. */
  size?: number;
  /** What /proc/self/fd names it (memfd name, anon inode type, path). */
  name?: string;
}

export interface EpollEvent { fd: number; events: number }

export interface Native {
  readonly ledger: FdLedger;
  /** Create, bind (mode set before listen), and listen; non-blocking. A stale socket path is replaced, a live one is an error. */
  listenUnix(path: string, opts?: ListenOptions): number;
  /** Connect a non-blocking stream socket. Throws NativeError (ENOENT, ECONNREFUSED, EACCES…). */
  connectUnix(path: string): number;
  /** Accept one connection (non-blocking, close-on-exec), or -1 if none is pending. */
  accept(listenFd: number): number;
  /** recvmsg with MSG_DONTWAIT|MSG_CMSG_CLOEXEC into dst; received fds are tracked in the ledger. */
  recvMsg(fd: number, dst: Uint8Array, off: number, len: number): RecvResult;
  /** sendmsg with MSG_DONTWAIT|MSG_NOSIGNAL; fds go with the first byte. Returns bytes sent or -1 (would block). */
  sendMsg(fd: number, src: Uint8Array, off: number, len: number, fds?: readonly number[]): number;
  /** Read bytes: fds we own use read(2); others recv with MSG_DONTWAIT. 0 = EOF; -1 = would block. */
  read(fd: number, dst: Uint8Array, off: number, len: number, owned: boolean): number;
  /** Write bytes without fds. Returns bytes written or -1 (would block). */
  write(fd: number, src: Uint8Array, off: number, len: number, owned: boolean): number;
  socketpair(label: string): [number, number];
  eventfd(initval: number, label: string, flags?: { nonblock?: boolean }): number;
  memfd(name: string, size: number): number;
  dup(fd: number, label: string): number;
  /** Close an owned fd exactly once (an fd the ledger does not own is reported, not closed). */
  close(fd: number): void;
  shutdown(fd: number): void;
  epollCreate(): number;
  epollCtl(epfd: number, op: 'add' | 'mod' | 'del', fd: number, events: number): void;
  /** Wait for events; timeoutMs -1 blocks. EINTR returns an empty list. */
  epollWait(epfd: number, timeoutMs: number): EpollEvent[];
  fdInfo(fd: number): FdInfo;
  /** Open (creating if needed) a TAP interface: IFF_TAP | IFF_NO_PI, non-blocking fd owned by the ledger. */
  openTap?(name: string): { fd: number; name: string };
  /** Pid of the process at the other end of a UNIX socket (SO_PEERCRED). */
  peerPid?(fd: number): number | undefined;
  /** Scatter/gather copies between a local staging area and another process's memory (process_vm_readv/writev). */
  remoteCopier?(pid: number, stagingBytes: number): RemoteCopier;
}

export interface RemoteCopier {
  /** The local side of every copy: data to write is placed here, data read lands here (contiguously). */
  readonly staging: Buffer;
  /**
   * Copy staging[off, off + sum(lens)) to (write) or from (read) the remote ranges addrs[i]+lens[i], i < count.
   * Returns the bytes copied (short on a fault) or -errno.
   */
  copy(write: boolean, addrs: ArrayLike<number>, lens: ArrayLike<number>, count: number, off?: number): number;
}
