// qemu-storage-daemon peer: exports a raw image as a vhost-user-blk back-end on a UNIX socket; stop, kill, restart.
import { closeSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import { PeerProcess, removeIfExists, waitForListeningSocket, type ExitInfo, type Peer } from './process';

export const QSD_BINARY = 'qemu-storage-daemon';

export interface StorageDaemonOptions {
  name?: string;
  /** Raw image file to export. */
  image: string;
  /** UNIX socket the daemon listens on. */
  socket: string;
  writable?: boolean;
  numQueues?: number;
  binary?: string;
}

export function qsdArgs(o: StorageDaemonOptions): string[] {
  for (const p of [o.image, o.socket]) if (p.includes(',')) throw new Error(`path must not contain a comma: ${p}`);
  return [
    '--blockdev', `driver=file,node-name=f0,filename=${o.image}`,
    '--export', `type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path=${o.socket},writable=${o.writable === false ? 'off' : 'on'},num-queues=${o.numQueues ?? 1}`,
  ];
}

/** Create (or truncate to) a sparse raw image of `mib` MiB, all zeroes. */
export function createRawImage(path: string, mib: number): string {
  const fd = openSync(path, 'w');
  try { ftruncateSync(fd, mib * 1024 * 1024); } finally { closeSync(fd); }
  return path;
}

/** Read `count` 512-byte sectors at `sector` from a raw image. */
export function readSectors(path: string, sector: number, count = 1): Buffer {
  const buf = Buffer.alloc(count * 512);
  const fd = openSync(path, 'r');
  try { readSync(fd, buf, 0, buf.length, sector * 512); } finally { closeSync(fd); }
  return buf;
}

/** Write `data` at `sector` of a raw image. */
export function writeSectors(path: string, sector: number, data: Buffer): void {
  const fd = openSync(path, 'r+');
  try { writeSync(fd, data, 0, data.length, sector * 512); } finally { closeSync(fd); }
}

/** A qemu-storage-daemon process; one instance can be restarted many times on the same socket. */
export class StorageDaemon implements Peer {
  readonly name: string;
  readonly options: StorageDaemonOptions;
  private proc?: PeerProcess;
  /** Every process this instance started, oldest first (their logs survive restarts). */
  readonly runs: PeerProcess[] = [];

  constructor(opts: StorageDaemonOptions) {
    this.options = opts;
    this.name = opts.name ?? 'qemu-storage-daemon';
  }

  get socket(): string { return this.options.socket; }
  get pid(): number | undefined { return this.proc?.pid; }
  get running(): boolean { return this.proc?.running ?? false; }
  /** Output of every run, separated by a header line. */
  get log(): string { return this.runs.map((p, i) => `--- run ${i + 1}: ${p.commandLine()}\n${p.log}`).join('\n'); }

  /** Spawn the daemon (removing a stale socket first) and wait until it listens. */
  async start(timeoutMs = 20_000): Promise<void> {
    if (this.running) throw new Error(`${this.name}: already running`);
    removeIfExists(this.options.socket);
    const p = new PeerProcess({ name: this.name, command: this.options.binary ?? QSD_BINARY, args: qsdArgs(this.options) });
    this.proc = p;
    this.runs.push(p);
    await p.start();
    await waitForListeningSocket(this.options.socket, timeoutMs, p);
  }

  /** SIGTERM and wait for the exit (SIGKILL after graceMs). */
  stop(graceMs = 10_000): Promise<ExitInfo> { return this.proc ? this.proc.stop('SIGTERM', graceMs) : Promise.resolve({ code: null, signal: null }); }

  /** SIGKILL (the socket file stays behind, as after a crash). */
  kill(): Promise<ExitInfo> { return this.proc ? this.proc.kill() : Promise.resolve({ code: null, signal: null }); }

  /** Stop (SIGTERM, or SIGKILL with hard=true) and start again on the same socket. */
  async restart(hard = false): Promise<void> {
    if (this.running) await (hard ? this.kill() : this.stop());
    await this.start();
  }

  waitForText(re: RegExp, timeoutMs = 30_000): Promise<RegExpExecArray> {
    if (!this.proc) throw new Error(`${this.name}: not started`);
    return this.proc.waitForText(re, { timeoutMs });
  }

  exited(): Promise<ExitInfo> { return this.proc ? this.proc.exited() : Promise.resolve({ code: null, signal: null }); }

  cleanupFiles(): void { if (!this.running) removeIfExists(this.options.socket); }
}
