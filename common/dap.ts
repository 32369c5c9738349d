// The typed contract between the vhost-user debug adapter and its clients (extension, webviews, tests): custom requests, custom events, DTOs; no vscode or Node imports.

/** The debug type contributed by the extension (`"type": "vhost-user"` in launch.json). */
export const DEBUG_TYPE = 'vhost-user';

/** A u64 as it crosses process boundaries: lower-case hex with a `0x` prefix, e.g. "0x100000000". */
export type Hex = string;

/** JSON values (what a DAP body can carry). */
export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Timeline phases; the Debug Console groups its output by them. */
export type Phase = 'negotiation' | 'memory' | 'vring setup' | 'running' | 'stop';
export const PHASES: readonly Phase[] = ['negotiation', 'memory', 'vring setup', 'running', 'stop'];

/** Memory references handed out in variables (`memoryReference`) and accepted by readMemory: `gpa:0x…` or `uva:0x…`. */
/**
 * Where a memory reference points: guest-physical and front-end addresses as they are, or a device address that
 * goes through the session's IOTLB (VIRTIO_F_ACCESS_PLATFORM: descriptor and ring addresses are IOVAs).
 */
export type MemorySpace = 'gpa' | 'uva' | 'iova';
export type MemoryReference = `${MemorySpace}:${string}`;

// ---- DTOs --------------------------------------------------------------------------------------------------

/** One decoded message: exactly the object `vhost-lens proxy --json` prints (`kind:"message"`). */
export interface MessageDto {
  kind: 'message';
  session: number;
  seq: number;
  /** Microseconds since the Unix epoch. */
  time: number;
  channel: 'main' | 'backend';
  from: 'frontend' | 'backend';
  code: number;
  name: string;
  reply: boolean;
  needReply: boolean;
  flags: number;
  size: number;
  fds: number;
  fdInfo: Json;
  category: string | null;
  /** Decoded fields; u64 as Hex, bytes as hex text, plus derived names (featureNames, statusNames). */
  payload: { [k: string]: Json } | null;
  replyTo?: number;
  substituted?: string[];
  problems: { code: string; severity: 'error' | 'warning'; message: string }[];
}

export interface FeatureSetDto {
  offered?: Hex;
  acked?: Hex;
  offeredNames?: string[];
  ackedNames?: string[];
}

export interface RegionDto {
  guestPhysAddr: Hex;
  memorySize: Hex;
  userspaceAddr: Hex;
  mmapOffset: Hex;
  addedBy: string;
  /** fd kind as the relay saw it, e.g. "memfd:mem(256M)"; absent when none. */
  fd?: string;
  /** Reference for readMemory / VS Code's memory view (absent in replay: no memory there). */
  memoryReference?: MemoryReference;
}

export interface VringDto {
  index: number;
  num?: number;
  addr?: { flags: number; desc: Hex; used: Hex; avail: Hex; log: Hex };
  base?: { num: number; availIdx?: number; availWrap?: boolean; usedIdx?: number; usedWrap?: boolean };
  stoppedAt?: number;
  stopped: boolean;
  enabled?: boolean;
  kick?: 'fd' | 'no-fd';
  call?: 'fd' | 'no-fd';
  err?: 'fd' | 'no-fd';
}

export interface StateDto {
  id: number;
  device: string;
  owner: boolean;
  features: FeatureSetDto;
  protocolFeatures: FeatureSetDto;
  queueNum: number | null;
  maxMemSlots: number | null;
  memory: RegionDto[];
  vrings: VringDto[];
  status: number | null;
  statusNames: string[] | null;
  backendChannel: 'none' | 'open' | 'closed';
  /** VIRTIO_F_ACCESS_PLATFORM: the IOVA map the front-end gave the back-end (IOTLB_MSG UPDATE/INVALIDATE). */
  iotlb?: IotlbEntryDto[];
}

export interface IotlbEntryDto { iova: Hex; size: Hex; uaddr: Hex; perm: 'NONE' | 'RO' | 'WO' | 'RW' | string; memoryReference: MemoryReference }

export interface DescriptorDto {
  addr: Hex;
  len: number;
  flags: number;
  write: boolean;
  memoryReference?: MemoryReference;
}

export interface ChainDto {
  head: number;
  state: 'inflight' | 'used';
  readable: number;
  writable: number;
  usedLen?: number;
  descriptors: DescriptorDto[];
  /** Decoded payload (blk request, net frame, hex), u64 as Hex. */
  device?: Json;
  error?: string;
}

export interface RingSnapshotDto {
  session: number;
  vring: number;
  layout: 'split' | 'packed';
  num: number;
  /** Split only: avail.idx and used.idx as read now. */
  availIdx?: number;
  usedIdx?: number;
  inflightCount: number;
  inflightExact: boolean;
  chains: ChainDto[];
  errors: string[];
}

