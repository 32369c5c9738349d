// qemu-storage-daemon peer: exports a raw image as a vhost-user-blk back-end on a UNIX socket; stop, kill, restart.
import { closeSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import { SocketDaemon } from './daemon';

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
export class StorageDaemon extends SocketDaemon {
  constructor(readonly options: StorageDaemonOptions) {
    super(options.name ?? 'qemu-storage-daemon', options.socket);
  }

  protected command(): { command: string; args: string[] } {
    return { command: this.options.binary ?? QSD_BINARY, args: qsdArgs(this.options) };
  }
}
