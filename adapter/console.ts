// Debug Console commands (help, features, state, regions, vring N, mem ADDR LEN, notifiers, timeline N) and field expressions on the selected message.
import { featureNames, protocolFeatureNames, statusNames } from '../core/protocol/features';
import { fdText, sizeText } from '../core/session/format';
import { chainView } from '../core/session/rings';
import type { Session, SessionMessage } from '../core/session/session';
import type { RingSnapshot } from '../core/virtio/snapshot';
import { memoryReference, type MemorySpace, type NotifierDto } from '../common/dap';
import { compileCondition, conditionScope, type Value } from './breakpoints';
import { chainText, messageTitle, notifierText } from './dto';
import { hexDump } from './memory';
import type { Timeline } from './timeline';
import type { VariableStore, VariableTrees } from './variables';

export interface ConsoleContext {
  session(): Session | undefined;
  message(): { msg: SessionMessage; held: boolean; session: Session } | undefined;
  trees: VariableTrees;
  store: VariableStore;
  read(space: MemorySpace, addr: bigint, len: number): { data: Uint8Array; unreadable: number };
  snapshot(s: Session, vring: number): RingSnapshot;
  notifiers(session: number): NotifierDto[] | undefined;
  timeline: Timeline;
  memoryReferences: boolean;
  stopped(): { reason: string; description: string } | undefined;
}

export interface ConsoleResult { result: string; variablesReference?: number; memoryReference?: string }

export const CONSOLE_HELP = [
  'Vhost Lens Debug Console:',
  '  help                 this text',
  '  features             virtio and protocol features, offered and acked, by name',
  '  state                device, status, memory regions and vrings of the session',
  '  regions              guest memory regions (with memory references for the memory view)',
  '  vring N              state and live contents of vring N (chains, descriptors, decoded payloads)',
  '  mem ADDR [LEN]       hex dump of guest memory: ADDR guest-physical, or gpa:ADDR / uva:ADDR (LEN default 64, at most 4096)',
  '  notifiers            kick/call/err counts (with "notifiers": true)',
  '  timeline [N]         the last N timeline lines (default 20)',
  '  message              the selected message',
  '  EXPRESSION           a condition expression on the selected message, e.g. index == 1, features & 0x100000000, num > 256',
].join('\n');

const hx = (v: bigint | number): string => `0x${v.toString(16)}`;

function needSession(ctx: ConsoleContext): Session {
  const s = ctx.session();
  if (!s) throw new Error('no vhost-user session yet');
  return s;
}

function parseAddress(text: string): { space: MemorySpace; addr: bigint } {
  const m = /^(?:(gpa|uva|iova):)?(0x[0-9a-fA-F]+|\d+)$/.exec(text);
  if (!m) throw new Error(`"${text}" is not an address (0x…, gpa:0x…, uva:0x… or iova:0x…)`);
  return { space: (m[1] as MemorySpace | undefined) ?? 'gpa', addr: BigInt(m[2]) };
}

export function valueText(v: Value): string {
  if (v === undefined) return 'undefined (no such field on this message)';
  if (typeof v === 'bigint') return v >= 0n && v < 10n ? String(v) : `${hx(v < 0n ? -v : v).replace('0x', v < 0n ? '-0x' : '0x')} (${v})`;
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'boolean') return String(v);
  return JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? hx(x) : x));
}