/** Ring activity seen by the watcher (`rings: true`) in one poll of one vring. */
export interface RingEventDto {
  session: number;
  vring: number;
  time: number;
  availIdx?: number;
  usedIdx?: number;
  chains: ChainDto[];
  errors: string[];
  resync?: string;
  /** Seen by polling, or captured by the relay exactly at a kick or call (`rings` with `notifiers`). */
  source: 'poll' | 'kick' | 'call';
}

/** Notifier counts of one eventfd interposed by the proxy (`notifiers: true`). */
export interface NotifierDto {
  session: number;
  vring: number;
  what: 'kick' | 'call' | 'err';
  /** Wakeups seen, notifications counted (an eventfd coalesces), their difference. */
  signals: number;
  count: number;
  coalesced: number;
  /** Microseconds since the Unix epoch. */
  first: number;
  last: number;
}

export type TimelineKind = 'message' | 'held' | 'ring' | 'notify' | 'session' | 'channel' | 'connection' | 'error' | 'note';

export interface TimelineEntry {
  /** Increasing from 1 over the debug session. */
  id: number;
  kind: TimelineKind;
  /** Microseconds since the Unix epoch. */
  time: number;
  session?: number;
  phase?: Phase;
  /** The line the Debug Console shows. */
  text: string;
  message?: MessageDto;
  ring?: RingEventDto;
  notify?: NotifierDto;
}

export interface StopDto {
  reason: string;
  description: string;
  /** The held message (not yet relayed), if the stop holds one. */
  held?: MessageDto;
}

export interface MessageTypeDto {
  channel: 'main' | 'backend';
  code: number;
  name: string;
  category: string;
  summary: string;
}

// ---- custom requests ---------------------------------------------------------------------------------------

export interface StateArgs { session?: number }
export interface StateResult {
  mode: 'proxy' | 'backend' | 'replay';
  /** Session shown (the latest unless asked); null before any. */
  session: number | null;
  sessions: number[];
  state: StateDto | null;
  stopped: StopDto | null;
  /** Whether guest memory can be read (false in replay and before a memory table). */
  memoryAvailable: boolean;
  notifiers: NotifierDto[];
}

export interface RingSnapshotArgs { session?: number; vring: number }

export interface TimelineArgs {
  /** First entry id to return (default: the oldest kept). */
  from?: number;
  /** At most this many (default 500, at most 5000). */
  limit?: number;
  kinds?: TimelineKind[];
}
export interface TimelinePage {
  entries: TimelineEntry[];
  /** Entries kept (older ones are dropped past the adapter's cap). */
  total: number;
  /** Id to pass as `from` for the next page, or null at the end. */
  next: number | null;
}

/** Every custom request: name -> argument and result types. */
export interface CustomRequests {
  'vhostLens/state': { args: StateArgs; result: StateResult };
  'vhostLens/ringSnapshot': { args: RingSnapshotArgs; result: RingSnapshotDto };
  'vhostLens/timeline': { args: TimelineArgs; result: TimelinePage };
  'vhostLens/messageTypes': { args: Record<string, never>; result: { messages: MessageTypeDto[]; categories: { id: string; label: string; description: string }[] } };
}
export type CustomRequestName = keyof CustomRequests;
export const CUSTOM_REQUESTS: readonly CustomRequestName[] = ['vhostLens/state', 'vhostLens/ringSnapshot', 'vhostLens/timeline', 'vhostLens/messageTypes'];

/** Every custom event: name -> body type. */
export interface CustomEvents {
  /** New timeline entries (batched per tick). */
  'vhostLens/timeline': { entries: TimelineEntry[] };
  /** The negotiated state of a session changed (ask `vhostLens/state` for it). */
  'vhostLens/stateChanged': { session: number; changes: string[] };
}
export type CustomEventName = keyof CustomEvents;

/** Anything that sends a custom DAP request and resolves with its response body (vscode.DebugSession does). */
export interface CustomRequester {
  customRequest(command: string, args?: unknown): PromiseLike<unknown>;
}

/** Send one custom request, typed by its name. */
export async function sendCustomRequest<K extends CustomRequestName>(
  target: CustomRequester, command: K, args: CustomRequests[K]['args'],
): Promise<CustomRequests[K]['result']> {
  return (await target.customRequest(command, args)) as CustomRequests[K]['result'];
}

/** Narrow a custom event (vscode.DebugSessionCustomEvent or a DAP event) by name. */
export function isCustomEvent<K extends CustomEventName>(e: { event: string; body?: unknown }, name: K): e is { event: K; body: CustomEvents[K] } {
  return e.event === name;
}

/** Parse a memory reference; undefined when it is not one of ours. */
export function parseMemoryReference(ref: string): { space: MemorySpace; addr: bigint } | undefined {
  const m = /^(gpa|uva|iova):(0x[0-9a-fA-F]{1,16}|[0-9]{1,20})$/.exec(ref.trim());
  if (!m) return undefined;
  const addr = BigInt(m[2]);
  if (addr > 0xffff_ffff_ffff_ffffn) return undefined;
  return { space: m[1] as MemorySpace, addr };
}

export const memoryReference = (space: MemorySpace, addr: bigint): MemoryReference => `${space}:0x${addr.toString(16)}`;
