// The vhost-lens command line: proxy, replay, table (and the commands of later engines), headless over the core.
import * as fs from 'node:fs';
import * as os from 'node:os';
import { Proxy } from '../proxy/proxy';
import { readCapture, CaptureError } from '../proxy/capture';
import { SessionTracker, type EngineEvent } from '../session/tracker';
import { messageLine, messageJson, stateChangeLine, stateChangeJson, stateJson } from '../session/format';
import { toJson, type Json } from '../session/json';
import { NativeError } from '../sys/native';
import type { Endpoint, EndpointMode } from '../node/workerProtocol';
import type { DeviceType } from '../protocol/features';
import { MESSAGES } from '../protocol/table';
import { messageTableMarkdown } from '../protocol/docs';
import { hostNative } from '../node/pumpHost';
import type { Engine } from '../engine';

export class UsageError extends Error {}

export interface Parsed { cmd: string; args: string[]; flags: Map<string, string | true> }

/** Flags that take a value (other engines' commands add theirs). */
export const VALUED = new Set(['frontend', 'backend', 'capture', 'device', 'socket-mode', 'socket-group', 'max-sessions', 'poll-hz', 'connect-timeout', 'notify-interval', 'socket', 'image', 'tap', 'ip', 'mac', 'ring-sample', 'ring-cpu']);

export function parseArgs(argv: string[]): Parsed {
  const [cmd = 'help', ...rest] = argv;
  const args: string[] = [];
  const flags = new Map<string, string | true>();
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    if (!a.startsWith('--')) { args.push(a); continue; }
    const eq = a.indexOf('=');
    const name = a.slice(2, eq < 0 ? undefined : eq);
    if (eq >= 0) flags.set(name, a.slice(eq + 1));
    else if (VALUED.has(name)) {
      if (i + 1 >= rest.length) throw new UsageError(`--${name} needs a value`);
      flags.set(name, rest[++i]);
    } else flags.set(name, true);
  }
  return { cmd, args, flags };
}

export function parseEndpoint(spec: string, def: EndpointMode, what: string): Endpoint {
  const m = /^(listen|connect):(.+)$/.exec(spec);
  if (m) return { mode: m[1] as EndpointMode, path: m[2] };
  if (/^[a-z]+:/.test(spec) && !spec.startsWith('/')) throw new UsageError(`${what}: unknown endpoint kind in "${spec}" (use listen:PATH or connect:PATH)`);
  return { mode: def, path: spec };
}

export const str = (p: Parsed, k: string): string | undefined => { const v = p.flags.get(k); return typeof v === 'string' ? v : undefined; };
export function num(p: Parsed, k: string): number | undefined {
  const v = str(p, k);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new UsageError(`--${k} must be a non-negative number, got "${v}"`);
  return n;
}
export function device(p: Parsed): DeviceType | undefined {
  const d = str(p, 'device');
  if (d === undefined) return undefined;
  if (!['net', 'blk', 'fs'].includes(d)) throw new UsageError(`--device must be net, blk or fs, got "${d}"`);
  return d as DeviceType;
}

/** Output sink: human lines or JSON lines, to a stream. */
export class Printer {
  constructor(readonly json: boolean, private readonly out: (s: string) => void = (s) => process.stdout.write(s)) {}
  line(s: string): void { this.out(`${s}\n`); }
  obj(o: Record<string, Json>): void { this.out(`${JSON.stringify(o)}\n`); }

  event(e: EngineEvent, tracker: SessionTracker): void {
    const device = () => (('msg' in e ? tracker.sessions.get(e.msg.session)?.state.device : undefined) ?? 'unknown');
    switch (e.kind) {
      case 'message':
        if (this.json) {
          this.obj(messageJson(e.msg, e.state.device));
          for (const c of e.changes) this.obj(stateChangeJson(e.msg.session, c, e.state));
        } else {
          this.line(messageLine(e.msg, e.state.device));
          for (const c of e.changes) if (c.what !== 'vring') this.line(`    = ${stateChangeLine(c, e.state)}`);
        }
        return;
      case 'held':
        if (this.json) this.obj({ ...messageJson(e.msg, device()), kind: 'held', holdId: e.holdId });
        else this.line(`HELD ${messageLine(e.msg, device())}`);
        return;
      case 'session': {
        if (this.json) { this.obj({ kind: 'session', session: e.session, event: e.event, ...(e.reason ? { reason: e.reason } : {}), ...(e.summary ? { summary: toJson(e.summary) } : {}) }); return; }
        if (e.event === 'start') { this.line(`--- session ${e.session} started`); return; }
        const s = e.summary;
        this.line(`--- session ${e.session} ended: ${e.reason ?? ''}${s ? ` (${s.messages} messages, ${s.problems} problems${s.missingReplies.length ? `, unanswered: ${s.missingReplies.join(' ')}` : ''})` : ''}`);
        return;
      }
      case 'connection':
        if (this.json) this.obj({ kind: 'connection', session: e.session, side: e.side, event: e.event, ...(e.detail ? { detail: e.detail } : {}) });
        else this.line(`--- ${e.side} ${e.event}${e.detail ? `: ${e.detail}` : ''}`);
        return;
      case 'listening':
        if (this.json) this.obj({ kind: 'connection', side: e.side, event: 'listening', detail: e.path });
        else this.line(`--- listening for the ${e.side} on ${e.path}`);
        return;
      case 'channel':
        if (this.json) this.obj({ kind: 'channel', session: e.session, event: e.event, ...(e.reason ? { reason: e.reason } : {}) });
        else this.line(`--- back-end channel ${e.event}${e.reason ? `: ${e.reason}` : ''}`);
        return;
      case 'notify':
        if (this.json) this.obj({ kind: 'notify', session: e.session, vring: e.vring, what: e.what, count: e.count, signals: e.signals, coalesced: e.count - e.signals, first: e.first, last: e.last });
        else this.line(`    ~ vring ${e.vring} ${e.what}: ${e.count} notification(s) in ${e.signals} wakeup(s)`);
        return;
      case 'error':
        if (this.json) this.obj({ kind: 'error', ...(e.session !== undefined ? { session: e.session } : {}), where: e.where, message: e.message });
        else this.line(`!!! ${e.where}: ${e.message}`);
        return;
      case 'stopped':
        return;
    }
  }
}

