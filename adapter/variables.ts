// The Variables view of a stopped session: Message, Session, Vrings and Notifiers scopes as lazily expanded trees, with memory references into guest memory.
import type { DebugProtocol } from '@vscode/debugprotocol';
import { featureName, statusNames, PROTOCOL_FEATURES, type DeviceType } from '../core/protocol/features';
import { hex } from '../core/protocol/bytes';
import { derivedFields, fdText, sizeText } from '../core/session/format';
import { chainView, type ChainView } from '../core/session/rings';
import type { Session, SessionMessage, SessionState, Vring } from '../core/session/session';
import type { RingSnapshot } from '../core/virtio/snapshot';
import { memoryReference, type MemorySpace, type NotifierDto } from '../common/dap';
import { chainText, deviceSpace, messageTitle } from './dto';
import { IOTLB_PERMS as PERMS } from '../core/protocol/payloads';

type Var = DebugProtocol.Variable;
type Provider = () => Var[];

/** What the trees read from the session (the debug session implements it). */
export interface VariableContext {
  /** Whether the client asked for memory references. */
  memoryReferences: boolean;
  /** Snapshot one vring now; throws with a reason (replay, no memory, not configured). */
  snapshot(session: Session, vring: number): RingSnapshot;
  notifiers(session: number): NotifierDto[] | undefined;
  notifiersEnabled: boolean;
  /** Why guest memory cannot be read in this mode, if it cannot (replay). */
  memoryUnavailable?: string;
}

const hx = (v: bigint | number): string => `0x${v.toString(16)}`;

/** Variable handles for one stop: reset whenever the session runs again. */
export class VariableStore {
  private readonly providers = new Map<number, Provider>();
  private next = 1;

  reset(): void { this.providers.clear(); this.next = 1; }
  add(p: Provider): number { const id = this.next++; this.providers.set(id, p); return id; }
  get(ref: number): Var[] | undefined {
    const p = this.providers.get(ref);
    return p ? p() : undefined;
  }
}

export class VariableTrees {
  constructor(private readonly store: VariableStore, private readonly ctx: VariableContext) {}

  private leaf(name: string, value: string, o: { mem?: string; hint?: DebugProtocol.VariablePresentationHint; evaluateName?: string } = {}): Var {
    const v: Var = { name, value, variablesReference: 0 };
    if (o.mem && this.ctx.memoryReferences) v.memoryReference = o.mem;
    if (o.hint) v.presentationHint = o.hint;
    if (o.evaluateName) v.evaluateName = o.evaluateName;
    return v;
  }

  private node(name: string, value: string, children: Provider, o: { mem?: string; named?: number; indexed?: number } = {}): Var {
    const v: Var = { name, value, variablesReference: this.store.add(children) };
    if (o.mem && this.ctx.memoryReferences) v.memoryReference = o.mem;
    if (o.named !== undefined) v.namedVariables = o.named;
    if (o.indexed !== undefined) v.indexedVariables = o.indexed;
    return v;
  }

  /** Any decoded value: bigint as hex, bytes as hex, arrays and objects expandable. */
  value(name: string, v: unknown, memOf?: (key: string, v: bigint) => string | undefined, evaluateName?: string): Var {
    if (typeof v === 'bigint') return this.leaf(name, hx(v), { mem: memOf?.(name, v), evaluateName });
    if (typeof v === 'number') return this.leaf(name, String(v), { evaluateName });
    if (typeof v === 'boolean') return this.leaf(name, String(v), { evaluateName });
    if (typeof v === 'string') return this.leaf(name, v, { evaluateName });
    if (v === undefined || v === null) return this.leaf(name, '-');
    if (v instanceof Uint8Array) return this.leaf(name, `${v.byteLength} bytes: ${hex(v, 64)}`);
    if (Array.isArray(v)) {
      return this.node(name, `[${v.length}]`, () => v.map((x, i) => this.value(`[${i}]`, x, memOf)), { indexed: v.length });
    }
    if (typeof v === 'object') {
      const o = v as Record<string, unknown>;
      return this.node(name, this.summary(o), () => Object.entries(o).filter(([, x]) => x !== undefined).map(([k, x]) => this.value(k, x, memOf)));
    }
    return this.leaf(name, String(v));
  }

  private summary(o: Record<string, unknown>): string {
    const parts = Object.entries(o).filter(([, x]) => x !== undefined && (typeof x !== 'object' || x instanceof Uint8Array)).slice(0, 5)
      .map(([k, x]) => `${k}: ${typeof x === 'bigint' ? hx(x) : x instanceof Uint8Array ? `${x.byteLength} bytes` : String(x)}`);
    return `{${parts.join(', ')}${Object.keys(o).length > parts.length ? ', …' : ''}}`;
  }

