// Fd ledger: every fd this thread owns, with its kind and label, so tests can prove nothing leaks or closes twice.

export type FdKind = 'listen' | 'socket' | 'eventfd' | 'memfd' | 'epoll' | 'received' | 'dup' | 'other';

export interface FdEntry { fd: number; kind: FdKind; label: string }

export class FdLedger {
  private readonly fds = new Map<number, FdEntry>();
  /** Attempts to close or release an fd this ledger does not own (a double close waiting to happen). */
  violations: string[] = [];

  track(fd: number, kind: FdKind, label = ''): number {
    if (this.fds.has(fd)) this.violations.push(`fd ${fd} (${label}) tracked twice; previous: ${this.fds.get(fd)!.label}`);
    this.fds.set(fd, { fd, kind, label });
    return fd;
  }
  /** Stop owning an fd without closing it (handed to another thread or process). Returns false if not owned. */
  release(fd: number, why = 'release'): boolean {
    if (!this.fds.delete(fd)) { this.violations.push(`${why} of fd ${fd} not owned`); return false; }
    return true;
  }
  owns(fd: number): boolean { return this.fds.has(fd); }
  label(fd: number): string | undefined { return this.fds.get(fd)?.label; }
  get count(): number { return this.fds.size; }
  list(): FdEntry[] { return [...this.fds.values()]; }
  byKind(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const e of this.fds.values()) out[e.kind] = (out[e.kind] ?? 0) + 1;
    return out;
  }
}