const HELP = `vhost-lens: watch, decode and break on vhost-user sessions

usage:
  vhost-lens proxy --frontend [listen:|connect:]PATH --backend [connect:|listen:]PATH [options]
      Relay a live session (messages and fds unchanged) and print it decoded.
      Defaults: the front-end side listens (QEMU connects to PATH), the back-end side connects.
      --json                one JSON object per line (kind: message, state, session, connection, notify, error, summary)
      --capture FILE        record the session for replay (versioned JSON lines)
      --device net|blk|fs   device type for names and payload decoding (default: inferred)
      --notifiers           interpose on kick/call/err eventfds and count every signal (kind:"notify")
      --rings               watch every live vring through the guest memory fds (kind:"ring": chains, payloads)
      --poll-hz N           ring polling rate with --rings (default 100); kill -USR1 PID prints a snapshot of every vring
                            with --notifiers too, split rings are captured exactly at each kick and call instead
      --ring-sample N       decode at most N new entries per poll and direction, count the rest (default 16)
      --ring-cpu PERCENT    CPU budget of ring polling, in % of one core; busy rings are polled less often (default 2)
      --socket-mode MODE    mode of listening sockets (octal, default 600)
      --socket-group GROUP  group of listening sockets (e.g. the group QEMU runs as)
      --max-sessions N      exit after N sessions have ended
      --wait                do not require connect-side sockets to exist at start
  vhost-lens replay FILE [--json]      print a captured session again
  vhost-lens table [--markdown]        the message table (every request of both channels)
  vhost-lens demo [--json] [--proxy] [--notifiers] [--no-rings]
      A real QEMU guest on Vhost Lens's built-in vhost-user-blk back-end (or, with --proxy, through the proxy to
      qemu-storage-daemon): the decoded session and ring activity, ending by itself.
`;

export interface CliIo { out: (s: string) => void; err: (s: string) => void }
const stdio: CliIo = { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) };

function checkConnectSide(ep: Endpoint, what: string): void {
  if (ep.mode !== 'connect') return;
  let st: fs.Stats;
  try { st = fs.statSync(ep.path); } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EACCES') throw new UsageError(`${what} socket ${ep.path}: permission denied (EACCES)`);
    throw new UsageError(`${what} socket ${ep.path} does not exist (start the ${what} first, or pass --wait)`);
  }
  if (!st.isSocket()) throw new UsageError(`${what} path ${ep.path} is not a socket`);
}

export async function runProxy(p: Parsed, io: CliIo = stdio, signal?: AbortSignal): Promise<number> {
  const fe = str(p, 'frontend'), be = str(p, 'backend');
  if (!fe || !be) throw new UsageError('proxy needs --frontend and --backend');
  const frontend = parseEndpoint(fe, 'listen', 'front-end');
  const backend = parseEndpoint(be, 'connect', 'back-end');
  if (!p.flags.has('wait')) { checkConnectSide(frontend, 'front-end'); checkConnectSide(backend, 'back-end'); }
  const modeText = str(p, 'socket-mode');
  const socketMode = modeText === undefined ? undefined : parseInt(modeText, 8);
  if (modeText !== undefined && (!/^[0-7]{3,4}$/.test(modeText))) throw new UsageError(`--socket-mode must be octal like 600 or 660, got "${modeText}"`);
  const proxy = new Proxy({
    frontend, backend, device: device(p), capture: str(p, 'capture'), notifiers: p.flags.has('notifiers'),
    ringCapture: p.flags.has('notifiers') && p.flags.has('rings'),
    socketMode, socketGroup: str(p, 'socket-group'), maxSessions: num(p, 'max-sessions'),
    connectTimeoutMs: num(p, 'connect-timeout'), notifyIntervalMs: num(p, 'notify-interval'),
  });
  return runEngine(proxy, p, io, signal);
}