  // ---- Message ------------------------------------------------------------------------------------------------

  message(m: SessionMessage, held: boolean, st: SessionState): Var[] {
    const device: DeviceType = st.device;
    const memOf = this.ctx.memoryUnavailable ? undefined : messageMemoryRef(m, deviceSpace(st) === 'iova');
    const p = (m.payload ?? {}) as Record<string, unknown>;
    const out: Var[] = [
      this.leaf('message', messageTitle(m)),
      this.leaf('status', held ? 'held: not relayed yet (continue relays it)' : 'relayed'),
      this.leaf('seq', String(m.seq)),
    ];
    for (const [k, v] of Object.entries(p)) if (v !== undefined) out.push(this.value(k, v, memOf, k));
    for (const [k, v] of Object.entries(derivedFields(m, device))) out.push(this.value(k, v));
    out.push(this.node('fds', m.fdInfo.length ? `[${m.fdInfo.map(fdText).join(', ')}]` : '[]', () => m.fdInfo.map((f, i) =>
      this.node(`[${i}]`, fdText(f), () => Object.entries(f).filter(([, x]) => x !== undefined).map(([k, x]) => this.value(k, x)))), { indexed: m.fdInfo.length }));
    if (m.substituted?.length) out.push(this.value('substituted by the relay', m.substituted.join(', ')));
    if (m.replyTo !== undefined) out.push(this.leaf('reply to', `#${m.replyTo}`));
    if (m.replySeq !== undefined) out.push(this.leaf('reply', `#${m.replySeq}`));
    else if (m.expectsReply) out.push(this.leaf('reply', 'expected, not seen yet'));
    const flagNames = [`version ${m.flags & 3}`, ...(m.reply ? ['REPLY'] : []), ...(m.needReply ? ['NEED_REPLY'] : [])];
    out.push(this.node('header', hex(m.bytes.subarray(0, 12)), () => [
      this.leaf('request', `${m.code} (${m.name})`),
      this.leaf('flags', `${hx(m.flags)} [${flagNames.join(', ')}]`),
      this.leaf('size', String(m.size)),
      this.leaf('channel', m.channel === 'main' ? 'main socket' : 'back-end channel'),
      this.leaf('from', m.from === 'frontend' ? 'front-end' : 'back-end'),
      this.leaf('category', m.category ?? '-'),
    ]));
    out.push(this.leaf('raw', `${m.bytes.byteLength} bytes: ${hex(m.bytes, 256)}`));
    if (m.problems.length) out.push(this.node('problems', `${m.problems.length}: ${m.problems[0].message}`, () => m.problems.map((x, i) => this.leaf(`[${i}] ${x.severity}`, x.message))));
    out.push(this.leaf('time', new Date(Math.floor(m.time / 1000)).toISOString()));
    return out;
  }

  // ---- Session ------------------------------------------------------------------------------------------------