export function evaluateCommand(expression: string, ctx: ConsoleContext): ConsoleResult {
  const text = expression.trim();
  const [cmd, ...rest] = text.split(/\s+/);
  switch (cmd.toLowerCase()) {
    case '':
    case 'help': case '?':
      return { result: CONSOLE_HELP };
    case 'features': {
      const st = needSession(ctx).state;
      const f = (name: string, set: { offered?: bigint; acked?: bigint }, names: (m: bigint) => string[]) => [
        `${name} offered: ${set.offered === undefined ? '-' : `${hx(set.offered)} [${names(set.offered).join(', ')}]`}`,
        `${name} acked:   ${set.acked === undefined ? '-' : `${hx(set.acked)} [${names(set.acked).join(', ')}]`}`,
      ];
      return { result: [...f('features', st.features, (m) => featureNames(m, st.device)), ...f('protocol features', st.protocolFeatures, protocolFeatureNames)].join('\n') };
    }
    case 'state': case 'session': {
      const s = needSession(ctx);
      const st = s.state;
      const stop = ctx.stopped();
      const lines = [
        `session ${st.id}, device ${st.device}, ${s.messages.length} messages${stop ? `; stopped (${stop.reason}): ${stop.description}` : ''}`,
        `status: ${st.status === undefined ? '-' : `${hx(st.status)} [${statusNames(st.status).join(', ')}]`}`,
        `memory: ${st.memory.length} region(s) ${st.memory.map((r) => `gpa ${hx(r.guestPhysAddr)}+${sizeText(r.memorySize)}`).join(', ')}`,
        ...[...st.vrings.values()].sort((a, b) => a.index - b.index).map((v) =>
          `vring ${v.index}: num=${v.num ?? '?'} ${v.enabled === undefined ? '' : v.enabled ? 'enabled' : 'disabled'} kick=${v.kick ?? '-'} call=${v.call ?? '-'}${v.stopped ? ' stopped' : ''}`),
        `back-end channel: ${st.backendChannel}`,
      ];
      return { result: lines.join('\n'), variablesReference: ctx.store.add(() => ctx.trees.session(s)) };
    }
    case 'regions': case 'memory': {
      const s = needSession(ctx);
      const rs = s.state.memory;
      if (!rs.length) return { result: 'no memory regions yet' };
      const lines = rs.map((r, i) => `[${i}] gpa ${hx(r.guestPhysAddr)} + ${sizeText(r.memorySize)} (uva ${hx(r.userspaceAddr)}, offset ${hx(r.mmapOffset)}${r.fdInfo ? `, ${fdText(r.fdInfo)}` : ''})`);
      const live = rs[0].fd !== undefined;
      return { result: lines.join('\n'), ...(live && ctx.memoryReferences ? { memoryReference: memoryReference('gpa', rs[0].guestPhysAddr) } : {}) };
    }
    case 'vring': {
      const s = needSession(ctx);
      const n = Number(rest[0]);
      if (!rest[0] || !Number.isInteger(n) || n < 0) throw new Error('usage: vring N');
      const v = s.state.vrings.get(n);
      if (!v) throw new Error(`vring ${n} is not set up (known: ${[...s.state.vrings.keys()].join(', ') || 'none'})`);
      const head = `vring ${n}: num=${v.num ?? '?'} ${v.addr ? `desc ${hx(v.addr.desc)} avail ${hx(v.addr.avail)} used ${hx(v.addr.used)}` : 'no addresses'} kick=${v.kick ?? '-'} call=${v.call ?? '-'}${v.enabled === undefined ? '' : v.enabled ? ' enabled' : ' disabled'}${v.stopped ? ' stopped' : ''}`;
      let body: string[];
      try {
        const snap = ctx.snapshot(s, n);
        const where = snap.kind === 'split' ? `split: avail.idx ${snap.avail.idx}, used.idx ${snap.used.idx}, ${snap.inflightCount} in flight` : `packed: ${snap.inflightCount} in flight`;
        body = [where, ...snap.chains.map((c) => `  ${chainText(chainView(c))}`), ...snap.errors.map((e) => `  !! ${e.message}`)];
      } catch (e) {
        body = [`contents: ${(e as Error).message}`];
      }
      return { result: [head, ...body].join('\n'), variablesReference: ctx.store.add(() => [ctx.trees.vring(s, v)]) };
    }
    case 'mem': case 'x': {
      if (!rest[0]) throw new Error('usage: mem ADDR [LEN]');
      const { space, addr } = parseAddress(rest[0]);
      const len = rest[1] === undefined ? 64 : Number(rest[1]);
      if (!Number.isInteger(len) || len <= 0 || len > 4096) throw new Error('LEN must be 1..4096');
      const r = ctx.read(space, addr, len);
      const dump = r.data.byteLength ? hexDump(addr, r.data) : '';
      const tail = r.unreadable ? `${dump ? '\n' : ''}(${r.unreadable} byte(s) at ${hx(addr + BigInt(r.data.byteLength))} are in no memory region)` : '';
      return { result: `${space.toUpperCase()} ${hx(addr)}, ${len} bytes:\n${dump}${tail}`, ...(ctx.memoryReferences ? { memoryReference: memoryReference(space, addr) } : {}) };
    }
    case 'notifiers': {
      const s = needSession(ctx);
      const ns = ctx.notifiers(s.state.id);
      return { result: ns?.length ? ns.map(notifierText).join('\n') : 'no notifier counts (set "notifiers": true to interpose on kick/call/err)' };
    }
    case 'timeline': {
      const n = rest[0] === undefined ? 20 : Number(rest[0]);
      if (!Number.isInteger(n) || n <= 0) throw new Error('usage: timeline [N]');
      const all = ctx.timeline.all();
      return { result: all.slice(-n).map((e) => e.text).join('\n') || 'the timeline is empty' };
    }
    case 'message': case 'msg': {
      const fm = ctx.message();
      if (!fm) throw new Error('no message selected');
      return { result: `${messageTitle(fm.msg)} #${fm.msg.seq}${fm.held ? ' (held)' : ''}`, variablesReference: ctx.store.add(() => ctx.trees.message(fm.msg, fm.held, fm.session.state)) };
    }
  }
  // Anything else: a condition expression evaluated on the selected (or held, or latest) message.
  let cond;
  try { cond = compileCondition(text); } catch (e) {
    throw new Error(`${(e as Error).message}\n(type "help" for the commands)`);
  }
  const fm = ctx.message();
  if (!fm) throw new Error('no message to evaluate on yet');
  return { result: valueText(cond.eval(conditionScope(fm.msg))) };
}
