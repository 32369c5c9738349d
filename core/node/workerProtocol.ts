// Typed commands (host -> pump worker) and events (pump worker -> host); structured-clone safe, no classes.
import type { Channel, Side } from '../protocol/table';
import type { FdInfo } from '../sys/native';
import type { RingCapture } from '../proxy/notifyCapture';

export type EndpointMode = 'listen' | 'connect';
export interface Endpoint { mode: EndpointMode; path: string }

export interface RelayOptions {
  frontend: Endpoint;
  backend: Endpoint;
  /** Substitute our own eventfds for kick/call/err and count every signal. */
  notifiers?: boolean;
  /** With notifiers: walk split rings at each kick and call before relaying it (exact ring capture). */
  ringCapture?: boolean;
  /** Socket file mode for listening endpoints (default 0o600). */
  socketMode?: number;
  socketGroup?: string;
  /** How long to keep trying the connect side once the listen side has a peer (ms). */
  connectTimeoutMs?: number;
  /** Stop after this many sessions have ended (tests, demo). */
  maxSessions?: number;
  /** Interval of notifier count reports (ms). */
  notifyIntervalMs?: number;
}

/** One relayed (or held) message as read off the wire, with what the relay did to its fds. */
export interface WireRecord {
  session: number;
  seq: number;
  /** Microseconds since the Unix epoch when the message was complete. */
  time: number;
  channel: Channel;
  from: Side;
  /** Header and payload bytes exactly as received. */
  bytes: Uint8Array;
  fds: FdInfo[];
  /** Dups of memory fds now owned by the host thread (same order as the message's fds). */
  kept?: number[];
  /** What the relay substituted, e.g. "back-end channel socketpair", "kick eventfd". */
  substituted?: string[];
  /** Set when the message is held at a gate: release it with this id. */
  held?: number;
  /** Relay-level problems (MSG_CTRUNC, truncated at EOF). */
  relayProblems?: string[];
}

export type WorkerEvent =
  | { kind: 'listening'; side: Side; path: string }
  | { kind: 'connection'; session: number; side: Side; event: 'accepted' | 'connected' | 'closed' | 'retrying' | 'failed'; detail?: string }
  | { kind: 'session'; session: number; event: 'start' | 'end'; reason?: string }
  | { kind: 'message'; rec: WireRecord }
  /** A message stopped at the gate: not relayed until a `release` command names its hold id. */
  | { kind: 'held'; rec: WireRecord }
  | { kind: 'channel'; session: number; event: 'open' | 'closed'; reason?: string }
  | { kind: 'notify'; session: number; vring: number; what: 'kick' | 'call' | 'err'; signals: number; count: number; first: number; last: number }
  | { kind: 'ringcapture'; session: number; cap: RingCapture }
  | { kind: 'error'; session?: number; where: string; message: string }
  | { kind: 'stats'; ledger: number; ledgerByKind: Record<string, number>; violations: string[]; requestId: number }
  | { kind: 'ready' }
  | { kind: 'stopped'; ledger: number; violations: string[] };

/** What actually crosses the thread boundary: single events, or batches of message/notify events. */
export type WorkerPost = WorkerEvent | { kind: 'batch'; events: WorkerEvent[] };

export type WorkerCommand =
  /** Hold messages whose `channel:code` key is listed (or every message when `all`). */
  | { type: 'gate'; all: boolean; keys: string[] }
  | { type: 'release'; holdId: number }
  | { type: 'stats'; requestId: number }
  | { type: 'stop' }
  /** Program-specific commands (e.g. the back-end device's). */
  | { type: 'program'; body: unknown };

export const gateKey = (channel: Channel, code: number): string => `${channel}:${code}`;
export const nowMicros = (): number => Math.round((performance.timeOrigin + performance.now()) * 1000);