  session(s: Session): Var[] {
    const st = s.state;
    const out: Var[] = [this.leaf('session', String(st.id)), this.leaf('device', st.device), this.leaf('owner', String(st.owner))];
    out.push(this.features('features', st.features, (b) => featureName(b, st.device)));
    out.push(this.features('protocol features', st.protocolFeatures, (b) => PROTOCOL_FEATURES[b] ?? `bit${b}`));
    out.push(this.leaf('status', st.status === undefined ? '-' : `${hx(st.status)} [${statusNames(st.status).join(', ')}]`));
    if (st.queueNum !== undefined) out.push(this.leaf('queue count', String(st.queueNum)));
    if (st.maxMemSlots !== undefined) out.push(this.leaf('max memory slots', String(st.maxMemSlots)));
    const live = !this.ctx.memoryUnavailable;
    out.push(this.node('memory regions', `${st.memory.length} region(s)${this.ctx.memoryUnavailable ? ` (${this.ctx.memoryUnavailable})` : ''}`, () => st.memory.map((r, i) =>
      this.node(`[${i}]`, `gpa ${hx(r.guestPhysAddr)} + ${sizeText(r.memorySize)}${r.fdInfo ? ` ${fdText(r.fdInfo)}` : ''}`, () => [
        this.leaf('guestPhysAddr', hx(r.guestPhysAddr), { mem: live && r.fd !== undefined ? memoryReference('gpa', r.guestPhysAddr) : undefined }),
        this.leaf('memorySize', `${hx(r.memorySize)} (${sizeText(r.memorySize)})`),
        this.leaf('userspaceAddr', hx(r.userspaceAddr), { mem: live && r.fd !== undefined ? memoryReference('uva', r.userspaceAddr) : undefined }),
        this.leaf('mmapOffset', hx(r.mmapOffset)),
        this.leaf('fd', r.fdInfo ? fdText(r.fdInfo) : r.fd !== undefined ? 'kept' : 'none kept'),
        this.leaf('added by', `${r.addedBy} #${r.seq}`),
      ], { mem: live && r.fd !== undefined ? memoryReference('gpa', r.guestPhysAddr) : undefined })), { indexed: st.memory.length }));
    out.push(this.leaf('back-end channel', st.backendChannel));
    if (st.iotlb) {
      const es = st.iotlb.entries;
      out.push(this.node('IOTLB', `${es.length} entr${es.length === 1 ? 'y' : 'ies'} (IOVA to front-end address)`, () => es.map((e, i) =>
        this.leaf(`[${i}]`, `iova ${hx(e.iova)} + ${sizeText(e.size)} -> ${hx(e.uaddr)} ${PERMS[e.perm] ?? `perm ${e.perm}`}`, { mem: live ? memoryReference('iova', e.iova) : undefined })), { indexed: es.length }));
    }
    if (st.log) out.push(this.value('dirty log', st.log));
    if (st.config) out.push(this.leaf('config space', `offset ${st.config.offset}: ${hex(st.config.data, 64)}`));
    out.push(this.leaf('messages', String(s.messages.length)));
    const missing = s.missingReplies();
    if (missing.length) out.push(this.leaf('unanswered requests', missing.map((m) => `#${m.seq} ${m.name}`).join(', ')));
    return out;
  }

  private features(name: string, f: { offered?: bigint; acked?: bigint }, bitName: (b: number) => string): Var {
    const value = f.acked !== undefined ? `acked ${hx(f.acked)}` : f.offered !== undefined ? `offered ${hx(f.offered)}` : 'not negotiated yet';
    return this.node(name, value, () => {
      const out: Var[] = [this.leaf('offered', f.offered === undefined ? '-' : hx(f.offered)), this.leaf('acked', f.acked === undefined ? '-' : hx(f.acked))];
      const all = (f.offered ?? 0n) | (f.acked ?? 0n);
      for (let b = 0; b < 64; b++) {
        const bit = 1n << BigInt(b);
        if (!(all & bit)) continue;
        const o = f.offered !== undefined && (f.offered & bit) !== 0n, a = f.acked !== undefined && (f.acked & bit) !== 0n;
        out.push(this.leaf(bitName(b), [o ? 'offered' : f.offered !== undefined ? 'not offered' : '', a ? 'acked' : f.acked !== undefined ? 'not acked' : ''].filter(Boolean).join(', ') + ` (bit ${b})`));
      }
      return out;
    });
  }

  // ---- Vrings -------------------------------------------------------------------------------------------------

  vrings(s: Session): Var[] {
    const vs = [...s.state.vrings.values()].sort((a, b) => a.index - b.index);
    if (!vs.length) return [this.leaf('vrings', 'none set up yet')];
    return vs.map((v) => this.vring(s, v));
  }

  vring(s: Session, v: Vring): Var {
    const state = `num=${v.num ?? '?'} ${v.enabled === undefined ? '' : v.enabled ? 'enabled ' : 'disabled '}kick=${v.kick ?? '-'} call=${v.call ?? '-'}${v.stopped ? ` stopped${v.stoppedAt !== undefined ? ` at ${v.stoppedAt}` : ''}` : ''}`;
    return this.node(`vring ${v.index}`, state, () => {
      const out: Var[] = [this.leaf('num', v.num === undefined ? '-' : String(v.num))];
      if (v.addr) {
        const uva = (a: bigint): string | undefined => (this.ctx.memoryUnavailable ? undefined : memoryReference('uva', a));
        out.push(this.node('addresses (front-end virtual)', `desc ${hx(v.addr.desc)} avail ${hx(v.addr.avail)} used ${hx(v.addr.used)}`, () => [
          this.leaf('desc', hx(v.addr!.desc), { mem: uva(v.addr!.desc) }),
          this.leaf('avail', hx(v.addr!.avail), { mem: uva(v.addr!.avail) }),
          this.leaf('used', hx(v.addr!.used), { mem: uva(v.addr!.used) }),
          this.leaf('log', hx(v.addr!.log)),
          this.leaf('flags', hx(v.addr!.flags)),
        ]));
      } else out.push(this.leaf('addresses', 'no SET_VRING_ADDR yet'));
      if (v.base) out.push(this.value('base', v.base));
      for (const k of ['enabled', 'stopped', 'stoppedAt', 'kick', 'call', 'err'] as const) if (v[k] !== undefined) out.push(this.value(k, v[k]));
      out.push(this.ring(s, v));
      return out;
    });
  }

