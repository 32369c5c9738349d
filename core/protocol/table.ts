// The one vhost-user message table: every request of both channels, read by codec, labels, breakpoints and docs.
import * as P from './payloads';
import type { PayloadCodec } from './payloads';

export type Channel = 'main' | 'backend';
export type Side = 'frontend' | 'backend';

/** Breakpoint filters and timeline phases group messages by these. */
export type Category =
  | 'negotiation' | 'memory' | 'vring-setup' | 'notification' | 'device' | 'backend-channel'
  | 'migration' | 'iommu' | 'other';

export const CATEGORIES: Record<Category, string> = {
  'negotiation': 'Feature negotiation (features, protocol features, owner, queue count)',
  'memory': 'Guest memory table (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG)',
  'vring-setup': 'Vring setup and teardown (num, addresses, base, enable)',
  'notification': 'Notification fds and in-band notifications (kick, call, err)',
  'device': 'Device status, config space and reset',
  'backend-channel': 'Back-end channel (SET_BACKEND_REQ_FD and back-end requests)',
  'migration': 'Migration, dirty logging, postcopy, inflight tracking, device state',
  'iommu': 'IOTLB messages (VIRTIO_F_ACCESS_PLATFORM)',
  'other': 'Device-specific and rarely used requests',
};

/**
 * How a reply is expected: `always` (the request asks for data), `ack` (a u64 ack only when NEED_REPLY is set
 * and REPLY_ACK negotiated), `conditional` (depends on negotiated state, e.g. SET_LOG_BASE with LOG_SHMFD).
 */
export type ReplyRule = 'always' | 'ack' | 'conditional';

/** File descriptors a message may carry in SCM_RIGHTS. */
export type FdRule =
  | 'none' | 'one' | 'optional'
  | 'per-region'   // exactly one per memory region in the payload
  | 'unless-nofd'  // one unless bit 8 (no fd) of the u64 payload is set
  | 'up-to-8';

/** What the relay does with the message's fds (header-level, decided without decoding the payload). */
export type RelayAction = 'keep-memory-fds' | 'backend-channel' | 'notifier';

export interface Gate { protocol?: string; feature?: string }

export interface MessageSpec {
  readonly channel: Channel;
  readonly code: number;
  readonly name: string;
  readonly oldNames?: readonly string[];
  readonly request: PayloadCodec<any>;
  readonly reply?: PayloadCodec<any>;
  readonly fds: FdRule;
  readonly replyFds: FdRule;
  readonly replyRule: ReplyRule;
  readonly gate?: Gate;
  readonly category: Category;
  readonly summary: string;
  readonly relay?: RelayAction;
  /** vring the message is about, for labels and conditions: true when the payload has an `index`. */
  readonly perVring?: boolean;
}

type Row = Omit<MessageSpec, 'channel' | 'replyFds'> & { replyFds?: FdRule };
const main = (r: Row): MessageSpec => ({ channel: 'main', replyFds: 'none', ...r });
const back = (r: Row): MessageSpec => ({ channel: 'backend', replyFds: 'none', ...r });

const features = P.u64('features');
const vringState = P.vringState;