/** Run any engine until SIGINT/SIGTERM (or until it ends by itself), printing its events, then a summary. */
export async function runEngine(engine: Engine, p: Parsed, io: CliIo = stdio, signal?: AbortSignal): Promise<number> {
  const printer = new Printer(p.flags.has('json'), io.out);
  engine.on('event', (e) => printer.event(e, engine.tracker));
  try {
    await engine.start();
  } catch (e) {
    await engine.stop();
    throw new UsageError((e as Error).message.replace(/^listen: |^bind: /, 'cannot listen: '));
  }
  try {
    for (const hook of engineHooks) hook(engine, p, printer);
  } catch (e) {
    await engine.stop(); // a bad flag found by an observer must not leave a listening socket behind
    throw e;
  }
  // The observer yields to what it observes: this (host) thread decodes and prints at nice 10, while the relay
  // worker, already spawned, keeps normal priority. Linux nice values are per thread; os.setPriority() without a
  // pid applies to the calling thread only.
  lowerObserverPriority();
  const stopped = new Promise<'signal' | 'done'>((resolve) => {
    const onSig = () => resolve('signal');
    process.once('SIGINT', onSig);
    process.once('SIGTERM', onSig);
    signal?.addEventListener('abort', onSig);
    engine.finished().then(() => resolve('done'));
  });
  await stopped;
  const final = await engine.stop();
  const sessions = [...engine.tracker.sessions.values()].map((s) => ({ id: s.state.id, ...engine.tracker.summary(s), state: stateJson(s.state) }));
  const hostFds = hostNative().ledger.count;
  if (printer.json) printer.obj({ kind: 'summary', sessions: sessions as unknown as Json, workerFds: final.ledger, hostFds });
  else {
    printer.line(`--- summary: ${sessions.length} session(s), ${sessions.reduce((n, s) => n + s.messages, 0)} messages, ${sessions.reduce((n, s) => n + s.problems, 0)} problems; open fds: worker ${final.ledger}, host ${hostFds}`);
  }
  return 0;
}

/** Nice 10 for the calling thread (decoding, printing, ring watching); the relay worker is left as it was. */
export function lowerObserverPriority(nice = 10): void {
  try { if (os.getPriority() < nice) os.setPriority(nice); } catch { /* not permitted: fine */ }
}

/** Extra observers attached to every engine the CLI runs (e.g. ring watch with --rings). */
export const engineHooks: ((engine: Engine, p: Parsed, printer: Printer) => void)[] = [];

export function runReplay(p: Parsed, io: CliIo = stdio): number {
  const file = p.args[0];
  if (!file) throw new UsageError('replay needs a capture FILE');
  let cap;
  try { cap = readCapture(file); } catch (e) {
    if (e instanceof CaptureError || (e as NodeJS.ErrnoException).code) throw new UsageError((e as Error).message);
    throw e;
  }
  const printer = new Printer(p.flags.has('json'), io.out);
  const tracker = new SessionTracker({ device: device(p) ?? (cap.header.device as DeviceType | undefined) });
  tracker.on('event', (e) => printer.event(e, tracker));
  for (const e of cap.events) tracker.handle(e);
  return 0;
}

function runTable(p: Parsed, io: CliIo): number {
  if (p.flags.has('markdown')) { io.out(messageTableMarkdown()); return 0; }
  for (const m of MESSAGES) {
    io.out(`${m.channel.padEnd(8)}${String(m.code).padStart(3)}  ${m.name.padEnd(34)}${m.category.padEnd(16)}${m.summary}\n`);
  }
  return 0;
}

export async function main(argv: string[], io: CliIo = stdio): Promise<number> {
  try {
    const p = parseArgs(argv);
    switch (p.cmd) {
      case 'proxy': return await runProxy(p, io);
      case 'replay': return runReplay(p, io);
      case 'table': return runTable(p, io);
      case 'help': case '--help': case '-h': io.out(HELP); return 0;
      default: {
        const ext = extraCommands[p.cmd];
        if (ext) return await ext(p, io);
        throw new UsageError(`unknown command "${p.cmd}" (try: vhost-lens help)`);
      }
    }
  } catch (e) {
    if (e instanceof UsageError) { io.err(`vhost-lens: ${e.message}\n`); return 2; }
    if (e instanceof NativeError) { io.err(`vhost-lens: ${e.message}\n`); return 1; }
    io.err(`vhost-lens: ${(e as Error).stack ?? e}\n`);
    return 1;
  }
}

/** Commands contributed by other engines (demo, backend) register here to keep this file's imports small. */
export const extraCommands: Record<string, (p: Parsed, io: CliIo) => Promise<number>> = {};