  private ring(s: Session, v: Vring): Var {
    if (this.ctx.memoryUnavailable) return this.leaf('ring', `contents not available: ${this.ctx.memoryUnavailable}`);
    let snap: RingSnapshot;
    try { snap = this.ctx.snapshot(s, v.index); } catch (e) { return this.leaf('ring', `not readable: ${(e as Error).message}`); }
    const where = snap.kind === 'split' ? `split, avail.idx ${snap.avail.idx}, used.idx ${snap.used.idx}, ${snap.inflightCount} in flight` : `packed, ${snap.inflightCount} in flight`;
    const chains = snap.chains.map((c) => chainView(c));
    return this.node('ring', `${where}, ${chains.length} chain(s) visible`, () => {
      const out: Var[] = [];
      if (snap.kind === 'split') {
        out.push(this.leaf('avail.idx', String(snap.avail.idx)), this.leaf('used.idx', String(snap.used.idx)));
        out.push(this.leaf('avail.flags', hx(snap.avail.flags)), this.leaf('used.flags', hx(snap.used.flags)));
      }
      out.push(this.leaf('in flight', `${snap.inflightCount}${snap.inflightExact ? '' : ' (best guess)'}`));
      out.push(this.node('chains', `[${chains.length}]`, () => chains.map((c, i) => this.chain(`[${i}]`, c, deviceSpace(s.state))), { indexed: chains.length }));
      if (snap.errors.length) out.push(this.node('errors', `${snap.errors.length}: ${snap.errors[0].message}`, () => snap.errors.map((e, i) => this.leaf(`[${i}]`, e.message))));
      return out;
    });
  }

  chain(name: string, c: ChainView, space: MemorySpace = 'gpa'): Var {
    return this.node(name, chainText(c), () => {
      const out: Var[] = [this.leaf('head', String(c.head)), this.leaf('state', c.state)];
      if (c.usedLen !== undefined) out.push(this.leaf('used length', String(c.usedLen)));
      out.push(this.node('descriptors', `[${c.descriptors.length}]`, () => c.descriptors.map((d, i) =>
        this.leaf(`[${i}]`, `${hx(d.addr)} len ${d.len} ${d.write ? 'device-writable' : 'device-readable'} flags ${hx(d.flags)}`, { mem: memoryReference(space, d.addr) })),
      { indexed: c.descriptors.length }));
      if (c.device) out.push(this.value('payload', c.device));
      if (c.error) out.push(this.leaf('error', c.error));
      return out;
    });
  }

  // ---- Notifiers ----------------------------------------------------------------------------------------------

  notifiers(s: Session): Var[] {
    if (!this.ctx.notifiersEnabled) return [this.leaf('notifiers', 'not interposed: set "notifiers": true (proxy mode) to count kicks and calls')];
    const ns = this.ctx.notifiers(s.state.id) ?? [];
    if (!ns.length) return [this.leaf('notifiers', 'no kick/call/err signal seen yet')];
    return ns.map((n) => this.node(`vring ${n.vring} ${n.what}`, `${n.count} notification(s) in ${n.signals} wakeup(s)`, () => [
      this.leaf('notifications', String(n.count)),
      this.leaf('wakeups', String(n.signals)),
      this.leaf('coalesced', String(n.coalesced)),
      this.leaf('first', new Date(Math.floor(n.first / 1000)).toISOString()),
      this.leaf('last', new Date(Math.floor(n.last / 1000)).toISOString()),
    ]));
  }
}

/** Memory references for the address fields of a message payload (regions, vring addresses). */
export function messageMemoryRef(m: SessionMessage, iova = false): (key: string, v: bigint) => string | undefined {
  const vringAddr = m.name === 'SET_VRING_ADDR';
  const ringSpace = iova ? 'iova' : 'uva';
  return (key, v) => {
    if (key === 'guestPhysAddr') return memoryReference('gpa', v);
    if (key === 'userspaceAddr') return memoryReference('uva', v);
    if (vringAddr && (key === 'desc' || key === 'avail' || key === 'used')) return memoryReference(ringSpace, v);
    return undefined;
  };
}
