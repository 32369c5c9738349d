// Capture files: a versioned JSON-lines record of everything needed to replay a session's message stream.
import * as fs from 'node:fs';
import { hex, fromHex } from '../protocol/bytes';
import type { WorkerEvent, WireRecord } from '../node/workerProtocol';

export const CAPTURE_FORMAT = 'vhost-lens-capture';
export const CAPTURE_VERSION = 1;

export interface CaptureHeader {
  format: typeof CAPTURE_FORMAT;
  version: number;
  created: string;
  tool: string;
  frontend?: string;
  backend?: string;
  device?: string;
}

/** One line per relay event; message bytes as hex, fds as metadata (kind, size, name) since fds cannot be stored. */
export type CaptureLine =
  | { t: 'message'; session: number; seq: number; time: number; channel: 'main' | 'backend'; from: 'frontend' | 'backend'; bytes: string;
      fds: { kind: string; size?: number; name?: string }[]; substituted?: string[]; relayProblems?: string[] }
  | { t: 'session'; session: number; event: 'start' | 'end'; reason?: string }
  | { t: 'channel'; session: number; event: 'open' | 'closed'; reason?: string }
  | { t: 'notify'; session: number; vring: number; what: 'kick' | 'call' | 'err'; signals: number; count: number; first: number; last: number };

export class CaptureWriter {
  private fd: number;
  constructor(readonly path: string, header: Omit<CaptureHeader, 'format' | 'version' | 'created'>) {
    this.fd = fs.openSync(path, 'w', 0o600);
    this.line({ format: CAPTURE_FORMAT, version: CAPTURE_VERSION, created: new Date().toISOString(), ...header });
  }
  private line(o: unknown): void { fs.writeSync(this.fd, `${JSON.stringify(o)}\n`); }

  /** Record a relay event (messages, session boundaries, back-end channel, notifier counts); others are ignored. */
  write(e: WorkerEvent): void {
    switch (e.kind) {
      case 'message': {
        const r = e.rec;
        this.line({ t: 'message', session: r.session, seq: r.seq, time: r.time, channel: r.channel, from: r.from, bytes: hex(r.bytes),
          fds: r.fds, ...(r.substituted ? { substituted: r.substituted } : {}), ...(r.relayProblems ? { relayProblems: r.relayProblems } : {}) } satisfies CaptureLine);
        return;
      }
      case 'session': this.line({ t: 'session', session: e.session, event: e.event, reason: e.reason }); return;
      case 'channel': this.line({ t: 'channel', session: e.session, event: e.event, reason: e.reason }); return;
      case 'notify': { const { kind: _k, ...rest } = e; this.line({ t: 'notify', ...rest }); return; }
      default: return;
    }
  }
  close(): void { fs.closeSync(this.fd); }
}

export class CaptureError extends Error {}

/** Read a capture back as the relay events that produced it (kept fds are gone: guest memory is not replayable). */
export function readCapture(path: string): { header: CaptureHeader; events: WorkerEvent[] } {
  const lines = fs.readFileSync(path, 'utf8').split('\n').filter((l) => l.trim());
  if (!lines.length) throw new CaptureError(`${path}: empty capture`);
  let header: CaptureHeader;
  try { header = JSON.parse(lines[0]); } catch { throw new CaptureError(`${path}: first line is not a capture header`); }
  if (header.format !== CAPTURE_FORMAT) throw new CaptureError(`${path}: not a ${CAPTURE_FORMAT} file`);
  if (header.version > CAPTURE_VERSION) throw new CaptureError(`${path}: capture version ${header.version} is newer than this tool (${CAPTURE_VERSION})`);
  const events: WorkerEvent[] = [];
  lines.slice(1).forEach((l, i) => {
    let c: CaptureLine;
    try { c = JSON.parse(l); } catch { throw new CaptureError(`${path}:${i + 2}: not JSON`); }
    switch (c.t) {
      case 'message': {
        const rec: WireRecord = { session: c.session, seq: c.seq, time: c.time, channel: c.channel, from: c.from, bytes: fromHex(c.bytes),
          fds: c.fds as WireRecord['fds'], substituted: c.substituted, relayProblems: c.relayProblems };
        events.push({ kind: 'message', rec });
        break;
      }
      case 'session': events.push({ kind: 'session', session: c.session, event: c.event, reason: c.reason }); break;
      case 'channel': events.push({ kind: 'channel', session: c.session, event: c.event, reason: c.reason }); break;
      case 'notify': { const { t: _t, ...rest } = c; events.push({ kind: 'notify', ...rest }); break; }
      default: throw new CaptureError(`${path}:${i + 2}: unknown record type ${(c as { t: string }).t}`);
    }
  });
  return { header, events };
}