export const MESSAGES: readonly MessageSpec[] = [
  // ---- front-end -> back-end requests (main socket)
  main({ code: 1, name: 'GET_FEATURES', request: P.empty, reply: features, fds: 'none', replyRule: 'always', category: 'negotiation',
    summary: 'Ask the back-end for its virtio feature bits (bit 30 = protocol features supported).' }),
  main({ code: 2, name: 'SET_FEATURES', request: features, fds: 'none', replyRule: 'ack', category: 'negotiation',
    summary: 'Tell the back-end which virtio features the driver acked (LOG_ALL toggles dirty logging).' }),
  main({ code: 3, name: 'SET_OWNER', request: P.empty, fds: 'none', replyRule: 'ack', category: 'negotiation',
    summary: 'Claim the back-end for this front-end: the session starts.' }),
  main({ code: 4, name: 'RESET_OWNER', request: P.empty, fds: 'none', replyRule: 'ack', category: 'negotiation',
    summary: 'Deprecated: release the session; back-ends ignore it or disable all rings.' }),
  main({ code: 5, name: 'SET_MEM_TABLE', request: P.memTable, reply: P.memTable, fds: 'per-region', replyRule: 'ack', category: 'memory',
    relay: 'keep-memory-fds', summary: 'Replace the whole guest memory table: up to 8 regions, one mmap-able fd each.' }),
  main({ code: 6, name: 'SET_LOG_BASE', request: P.logBase, reply: P.ackU64, fds: 'optional', replyRule: 'conditional', category: 'migration',
    gate: { protocol: 'LOG_SHMFD' }, summary: 'Give the dirty-log area for live migration (shared memory fd with LOG_SHMFD).' }),
  main({ code: 7, name: 'SET_LOG_FD', request: P.empty, fds: 'one', replyRule: 'ack', category: 'migration',
    summary: 'Give an eventfd the back-end signals after updating the dirty log.' }),
  main({ code: 8, name: 'SET_VRING_NUM', request: vringState, fds: 'none', replyRule: 'ack', category: 'vring-setup', perVring: true,
    summary: 'Set the size (number of descriptors) of a vring.' }),
  main({ code: 9, name: 'SET_VRING_ADDR', request: P.vringAddr, fds: 'none', replyRule: 'ack', category: 'vring-setup', perVring: true,
    summary: 'Set a vring\'s descriptor, used and avail addresses (front-end virtual addresses) and log address.' }),
  main({ code: 10, name: 'SET_VRING_BASE', request: P.vringBase, fds: 'none', replyRule: 'ack', category: 'vring-setup', perVring: true,
    summary: 'Set the next avail index the device will read (packed: index and wrap counters).' }),
  main({ code: 11, name: 'GET_VRING_BASE', request: vringState, reply: P.vringBase, fds: 'none', replyRule: 'always', category: 'vring-setup', perVring: true,
    summary: 'Stop a vring and ask where the device stopped (its next avail index).' }),
  main({ code: 12, name: 'SET_VRING_KICK', request: P.vringFd, fds: 'unless-nofd', replyRule: 'ack', category: 'notification', perVring: true,
    relay: 'notifier', summary: 'Give the eventfd the driver kicks to signal new buffers (starts the ring).' }),
  main({ code: 13, name: 'SET_VRING_CALL', request: P.vringFd, fds: 'unless-nofd', replyRule: 'ack', category: 'notification', perVring: true,
    relay: 'notifier', summary: 'Give the eventfd the device signals to interrupt the driver (used buffers).' }),
  main({ code: 14, name: 'SET_VRING_ERR', request: P.vringFd, fds: 'unless-nofd', replyRule: 'ack', category: 'notification', perVring: true,
    relay: 'notifier', summary: 'Give the eventfd the device signals when a vring hits an error.' }),
  main({ code: 15, name: 'GET_PROTOCOL_FEATURES', request: P.empty, reply: features, fds: 'none', replyRule: 'always', category: 'negotiation',
    gate: { feature: 'PROTOCOL_FEATURES' }, summary: 'Ask for the vhost-user protocol features the back-end supports.' }),
  main({ code: 16, name: 'SET_PROTOCOL_FEATURES', request: features, fds: 'none', replyRule: 'ack', category: 'negotiation',
    gate: { feature: 'PROTOCOL_FEATURES' }, summary: 'Enable a subset of the back-end\'s protocol features.' }),
  main({ code: 17, name: 'GET_QUEUE_NUM', request: P.empty, reply: P.u64('queueNum'), fds: 'none', replyRule: 'always', category: 'negotiation',
    gate: { protocol: 'MQ' }, summary: 'Ask how many queues the back-end supports.' }),
  main({ code: 18, name: 'SET_VRING_ENABLE', request: vringState, fds: 'none', replyRule: 'ack', category: 'vring-setup', perVring: true,
    gate: { feature: 'PROTOCOL_FEATURES' }, summary: 'Enable (num=1) or disable (num=0) a vring.' }),
  main({ code: 19, name: 'SEND_RARP', request: P.u64('mac'), fds: 'none', replyRule: 'ack', category: 'other',
    gate: { protocol: 'RARP' }, summary: 'Ask a net back-end to broadcast a RARP for this MAC (after migration).' }),
  main({ code: 20, name: 'NET_SET_MTU', request: P.u64('mtu'), fds: 'none', replyRule: 'ack', category: 'other',
    gate: { protocol: 'MTU' }, summary: 'Tell a net back-end the MTU the driver uses.' }),
  main({ code: 21, name: 'SET_BACKEND_REQ_FD', oldNames: ['SET_SLAVE_REQ_FD'], request: P.empty, fds: 'one', replyRule: 'ack', category: 'backend-channel',
    gate: { protocol: 'BACKEND_REQ' }, relay: 'backend-channel', summary: 'Give the back-end a socket for its own requests to the front-end.' }),
  main({ code: 22, name: 'IOTLB_MSG', request: P.iotlb, reply: P.ackU64, fds: 'none', replyRule: 'always', category: 'iommu',
    gate: { feature: 'ACCESS_PLATFORM' }, summary: 'Update or invalidate the back-end\'s IOTLB (IOVA to front-end address).' }),
  main({ code: 23, name: 'SET_VRING_ENDIAN', request: vringState, fds: 'none', replyRule: 'ack', category: 'vring-setup', perVring: true,
    gate: { protocol: 'CROSS_ENDIAN' }, summary: 'Set a legacy vring\'s endianness (0 little, 1 big).' }),
  main({ code: 24, name: 'GET_CONFIG', request: P.config, reply: P.config, fds: 'none', replyRule: 'always', category: 'device',
    gate: { protocol: 'CONFIG' }, summary: 'Read the device config space (a zero-size reply means failure).' }),
  main({ code: 25, name: 'SET_CONFIG', request: P.config, fds: 'none', replyRule: 'ack', category: 'device',
    gate: { protocol: 'CONFIG' }, summary: 'Write the device config space.' }),
  main({ code: 26, name: 'CREATE_CRYPTO_SESSION', request: P.opaque('crypto session'), reply: P.opaque('crypto session'), fds: 'none', replyRule: 'always',
    category: 'other', gate: { protocol: 'CRYPTO_SESSION' }, summary: 'Create a virtio-crypto session.' }),
  main({ code: 27, name: 'CLOSE_CRYPTO_SESSION', request: P.u64('sessionId'), fds: 'none', replyRule: 'ack', category: 'other',
    gate: { protocol: 'CRYPTO_SESSION' }, summary: 'Close a virtio-crypto session.' }),
  main({ code: 28, name: 'POSTCOPY_ADVISE', request: P.empty, reply: P.opaque('userfaultfd reply'), fds: 'none', replyFds: 'one', replyRule: 'always',
    category: 'migration', gate: { protocol: 'PAGEFAULT' }, summary: 'Ask the back-end for a userfaultfd for postcopy migration.' }),
  main({ code: 29, name: 'POSTCOPY_LISTEN', request: P.empty, fds: 'none', replyRule: 'ack', category: 'migration',
    gate: { protocol: 'PAGEFAULT' }, summary: 'Switch the back-end to postcopy: register its memory with userfaultfd.' }),
  main({ code: 30, name: 'POSTCOPY_END', request: P.empty, reply: P.ackU64, fds: 'none', replyRule: 'always', category: 'migration',
    gate: { protocol: 'PAGEFAULT' }, summary: 'End postcopy migration.' }),
  main({ code: 31, name: 'GET_INFLIGHT_FD', request: P.inflight, reply: P.inflight, fds: 'none', replyFds: 'one', replyRule: 'always',
    category: 'migration', gate: { protocol: 'INFLIGHT_SHMFD' }, summary: 'Ask for the shared inflight-tracking area (survives reconnection).' }),
  main({ code: 32, name: 'SET_INFLIGHT_FD', request: P.inflight, fds: 'one', replyRule: 'ack', category: 'migration',
    gate: { protocol: 'INFLIGHT_SHMFD' }, summary: 'Give a reconnected back-end the inflight-tracking area back.' }),
  main({ code: 33, name: 'GPU_SET_SOCKET', request: P.empty, fds: 'one', replyRule: 'ack', category: 'other',
    summary: 'Give a vhost-user-gpu back-end its display socket.' }),
  main({ code: 34, name: 'RESET_DEVICE', request: P.empty, fds: 'none', replyRule: 'ack', category: 'device',
    gate: { protocol: 'RESET_DEVICE' }, summary: 'Reset the device (rings disabled, back-end state cleared).' }),
  main({ code: 35, name: 'VRING_KICK', request: vringState, fds: 'none', replyRule: 'ack', category: 'notification', perVring: true,
    gate: { protocol: 'INBAND_NOTIFICATIONS' }, summary: 'In-band kick: new buffers on a vring.' }),
  main({ code: 36, name: 'GET_MAX_MEM_SLOTS', request: P.empty, reply: P.u64('slots'), fds: 'none', replyRule: 'always', category: 'memory',
    gate: { protocol: 'CONFIGURE_MEM_SLOTS' }, summary: 'Ask how many memory regions the back-end can map.' }),
  main({ code: 37, name: 'ADD_MEM_REG', request: P.singleRegion, reply: P.singleRegion, fds: 'one', replyRule: 'ack', category: 'memory',
    gate: { protocol: 'CONFIGURE_MEM_SLOTS' }, relay: 'keep-memory-fds', summary: 'Add one guest memory region with its fd.' }),
  main({ code: 38, name: 'REM_MEM_REG', request: P.singleRegion, fds: 'none', replyRule: 'ack', category: 'memory',
    gate: { protocol: 'CONFIGURE_MEM_SLOTS' }, summary: 'Remove one guest memory region (matched by address and size).' }),
  main({ code: 39, name: 'SET_STATUS', request: P.u64('status'), fds: 'none', replyRule: 'ack', category: 'device',
    gate: { protocol: 'STATUS' }, summary: 'Set the virtio device status byte.' }),
  main({ code: 40, name: 'GET_STATUS', request: P.empty, reply: P.u64('status'), fds: 'none', replyRule: 'always', category: 'device',
    gate: { protocol: 'STATUS' }, summary: 'Read the virtio device status byte.' }),
  main({ code: 41, name: 'GET_SHARED_OBJECT', request: P.sharedObject, reply: P.u64('result'), fds: 'none', replyFds: 'optional', replyRule: 'always',
    category: 'other', gate: { protocol: 'SHARED_OBJECT' }, summary: 'Look up a shared object (dma-buf) by UUID.' }),
  main({ code: 42, name: 'SET_DEVICE_STATE_FD', request: P.deviceStateParams, reply: P.u64('result'), fds: 'one', replyFds: 'optional',
    replyRule: 'always', category: 'migration', gate: { protocol: 'DEVICE_STATE' }, summary: 'Open a pipe to save or load the back-end\'s internal state.' }),
  main({ code: 43, name: 'CHECK_DEVICE_STATE', request: P.empty, reply: P.u64('result'), fds: 'none', replyRule: 'always', category: 'migration',
    gate: { protocol: 'DEVICE_STATE' }, summary: 'Ask whether the device state transfer succeeded.' }),
  main({ code: 44, name: 'GET_SHMEM_CONFIG', request: P.empty, reply: P.shmemConfig, fds: 'none', replyRule: 'always', category: 'other',
    gate: { protocol: 'SHMEM' }, summary: 'Ask for the sizes of the device\'s shared memory regions (newest; rust-vmm numbering).' }),

  // ---- back-end -> front-end requests (the SET_BACKEND_REQ_FD socket); numbers restart at 1
  back({ code: 1, name: 'BACKEND_IOTLB_MSG', oldNames: ['SLAVE_IOTLB_MSG'], request: P.iotlb, fds: 'none', replyRule: 'ack', category: 'iommu',
    gate: { feature: 'ACCESS_PLATFORM' }, summary: 'Report an IOTLB miss or access failure to the front-end.' }),
  back({ code: 2, name: 'BACKEND_CONFIG_CHANGE_MSG', oldNames: ['SLAVE_CONFIG_CHANGE_MSG'], request: P.empty, fds: 'none', replyRule: 'ack',
    category: 'device', gate: { protocol: 'CONFIG' }, summary: 'Tell the front-end the device config space changed.' }),
  back({ code: 3, name: 'BACKEND_VRING_HOST_NOTIFIER_MSG', oldNames: ['SLAVE_VRING_HOST_NOTIFIER_MSG'], request: P.vringArea, fds: 'optional',
    replyRule: 'ack', category: 'notification', perVring: true, gate: { protocol: 'HOST_NOTIFIER' },
    summary: 'Offer an fd area the guest can write to notify a vring directly.' }),
  back({ code: 4, name: 'BACKEND_VRING_CALL', request: vringState, fds: 'none', replyRule: 'ack', category: 'notification', perVring: true,
    gate: { protocol: 'INBAND_NOTIFICATIONS' }, summary: 'In-band call: used buffers on a vring.' }),
  back({ code: 5, name: 'BACKEND_VRING_ERR', request: vringState, fds: 'none', replyRule: 'ack', category: 'notification', perVring: true,
    gate: { protocol: 'INBAND_NOTIFICATIONS' }, summary: 'In-band error notification for a vring.' }),
  back({ code: 6, name: 'BACKEND_SHARED_OBJECT_ADD', request: P.sharedObject, fds: 'none', replyRule: 'ack', category: 'other',
    gate: { protocol: 'SHARED_OBJECT' }, summary: 'Register a shared object (dma-buf) UUID with the front-end.' }),
  back({ code: 7, name: 'BACKEND_SHARED_OBJECT_REMOVE', request: P.sharedObject, fds: 'none', replyRule: 'ack', category: 'other',
    gate: { protocol: 'SHARED_OBJECT' }, summary: 'Unregister a shared object UUID.' }),
  back({ code: 8, name: 'BACKEND_SHARED_OBJECT_LOOKUP', request: P.sharedObject, reply: P.u64('result'), fds: 'none', replyFds: 'optional',
    replyRule: 'always', category: 'other', gate: { protocol: 'SHARED_OBJECT' }, summary: 'Look up a shared object by UUID (reply carries its fd).' }),
  back({ code: 9, name: 'BACKEND_SHMEM_MAP', request: P.shmemMap, fds: 'one', replyRule: 'ack', category: 'memory',
    gate: { protocol: 'SHMEM' }, summary: 'Map an fd into a device shared memory region (newest).' }),
  back({ code: 10, name: 'BACKEND_SHMEM_UNMAP', request: P.shmemMap, fds: 'none', replyRule: 'ack', category: 'memory',
    gate: { protocol: 'SHMEM' }, summary: 'Unmap part of a device shared memory region (newest).' }),
  back({ code: 11, name: 'BACKEND_MEM_READ', request: P.opaque('memory read request'), reply: P.opaque('memory read reply'), fds: 'none',
    replyRule: 'always', category: 'memory', summary: 'Proposed: ask the front-end to read guest memory for the back-end.' }),
  back({ code: 12, name: 'BACKEND_MEM_WRITE', request: P.opaque('memory write request'), fds: 'none', replyRule: 'ack', category: 'memory',
    summary: 'Proposed: ask the front-end to write guest memory for the back-end.' }),
];

const byKey = new Map<string, MessageSpec>();
const byName = new Map<string, MessageSpec>();
for (const m of MESSAGES) {
  byKey.set(`${m.channel}:${m.code}`, m);
  byName.set(m.name, m);
  for (const old of m.oldNames ?? []) byName.set(old, m);
}

/** Channel and code together are the key: the back-end channel reuses numbers. */
export function specFor(channel: Channel, code: number): MessageSpec | undefined {
  return byKey.get(`${channel}:${code}`);
}
export function specByName(name: string): MessageSpec | undefined {
  return byName.get(name.toUpperCase().replace(/^VHOST_USER_/, ''));
}

/** Which side sends requests on a channel (replies come from the other side). */
export const requester = (channel: Channel): Side => (channel === 'main' ? 'frontend' : 'backend');
export const otherSide = (s: Side): Side => (s === 'frontend' ? 'backend' : 'frontend');
