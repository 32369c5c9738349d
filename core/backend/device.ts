// The contract between the vhost-user protocol side (vhost.ts) and a device model (blk, net); no I/O here.
import type { DeviceMemory } from './memory';
import type { VirtQueue } from './virtqueue';
import type { EventPump } from '../node/pump';

export const VIRTIO_F_VERSION_1 = 32;
export const VIRTIO_F_RING_PACKED = 34;
export const VIRTIO_RING_F_INDIRECT_DESC = 28;
export const VIRTIO_RING_F_EVENT_IDX = 29;
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;

export const bit = (n: number): bigint => 1n << BigInt(n);
export const has = (mask: bigint, n: number): boolean => ((mask >> BigInt(n)) & 1n) === 1n;

/** What a device gets from the session it serves. */
export interface DeviceContext {
  readonly mem: DeviceMemory;
  readonly queues: readonly VirtQueue[];
  readonly pump: EventPump;
  /** Report a problem of the guest's making (rate-limited by the session): never thrown at the pump. */
  report(message: string): void;
  /** Process this ring again on the next turn of the pump (after a device yielded its time slice). */
  rerun(q: VirtQueue): void;
}

export interface Device {
  readonly kind: 'blk' | 'net';
  /** Virtio feature bits offered by GET_FEATURES (PROTOCOL_FEATURES is added by the session). */
  readonly features: bigint;
  /** vhost-user protocol features offered by GET_PROTOCOL_FEATURES. */
  readonly protocolFeatures: bigint;
  /** Number of vrings the device serves (GET_QUEUE_NUM answers in the device's own unit: queueNum). */
  readonly vrings: number;
  readonly queueNum: number;
  /** Config space bytes (GET_CONFIG); undefined when the device has none. */
  config?(): Uint8Array;
  /** A session starts (a front-end connected). */
  attach(ctx: DeviceContext): void;
  /** Features the driver acked (SET_FEATURES). */
  setFeatures(features: bigint): void;
  /** The driver kicked, or the ring just became runnable: process what is available. */
  kick(q: VirtQueue): void;
  /** The ring stopped (GET_VRING_BASE) or was disabled. */
  stopped?(q: VirtQueue): void;
  /** SEND_RARP: announce this MAC. */
  rarp?(mac: Uint8Array): void;
  /** One-line state for stats and the session end. */
  describe(): Record<string, number | string>;
  /** The session ended (the front-end left): forget its memory and rings, keep the backing resource. */
  detach(): void;
  /** The program stops: release the image / TAP device. */
  close(): void;
}
