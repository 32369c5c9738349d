// Human-readable and JSON presentation of decoded messages and state, shared by the CLI, capture replay and the adapter.
import { featureNames, protocolFeatureNames, statusNames, type DeviceType } from '../protocol/features';
import { hex } from '../protocol/bytes';
import { IOTLB_TYPES, IOTLB_PERMS } from '../protocol/payloads';
import { toJson, type Json } from './json';
import type { SessionMessage, SessionState, StateChange } from './session';
import type { FdInfo } from '../sys/native';

const h = (v: unknown): string => (typeof v === 'bigint' ? `0x${v.toString(16)}` : typeof v === 'number' ? String(v) : String(v));

export function sizeText(n: number | bigint): string {
  const v = Number(n);
  for (const [u, s] of [[2 ** 30, 'G'], [2 ** 20, 'M'], [2 ** 10, 'K']] as const) if (v >= u && v % u === 0) return `${v / u}${s}`;
  return String(v);
}

export function fdText(f: FdInfo): string {
  if (f.kind === 'memfd') return `memfd:${f.name ?? ''}${f.size !== undefined ? `(${sizeText(f.size)})` : ''}`;
  return f.kind;
}

/** Extra, derived fields merged into the JSON payload (names of bits), never encoded back. */
export function derivedFields(m: SessionMessage, device: DeviceType): Record<string, unknown> {
  const p = m.payload as Record<string, any> | undefined;
  if (!p) return {};
  if (m.name === 'GET_FEATURES' || m.name === 'SET_FEATURES') return p.features !== undefined ? { featureNames: featureNames(p.features, device) } : {};
  if (m.name === 'GET_PROTOCOL_FEATURES' || m.name === 'SET_PROTOCOL_FEATURES') return p.features !== undefined ? { featureNames: protocolFeatureNames(p.features) } : {};
  if ((m.name === 'SET_STATUS' || m.name === 'GET_STATUS') && p.status !== undefined) return { statusNames: statusNames(Number(p.status)) };
  if (m.name === 'IOTLB_MSG' || m.name === 'BACKEND_IOTLB_MSG') return p.type !== undefined ? { typeName: IOTLB_TYPES[p.type] ?? '?', permName: IOTLB_PERMS[p.perm] ?? '?' } : {};
  return {};
}

/** One line of decoded fields, e.g. `index=0 num=256`. */
export function payloadText(m: SessionMessage, device: DeviceType): string {
  const p = m.payload as Record<string, any> | undefined;
  if (!p) return '';
  if ('ack' in p && Object.keys(p).length === 1) return `ack=${p.ack}${p.ack === 0n ? ' (ok)' : ' (failure)'}`;
  switch (m.name) {
    case 'GET_FEATURES': case 'SET_FEATURES':
      return p.features === undefined ? '' : `features=${h(p.features)} [${featureNames(p.features, device).join(',')}]`;
    case 'GET_PROTOCOL_FEATURES': case 'SET_PROTOCOL_FEATURES':
      return p.features === undefined ? '' : `features=${h(p.features)} [${protocolFeatureNames(p.features).join(',')}]`;
    case 'SET_STATUS': case 'GET_STATUS':
      return p.status === undefined ? '' : `status=${h(p.status)} [${statusNames(Number(p.status)).join(',')}]`;
    case 'SET_MEM_TABLE':
      if (!p.regions) return '';
      return `nregions=${p.nregions} ` + (p.regions as any[]).map((r, i) =>
        `[gpa=${h(r.guestPhysAddr)} size=${sizeText(r.memorySize)} uva=${h(r.userspaceAddr)} off=${h(r.mmapOffset)}${m.fdInfo[i] ? ` ${fdText(m.fdInfo[i])}` : ''}]`).join(' ');
    case 'ADD_MEM_REG': case 'REM_MEM_REG':
      return `gpa=${h(p.guestPhysAddr)} size=${sizeText(p.memorySize)} uva=${h(p.userspaceAddr)} off=${h(p.mmapOffset)}${m.fdInfo[0] ? ` ${fdText(m.fdInfo[0])}` : ''}`;
    case 'SET_VRING_KICK': case 'SET_VRING_CALL': case 'SET_VRING_ERR':
      return `index=${p.index} ${p.noFd ? 'no-fd (polling)' : 'eventfd'}`;
    case 'GET_CONFIG': case 'SET_CONFIG':
      return `offset=${p.offset} size=${p.size} flags=${p.flags}${p.data?.byteLength ? ` data=${hex(p.data, 16)}` : ''}`;
  }
  return Object.entries(p).map(([k, v]) => `${k}=${v instanceof Uint8Array ? hex(v, 16) : DECIMAL.has(k) ? String(v) : h(v)}`).join(' ');
}

