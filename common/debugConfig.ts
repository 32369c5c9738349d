// Launch/attach configurations of the `vhost-user` debug type: their types and the JSON schema for package.json `contributes.debuggers`; no vscode or Node imports.

/** Options every configuration may carry. */
export interface CommonConfig {
  type?: 'vhost-user';
  name?: string;
  /** Watch every live vring through guest memory (ring events in the timeline and the Debug Console). */
  rings?: boolean;
  /** Ring polling rate with `rings` (default 100 Hz). */
  pollHz?: number;
  /** CPU budget of ring polling in % of one core (default 2): busy rings are polled less often. */
  ringCpu?: number;
  /** Interpose on kick/call/err eventfds and count every signal (proxy mode). */
  notifiers?: boolean;
  /** Stop at the first message (held, not yet relayed). */
  stopOnEntry?: boolean;
  /** Release a held message by itself after this many seconds (QEMU blocks while a message is held). 0 = never. */
  autoContinueSeconds?: number;
  /** Device type for names and payload decoding (default: inferred from the negotiation). */
  device?: 'net' | 'blk' | 'fs';
  /** Log the DAP traffic to the Debug Console. */
  trace?: boolean;
}

/** Proxy mode: sit between a front-end (QEMU) and a back-end, both as in the CLI (`[listen:|connect:]PATH`). */
export interface AttachConfig extends CommonConfig {
  request: 'attach';
  /** Default mode listen: QEMU connects to PATH. */
  frontend: string;
  /** Default mode connect: the back-end listens on PATH. */
  backend: string;
  /** Also record the session to this capture file (replayable). */
  capture?: string;
  /** End the debug session after this many vhost-user sessions have ended (default 1; 0 = keep serving). */
  maxSessions?: number;
  /** Listening socket mode (octal text, default "600") and group. */
  socketMode?: string;
  socketGroup?: string;
  /** Do not require a connect-side socket to exist at attach time. */
  wait?: boolean;
}

/** Built-in back-end mode: Vhost Lens is the device (blk on an image file, net on a tap or in loopback). */
export interface BackendLaunchConfig extends Omit<CommonConfig, 'device'> {
  request: 'launch';
  mode: 'backend';
  device: 'blk' | 'net';
  /** UNIX socket the back-end listens on (QEMU connects). */
  socket: string;
  /** Connect to `socket` instead (QEMU listens: server=on). */
  connect?: boolean;
  /** Queues (blk) or queue pairs (net loopback). */
  queues?: number;
  /** blk: raw image file. */
  image?: string;
  /** blk: export read-only. */
  readOnly?: boolean;
  /** blk: GET_ID string (at most 20 bytes). */
  serial?: string;
  /** net: tap interface name, or loopback (frames the guest sends come back to it). */
  tap?: string;
  loopback?: boolean;
  /** net loopback: the responder's addresses (default 10.0.0.1, 52:54:00:00:00:01). */
  ip?: string;
  mac?: string;
  maxSessions?: number;
  socketMode?: string;
  socketGroup?: string;
}

/** Replay mode: step through a capture recorded by `vhost-lens proxy --capture FILE` (no guest memory). */
export interface ReplayLaunchConfig extends CommonConfig {
  request: 'launch';
  mode: 'replay';
  capture: string;
}

export type LaunchConfig = BackendLaunchConfig | ReplayLaunchConfig;
export type VhostDebugConfig = AttachConfig | LaunchConfig;

type Schema = Record<string, unknown>;

const common: Record<string, Schema> = {
  rings: { type: 'boolean', default: false, description: 'Watch every live vring through guest memory: ring activity (chains, decoded payloads) in the timeline and the Debug Console.' },
  pollHz: { type: 'number', default: 100, minimum: 1, maximum: 10000, description: 'Ring polling rate with "rings".' },
  ringCpu: { type: 'number', default: 2, minimum: 0.1, maximum: 100, description: 'CPU budget of ring polling with "rings", in % of one core: busy rings are polled less often so the data plane keeps its CPU.' },
  notifiers: { type: 'boolean', default: false, description: 'Interpose on kick/call/err eventfds and count every signal (proxy mode).' },
  stopOnEntry: { type: 'boolean', default: false, description: 'Stop at the first message, held before it is relayed.' },
  autoContinueSeconds: { type: 'number', default: 0, minimum: 0, description: 'Release a held message by itself after this many seconds. While a message is held QEMU blocks waiting for it (its vCPU and monitor may stall, the guest may hang or time out). 0 = never.' },
  device: { type: 'string', enum: ['net', 'blk', 'fs'], description: 'Device type for names and payload decoding (default: inferred).' },
  trace: { type: 'boolean', default: false, description: 'Log the Debug Adapter Protocol traffic to the Debug Console.' },
};

