// Engine values -> the JSON DTOs of common/dap.ts (u64 as "0x…" strings), and the Debug Console's one-line texts for them.
import { FEATURE_BIT, featureNames, hasBit, protocolFeatureNames, statusNames } from '../core/protocol/features';
import { fdText, messageJson } from '../core/session/format';
import { chainView, type ChainView, type RingEvent } from '../core/session/rings';
import { toJson } from '../core/session/json';
import { IOTLB_PERMS } from '../core/protocol/payloads';
import type { SessionMessage, SessionState } from '../core/session/session';
import type { RingSnapshot } from '../core/virtio/snapshot';
import type { EngineEvent } from '../core/session/tracker';
import {
  memoryReference, type MemorySpace, type ChainDto, type FeatureSetDto, type Json, type MessageDto, type NotifierDto, type RingEventDto, type RingSnapshotDto, type StateDto,
} from '../common/dap';

const hx = (v: bigint): string => `0x${v.toString(16)}`;

/** The message as `vhost-lens proxy --json` prints it. */
export function messageDto(m: SessionMessage, device: SessionState['device']): MessageDto {
  return messageJson(m, device) as unknown as MessageDto;
}

function featureSet(f: { offered?: bigint; acked?: bigint }, names: (m: bigint) => string[]): FeatureSetDto {
  const out: FeatureSetDto = {};
  if (f.offered !== undefined) { out.offered = hx(f.offered); out.offeredNames = names(f.offered); }
  if (f.acked !== undefined) { out.acked = hx(f.acked); out.ackedNames = names(f.acked); }
  return out;
}

/** `memoryAvailable`: whether regions carry fds (live) so they get memory references. */
export function stateDto(st: SessionState): StateDto {
  return {
    id: st.id, device: st.device, owner: st.owner,
    features: featureSet(st.features, (m) => featureNames(m, st.device)),
    protocolFeatures: featureSet(st.protocolFeatures, protocolFeatureNames),
    queueNum: st.queueNum ?? null, maxMemSlots: st.maxMemSlots ?? null,
    memory: st.memory.map((r) => ({
      guestPhysAddr: hx(r.guestPhysAddr), memorySize: hx(r.memorySize), userspaceAddr: hx(r.userspaceAddr), mmapOffset: hx(r.mmapOffset),
      addedBy: r.addedBy, ...(r.fdInfo ? { fd: fdText(r.fdInfo) } : {}),
      ...(r.fd !== undefined ? { memoryReference: memoryReference('gpa', r.guestPhysAddr) } : {}),
    })),
    vrings: [...st.vrings.values()].sort((a, b) => a.index - b.index).map((v) => toJson(v) as unknown as StateDto['vrings'][number]),
    status: st.status ?? null, statusNames: st.status !== undefined ? statusNames(st.status) : null,
    backendChannel: st.backendChannel,
    ...(st.iotlb ? { iotlb: st.iotlb.entries.map((e) => ({ iova: hx(e.iova), size: hx(e.size), uaddr: hx(e.uaddr), perm: IOTLB_PERMS[e.perm] ?? String(e.perm), memoryReference: memoryReference('iova', e.iova) })) } : {}),
  };
}

/** The space of a session's descriptor and ring addresses: IOVAs under VIRTIO_F_ACCESS_PLATFORM, else guest-physical. */
export const deviceSpace = (st: SessionState | undefined): 'iova' | 'gpa' => (hasBit(st?.features.acked, FEATURE_BIT.ACCESS_PLATFORM) ? 'iova' : 'gpa');

export function chainDto(c: ChainView, space: MemorySpace = 'gpa'): ChainDto {
  return {
    head: c.head, state: c.state, readable: c.readable, writable: c.writable, ...(c.usedLen !== undefined ? { usedLen: c.usedLen } : {}),
    descriptors: c.descriptors.map((d) => ({ addr: hx(d.addr), len: d.len, flags: d.flags, write: d.write, memoryReference: memoryReference(space, d.addr) })),
    ...(c.device ? { device: toJson(c.device) } : {}),
    ...(c.error ? { error: c.error } : {}),
  };
}

export function ringSnapshotDto(session: number, vring: number, s: RingSnapshot, space: MemorySpace = 'gpa'): RingSnapshotDto {
  return {
    session, vring, layout: s.kind, num: s.num,
    ...(s.kind === 'split' ? { availIdx: s.avail.idx, usedIdx: s.used.idx } : {}),
    inflightCount: s.inflightCount, inflightExact: s.inflightExact,
    chains: s.chains.map((c) => chainDto(chainView(c), space)),
    errors: s.errors.map((e) => e.message),
  };
}

export function ringEventDto(e: RingEvent, space: MemorySpace = 'gpa'): RingEventDto {
  return {
    session: e.session, vring: e.vring, time: e.time, ...(e.availIdx !== undefined ? { availIdx: e.availIdx } : {}),
    ...(e.usedIdx !== undefined ? { usedIdx: e.usedIdx } : {}), chains: e.chains.map((c) => chainDto(c, space)), errors: e.errors,
    ...(e.resync ? { resync: e.resync } : {}), source: e.source,
  };
}

export function notifierDto(e: Extract<EngineEvent, { kind: 'notify' }>): NotifierDto {
  return { session: e.session, vring: e.vring, what: e.what, signals: e.signals, count: e.count, coalesced: e.count - e.signals, first: e.first, last: e.last };
}

// ---- one-line texts -------------------------------------------------------------------------------------------

const sideText = (s: 'frontend' | 'backend'): string => (s === 'frontend' ? 'front-end' : 'back-end');

/** `SET_VRING_ADDR (9) front-end → back-end` (the stop description). */
export function messageTitle(m: { name: string; code: number; reply: boolean; from: 'frontend' | 'backend'; channel: 'main' | 'backend' }): string {
  const to = m.from === 'frontend' ? 'backend' : 'frontend';
  return `${m.name}${m.reply ? ' reply' : ''} (${m.code}) ${sideText(m.from)} → ${sideText(to)}${m.channel === 'backend' ? ' [back-end channel]' : ''}`;
}

export function chainText(c: ChainView | ChainDto): string {
  const dev = (c.device as { summary?: string } | undefined)?.summary;
  const n = c.descriptors.length;
  const bufs = n ? `${n} desc, ${c.readable} out/${c.writable} in` : '';
  return `#${c.head} ${c.state}${dev ? ` ${dev}` : ''}${bufs ? ` (${bufs})` : ''}${c.usedLen !== undefined ? ` used ${c.usedLen}` : ''}${c.error ? ` !! ${c.error}` : ''}`;
}

export function ringText(e: RingEventDto): string {
  const idx = `${e.availIdx !== undefined ? ` avail ${e.availIdx}` : ''}${e.usedIdx !== undefined ? ` used ${e.usedIdx}` : ''}`;
  const parts = [...e.chains.map(chainText), ...e.errors.map((x) => `!! ${x}`), ...(e.resync && e.resync !== 'start' ? [`resync: ${e.resync}`] : [])];
  return `~ vring ${e.vring}${idx}: ${parts.join('; ')}`;
}

export function notifierText(n: NotifierDto): string {
  return `~ vring ${n.vring} ${n.what}: ${n.count} notification(s) in ${n.signals} wakeup(s)`;
}

export type { Json };
