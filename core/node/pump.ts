// Epoll event pump for a dedicated worker thread: fd handlers, timers, and a doorbell eventfd for commands and stop.
import * as fs from 'node:fs';
import { EPOLLIN, type Native } from '../sys/native';

export type FdHandler = (events: number) => void;

interface Timer { id: number; at: number; cb: () => void }

export class EventPump {
  readonly epfd: number;
  private readonly handlers = new Map<number, FdHandler>();
  private timers: Timer[] = [];
  private nextTimerId = 1;
  private stopped = false;
  private readonly bell = Buffer.alloc(8);
  /** Handler faults are reported here; the pump itself never dies of one. */
  onFault: (where: string, e: unknown) => void = () => undefined;

  /**
   * @param doorbell eventfd (owned by the host) written whenever a command is posted or stop is requested.
   * @param onDoorbell drains the command queue; called after the doorbell is read.
   */
  constructor(readonly native: Native, private readonly doorbell: number, private readonly onDoorbell: () => void) {
    this.epfd = native.epollCreate();
    native.epollCtl(this.epfd, 'add', doorbell, EPOLLIN);
  }

  watch(fd: number, events: number, handler: FdHandler): void {
    this.native.epollCtl(this.epfd, this.handlers.has(fd) ? 'mod' : 'add', fd, events);
    this.handlers.set(fd, handler);
  }
  modify(fd: number, events: number): void {
    if (this.handlers.has(fd)) this.native.epollCtl(this.epfd, 'mod', fd, events);
  }
  unwatch(fd: number): void {
    if (!this.handlers.delete(fd)) return;
    try { this.native.epollCtl(this.epfd, 'del', fd, 0); } catch { /* fd already closed: epoll dropped it */ }
  }
  watching(fd: number): boolean { return this.handlers.has(fd); }

  setTimer(ms: number, cb: () => void): number {
    const t = { id: this.nextTimerId++, at: performance.now() + ms, cb };
    this.timers.push(t);
    this.timers.sort((a, b) => a.at - b.at);
    return t.id;
  }
  clearTimer(id: number): void { this.timers = this.timers.filter((t) => t.id !== id); }

  stop(): void { this.stopped = true; }

  /** Run until stop(): epoll_wait, dispatch, timers. */
  run(): void {
    while (!this.stopped) this.runOnce();
    this.native.close(this.epfd);
  }

  runOnce(): void {
    const timeout = this.timers.length ? Math.max(0, Math.ceil(this.timers[0].at - performance.now())) : -1;
    const events = this.native.epollWait(this.epfd, timeout);
    for (const ev of events) {
      if (ev.fd === this.doorbell) {
        try { fs.readSync(this.doorbell, this.bell, 0, 8, null); } catch { /* EAGAIN: another drain took it */ }
        this.guard('commands', this.onDoorbell);
        continue;
      }
      const h = this.handlers.get(ev.fd);
      if (h) this.guard(`fd ${ev.fd}`, () => h(ev.events));
    }
    const now = performance.now();
    while (this.timers.length && this.timers[0].at <= now) {
      const t = this.timers.shift()!;
      this.guard('timer', t.cb);
    }
  }

  private guard(where: string, f: () => void): void {
    try { f(); } catch (e) { this.onFault(where, e); }
  }
}