/** u64 fields that are counts, not addresses. */
const DECIMAL = new Set(['queueNum', 'slots', 'mtu', 'result', 'ack', 'sessionId']);

const arrow = (m: SessionMessage): string => (m.from === 'frontend' ? 'F>B' : 'B>F');

export function timeText(us: number): string {
  const d = new Date(Math.floor(us / 1000));
  return `${d.toISOString().slice(11, 23)}${String(us % 1000).padStart(3, '0')}`;
}

/** The CLI's human line for a message. */
export function messageLine(m: SessionMessage, device: DeviceType): string {
  const name = `${m.name}${m.reply ? ' reply' : ''}`;
  const flags = `${m.needReply ? ' need-reply' : ''}`;
  const fds = m.fds ? ` fds=${m.fds}` : '';
  const prob = m.problems.length ? `  !! ${m.problems.map((p) => p.message).join('; ')}` : '';
  const sub = m.substituted?.length ? ` (relay: ${m.substituted.join(', ')})` : '';
  const chan = m.channel === 'main' ? '' : ' [back-end channel]';
  return `${timeText(m.time)} #${m.seq} ${arrow(m)}${chan} ${name.padEnd(28)} size=${m.size}${fds}${flags} ${payloadText(m, device)}${sub}${prob}`.trimEnd();
}

/** The CLI's JSON object for a message (`kind:"message"`). */
export function messageJson(m: SessionMessage, device: DeviceType): Record<string, Json> {
  return {
    kind: 'message', session: m.session, seq: m.seq, time: m.time, channel: m.channel, from: m.from, code: m.code, name: m.name,
    reply: m.reply, needReply: m.needReply, flags: m.flags, size: m.size, fds: m.fds,
    fdInfo: toJson(m.fdInfo), category: m.category ?? null,
    payload: m.payload ? toJson({ ...m.payload, ...derivedFields(m, device) }) : null,
    ...(m.replyTo !== undefined ? { replyTo: m.replyTo } : {}),
    ...(m.substituted ? { substituted: m.substituted } : {}),
    problems: m.problems.map((p) => ({ code: p.code, severity: p.severity, message: p.message })),
  };
}

export function stateChangeJson(session: number, c: StateChange, st: SessionState): Record<string, Json> {
  const base = { kind: 'state', session } as Record<string, Json>;
  switch (c.what) {
    case 'features':
      return { ...base, what: c.what, ...(c.offered !== undefined ? { offered: toJson(c.offered), offeredNames: featureNames(c.offered, st.device) } : {}),
        ...(c.acked !== undefined ? { acked: toJson(c.acked), ackedNames: featureNames(c.acked, st.device) } : {}) };
    case 'protocol-features':
      return { ...base, what: c.what, ...(c.offered !== undefined ? { offered: toJson(c.offered), offeredNames: protocolFeatureNames(c.offered) } : {}),
        ...(c.acked !== undefined ? { acked: toJson(c.acked), ackedNames: protocolFeatureNames(c.acked) } : {}) };
    case 'memory':
      return { ...base, what: c.what, regions: st.memory.map((r) => toJson({ guestPhysAddr: r.guestPhysAddr, memorySize: r.memorySize, userspaceAddr: r.userspaceAddr, mmapOffset: r.mmapOffset, fd: r.fdInfo ? fdText(r.fdInfo) : null })) };
    case 'vring': {
      const v = st.vrings.get(c.index);
      return { ...base, what: c.what, vring: toJson(v) };
    }
    default:
      return { ...base, ...(toJson(c) as Record<string, Json>) };
  }
}

