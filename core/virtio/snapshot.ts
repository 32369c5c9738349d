// On-demand ring snapshot (CLI, debug adapter): ring config from the session's Vring, split/packed dispatch, payloads.
import type { GuestMemoryReader } from '../memory/guestMemory';
import { FEATURE_BIT, hasBit, type DeviceType } from '../protocol/features';
import type { Vring } from '../session/session';
import { snapshotPacked, type PackedOptions, type PackedSnapshot } from './packed';
import { decodePayload } from './payload';
import { RingError, type Chain, type RingConfig } from './ring';
import { snapshotSplit, type SplitOptions, type SplitSnapshot } from './split';

export type RingSnapshot = SplitSnapshot | PackedSnapshot;

export interface SnapshotOptions extends SplitOptions, PackedOptions {
  /** Negotiated (acked) virtio features: packed layout, EVENT_IDX, INDIRECT, ACCESS_PLATFORM, net header size. */
  features?: bigint;
  /** Decode payloads for this device type (default 'unknown': hex). */
  device?: DeviceType;
  /** Decode each chain's payload (default true). */
  payloads?: boolean;
  /** virtio-net control queue index, when known. */
  ctrlQueue?: number;
  /** Data preview bytes for payloads (default 16). */
  preview?: number;
}

/**
 * Ring config for a session vring. Throws RingError 'not-configured' if size or addresses are missing. Under
 * VIRTIO_F_ACCESS_PLATFORM the addresses are IOVAs: the memory the ring is read through translates them (DeviceMemory).
 * The device's next avail index comes from GET_VRING_BASE when the ring was stopped, else from SET_VRING_BASE.
 */
export function ringConfigFromVring(v: Vring, features?: bigint): RingConfig {
  if (v.num === undefined || !v.addr) {
    throw new RingError('not-configured', v.index, `${v.num === undefined ? 'no SET_VRING_NUM' : ''}${v.num === undefined && !v.addr ? ', ' : ''}${!v.addr ? 'no SET_VRING_ADDR' : ''}`);
  }
  const packed = hasBit(features, FEATURE_BIT.RING_PACKED);
  const cfg: RingConfig = {
    index: v.index, num: v.num, desc: v.addr.desc, avail: v.addr.avail, used: v.addr.used, packed,
    eventIdx: hasBit(features, FEATURE_BIT.RING_EVENT_IDX),
    indirect: features === undefined ? true : hasBit(features, FEATURE_BIT.RING_INDIRECT_DESC),
  };
  if (v.stopped && v.stoppedAt !== undefined) {
    // GET_VRING_BASE reply: split = last avail idx; packed = idx | wrap << 15.
    cfg.nextAvail = packed ? v.stoppedAt & 0x7fff : v.stoppedAt & 0xffff;
    if (packed) cfg.nextAvailWrap = (v.stoppedAt & 0x8000) !== 0;
  } else if (v.base) {
    cfg.nextAvail = packed ? v.base.availIdx ?? (v.base.num & 0x7fff) : v.base.num & 0xffff;
    if (packed) {
      cfg.nextAvailWrap = v.base.availWrap ?? (v.base.num & 0x8000) !== 0;
      if (v.base.usedIdx !== undefined) { cfg.nextUsed = v.base.usedIdx; cfg.nextUsedWrap = v.base.usedWrap; }
    }
  }
  return cfg;
}

const isVring = (r: RingConfig | Vring): r is Vring => !('desc' in r);

/** Snapshot one ring. Throws RingError only when the ring as a whole cannot be read; chain problems are in .errors. */
export function snapshotRing(mem: GuestMemoryReader, ring: RingConfig | Vring, opts: SnapshotOptions = {}): RingSnapshot {
  const cfg = isVring(ring) ? ringConfigFromVring(ring, opts.features) : ring;
  const snap = cfg.packed ? snapshotPacked(mem, cfg, opts) : snapshotSplit(mem, cfg, opts);
  if (opts.payloads ?? true) decodePayloads(mem, cfg.index, snap, opts);
  return snap;
}

export function decodePayloads(mem: GuestMemoryReader, vring: number, snap: RingSnapshot, opts: SnapshotOptions): void {
  const ctx = { device: opts.device ?? 'unknown', features: opts.features, ctrlQueue: opts.ctrlQueue, preview: opts.preview } as const;
  const all: Chain[] = [...snap.chains];
  if (snap.kind === 'packed') for (const u of snap.used) if (u.chain) all.push(u.chain);
  for (const c of all) if (c.descs.length) c.payload = decodePayload(mem, c, vring, ctx);
}