/** `configurationAttributes` for package.json `contributes.debuggers[type = vhost-user]`. */
export const CONFIGURATION_ATTRIBUTES = {
  attach: {
    required: ['frontend', 'backend'],
    properties: {
      frontend: { type: 'string', description: 'Front-end (QEMU) endpoint: [listen:|connect:]PATH; default listen (QEMU connects to PATH).' },
      backend: { type: 'string', description: 'Back-end endpoint: [connect:|listen:]PATH; default connect (the back-end listens on PATH).' },
      capture: { type: 'string', description: 'Also record the session to this capture file (replay it with "mode": "replay").' },
      maxSessions: { type: 'number', default: 1, minimum: 0, description: 'End the debug session after this many vhost-user sessions have ended (0 = keep serving).' },
      socketMode: { type: 'string', default: '600', pattern: '^[0-7]{3,4}$', description: 'Mode of listening sockets (octal).' },
      socketGroup: { type: 'string', description: 'Group of listening sockets (e.g. the group QEMU runs as).' },
      wait: { type: 'boolean', default: false, description: 'Do not require a connect-side socket to exist when attaching.' },
      ...common,
    },
  },
  launch: {
    required: ['mode'],
    properties: {
      mode: { type: 'string', enum: ['backend', 'replay'], description: '"backend": Vhost Lens is the device; "replay": step through a capture file offline.' },
      device: { type: 'string', enum: ['blk', 'net', 'fs'], description: 'backend: the device to be (blk or net); replay: device type for decoding.' },
      socket: { type: 'string', description: 'backend: UNIX socket to listen on (QEMU connects).' },
      connect: { type: 'boolean', default: false, description: 'backend: connect to "socket" instead (QEMU listens: server=on).' },
      queues: { type: 'number', minimum: 1, maximum: 64, description: 'backend: queues (blk) or queue pairs (net loopback).' },
      serial: { type: 'string', maxLength: 20, description: 'backend blk: GET_ID string.' },
      ip: { type: 'string', description: 'backend net loopback: the responder\'s IPv4 address (default 10.0.0.1).' },
      mac: { type: 'string', description: 'backend net loopback: the responder\'s MAC address (default 52:54:00:00:00:01).' },
      socketMode: { type: 'string', default: '600', pattern: '^[0-7]{3,4}$', description: 'backend: mode of the listening socket (octal).' },
      socketGroup: { type: 'string', description: 'backend: group of the listening socket.' },
      image: { type: 'string', description: 'backend blk: raw image file.' },
      readOnly: { type: 'boolean', default: false, description: 'backend blk: export read-only.' },
      tap: { type: 'string', description: 'backend net: TAP interface (created if absent; needs CAP_NET_ADMIN).' },
      loopback: { type: 'boolean', default: false, description: 'backend net: send the guest\'s frames back to it.' },
      capture: { type: 'string', description: 'replay: capture file recorded by `vhost-lens proxy --capture FILE` or an attach configuration.' },
      maxSessions: { type: 'number', default: 1, minimum: 0, description: 'backend: end after this many sessions (0 = keep serving).' },
      ...Object.fromEntries(Object.entries(common).filter(([k]) => k !== 'device')),
    },
  },
} as const;

/** `initialConfigurations` / `configurationSnippets` bodies. */
export const INITIAL_CONFIGURATIONS: VhostDebugConfig[] = [
  { type: 'vhost-user', request: 'attach', name: 'vhost-user: proxy QEMU <-> back-end', frontend: 'listen:/tmp/vhost-lens.sock', backend: 'connect:/tmp/backend.sock' },
];
export const CONFIGURATION_SNIPPETS: { label: string; description: string; body: VhostDebugConfig }[] = [
  { label: 'vhost-user: proxy', description: 'Sit between QEMU and a vhost-user back-end', body: { type: 'vhost-user', request: 'attach', name: 'vhost-user proxy', frontend: 'listen:/tmp/vhost-lens.sock', backend: 'connect:/tmp/backend.sock' } },
  { label: 'vhost-user: blk back-end', description: 'Be a vhost-user-blk device on an image file', body: { type: 'vhost-user', request: 'launch', name: 'vhost-user blk back-end', mode: 'backend', device: 'blk', socket: '/tmp/vhost-lens-blk.sock', image: '${workspaceFolder}/disk.img' } },
  { label: 'vhost-user: net back-end (loopback)', description: 'Be a vhost-user-net device that loops frames back', body: { type: 'vhost-user', request: 'launch', name: 'vhost-user net back-end', mode: 'backend', device: 'net', socket: '/tmp/vhost-lens-net.sock', loopback: true } },
  { label: 'vhost-user: replay a capture', description: 'Step through a recorded session offline', body: { type: 'vhost-user', request: 'launch', name: 'vhost-user replay', mode: 'replay', capture: '${workspaceFolder}/session.vlcap' } },
];