export function stateChangeLine(c: StateChange, st: SessionState): string {
  switch (c.what) {
    case 'features': return c.acked !== undefined ? `features acked: ${featureNames(c.acked, st.device).join(',')}` : `features offered: ${featureNames(c.offered!, st.device).join(',')}`;
    case 'protocol-features': return c.acked !== undefined ? `protocol features acked: ${protocolFeatureNames(c.acked).join(',')}` : `protocol features offered: ${protocolFeatureNames(c.offered!).join(',')}`;
    case 'memory': return `memory: ${st.memory.length} region(s) ${st.memory.map((r) => `gpa ${h(r.guestPhysAddr)}+${sizeText(r.memorySize)}`).join(', ')}`;
    case 'status': return `status: ${statusNames(c.status).join(',')}`;
    case 'backend-channel': return `back-end channel ${c.state}`;
    case 'device': return `device type: ${c.device}`;
    case 'iotlb': return `IOTLB ${c.op} iova ${h(c.iova)}+${h(c.size)}${c.uaddr !== undefined ? ` -> ${h(c.uaddr)}` : ''}: ${c.entries} entr${c.entries === 1 ? 'y' : 'ies'}`;
    case 'vring': {
      const v = st.vrings.get(c.index)!;
      return `vring ${c.index}: num=${v.num ?? '?'} ${v.addr ? `desc=${h(v.addr.desc)} avail=${h(v.addr.avail)} used=${h(v.addr.used)}` : 'no addresses'} ` +
        `kick=${v.kick ?? '-'} call=${v.call ?? '-'} ${v.enabled ? 'enabled' : 'disabled'}${v.stopped ? ` stopped${v.stoppedAt !== undefined ? ` at ${v.stoppedAt}` : ''}` : ''}`;
    }
  }
}

/** A whole-state snapshot (JSON) for the summary and custom requests. */
export function stateJson(st: SessionState): Record<string, Json> {
  return {
    id: st.id, device: st.device, owner: st.owner,
    features: toJson({ ...st.features, offeredNames: st.features.offered !== undefined ? featureNames(st.features.offered, st.device) : undefined, ackedNames: st.features.acked !== undefined ? featureNames(st.features.acked, st.device) : undefined }),
    protocolFeatures: toJson({ ...st.protocolFeatures, offeredNames: st.protocolFeatures.offered !== undefined ? protocolFeatureNames(st.protocolFeatures.offered) : undefined, ackedNames: st.protocolFeatures.acked !== undefined ? protocolFeatureNames(st.protocolFeatures.acked) : undefined }),
    queueNum: st.queueNum ?? null, maxMemSlots: st.maxMemSlots ?? null,
    memory: st.memory.map((r) => toJson({ guestPhysAddr: r.guestPhysAddr, memorySize: r.memorySize, userspaceAddr: r.userspaceAddr, mmapOffset: r.mmapOffset, addedBy: r.addedBy, fd: r.fdInfo ? fdText(r.fdInfo) : undefined })),
    vrings: [...st.vrings.values()].map((v) => toJson(v)),
    status: st.status ?? null, statusNames: st.status !== undefined ? statusNames(st.status) : null,
    backendChannel: st.backendChannel,
    ...(st.iotlb ? { iotlb: st.iotlb.entries.map((e) => toJson({ iova: e.iova, size: e.size, uaddr: e.uaddr, perm: e.perm })) } : {}),
  };
}
