// Message breakpoints: name/glob patterns, category filters, a small safe condition language over decoded fields, hit counts; pure (no DAP, no engine).
import { MESSAGES, CATEGORIES, type Category, type Channel, type MessageSpec } from '../core/protocol/table';

// ---- the condition language ---------------------------------------------------------------------------------
//
// C-like expressions over a message's decoded fields, evaluated with bigint arithmetic (no eval, no Function):
//   index == 1        num > 256        features & 0x100000000        from == 'frontend' && !reply
//   regions[0].guestPhysAddr >= 0x100000        bit(32) & features        len(regions) > 1
// Identifiers are payload fields first, then message fields (name, code, seq, session, channel, from, reply,
// needReply, flags, size, fds, category). A missing field is `undefined`: comparisons with it are false.

export class ConditionError extends Error {}

export type Value = bigint | string | boolean | undefined | Value[] | { [k: string]: Value };

type Node =
  | { t: 'lit'; v: Value }
  | { t: 'id'; name: string }
  | { t: 'member'; obj: Node; key: string }
  | { t: 'index'; obj: Node; index: Node }
  | { t: 'call'; fn: string; args: Node[] }
  | { t: 'unary'; op: string; arg: Node }
  | { t: 'binary'; op: string; left: Node; right: Node };

const MAX_SOURCE = 1000;
const MAX_DEPTH = 64;
const FUNCTIONS: Record<string, number> = { bit: 1, len: 1, has: 2 };

interface Token { k: 'num' | 'str' | 'id' | 'op' | 'end'; v: string; pos: number }

function tokenize(src: string): Token[] {
  const out: Token[] = [];
  const ops = ['<<', '>>', '<=', '>=', '==', '!=', '&&', '||', '<', '>', '&', '|', '^', '~', '!', '+', '-', '*', '/', '%', '(', ')', '[', ']', '.', ',', '='];
  let i = 0;
  while (i < src.length) {
    const c = src[i];
    if (/\s/.test(c)) { i++; continue; }
    const rest = src.slice(i);
    let m = /^(0x[0-9a-fA-F_]+|0b[01_]+|[0-9][0-9_]*)n?/.exec(rest);
    if (m) { out.push({ k: 'num', v: m[1].replace(/_/g, ''), pos: i }); i += m[0].length; continue; }
    m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(rest);
    if (m) { out.push({ k: 'id', v: m[0], pos: i }); i += m[0].length; continue; }
    if (c === '"' || c === "'") {
      const end = src.indexOf(c, i + 1);
      if (end < 0) throw new ConditionError(`unterminated string at ${i + 1}`);
      out.push({ k: 'str', v: src.slice(i + 1, end), pos: i });
      i = end + 1;
      continue;
    }
    const op = ops.find((o) => rest.startsWith(o));
    if (!op) throw new ConditionError(`unexpected "${c}" at ${i + 1}`);
    out.push({ k: 'op', v: op === '=' ? '==' : op, pos: i });
    i += op.length;
  }
  out.push({ k: 'end', v: '', pos: src.length });
  return out;
}

/** Binary operators by precedence, lowest first. */
const LEVELS: string[][] = [['||'], ['&&'], ['|'], ['^'], ['&'], ['==', '!='], ['<', '<=', '>', '>='], ['<<', '>>'], ['+', '-'], ['*', '/', '%']];

class Parser {
  private i = 0;
  private depth = 0;
  constructor(private readonly toks: Token[]) {}

  private peek(): Token { return this.toks[this.i]; }
  private next(): Token { return this.toks[this.i++]; }
  private isOp(v: string): boolean { const t = this.peek(); return t.k === 'op' && t.v === v; }
  private expect(v: string): void {
    const t = this.next();
    if (t.k !== 'op' || t.v !== v) throw new ConditionError(`expected "${v}" at ${t.pos + 1}${t.k === 'end' ? ' (end of condition)' : `, found "${t.v}"`}`);
  }

  parse(): Node {
    const n = this.binary(0);
    const t = this.peek();
    if (t.k !== 'end') throw new ConditionError(`unexpected "${t.v}" at ${t.pos + 1}`);
    return n;
  }

  private enter(): void { if (++this.depth > MAX_DEPTH) throw new ConditionError('condition nested too deeply'); }

  private binary(level: number): Node {
    if (level >= LEVELS.length) return this.unary();
    this.enter();
    let left = this.binary(level + 1);
    for (;;) {
      const t = this.peek();
      if (t.k !== 'op' || !LEVELS[level].includes(t.v)) break;
      this.next();
      left = { t: 'binary', op: t.v, left, right: this.binary(level + 1) };
    }
    this.depth--;
    return left;
  }

  private unary(): Node {
    const t = this.peek();
    if (t.k === 'op' && ['!', '~', '-'].includes(t.v)) {
      this.next();
      this.enter();
      const arg = this.unary();
      this.depth--;
      return { t: 'unary', op: t.v, arg };
    }
    return this.postfix(this.primary());
  }

  private postfix(n: Node): Node {
    for (;;) {
      if (this.isOp('.')) {
        this.next();
        const t = this.next();
        if (t.k !== 'id' && t.k !== 'num') throw new ConditionError(`expected a field name after "." at ${t.pos + 1}`);
        n = { t: 'member', obj: n, key: t.v };
      } else if (this.isOp('[')) {
        this.next();
        this.enter();
        const index = this.binary(0);
        this.depth--;
        this.expect(']');
        n = { t: 'index', obj: n, index };
      } else return n;
    }
  }

  private primary(): Node {
    const t = this.next();
    switch (t.k) {
      case 'num': return { t: 'lit', v: BigInt(t.v) };
      case 'str': return { t: 'lit', v: t.v };
      case 'id': {
        if (t.v === 'true' || t.v === 'false') return { t: 'lit', v: t.v === 'true' };
        if (t.v === 'undefined' || t.v === 'null') return { t: 'lit', v: undefined };
        if (this.isOp('(')) {
          const arity = FUNCTIONS[t.v];
          if (arity === undefined) throw new ConditionError(`unknown function ${t.v}() (known: ${Object.keys(FUNCTIONS).join(', ')})`);
          this.next();
          const args: Node[] = [];
          this.enter();
          if (!this.isOp(')')) {
            args.push(this.binary(0));
            while (this.isOp(',')) { this.next(); args.push(this.binary(0)); }
          }
          this.depth--;
          this.expect(')');
          if (args.length !== arity) throw new ConditionError(`${t.v}() takes ${arity} argument(s)`);
          return { t: 'call', fn: t.v, args };
        }
        return { t: 'id', name: t.v };
      }
      case 'op':
        if (t.v === '(') {
          this.enter();
          const n = this.binary(0);
          this.depth--;
          this.expect(')');
          return n;
        }
        throw new ConditionError(`unexpected "${t.v}" at ${t.pos + 1}`);
      default:
        throw new ConditionError('incomplete condition');
    }
  }
}

/** A compiled condition. */
export interface Condition {
  readonly source: string;
  /** Identifiers it reads (for diagnostics). */
  readonly names: string[];
  eval(scope: Record<string, unknown>): Value;
  test(scope: Record<string, unknown>): boolean;
}

export function compileCondition(source: string): Condition {
  if (source.length > MAX_SOURCE) throw new ConditionError(`condition longer than ${MAX_SOURCE} characters`);
  const ast = new Parser(tokenize(source)).parse();
  const names = new Set<string>();
  const walk = (n: Node): void => {
    switch (n.t) {
      case 'id': names.add(n.name); break;
      case 'member': walk(n.obj); break;
      case 'index': walk(n.obj); walk(n.index); break;
      case 'call': n.args.forEach(walk); break;
      case 'unary': walk(n.arg); break;
      case 'binary': walk(n.left); walk(n.right); break;
    }
  };
  walk(ast);
  return {
    source, names: [...names],
    eval: (scope) => evaluate(ast, scope),
    test: (scope) => truthy(evaluate(ast, scope)),
  };
}

/** Engine values (numbers, bigints, bytes, nested objects) as condition values. */
export function toValue(v: unknown, depth = 0): Value {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'bigint' || typeof v === 'string' || typeof v === 'boolean') return v;
  if (typeof v === 'number') return Number.isInteger(v) ? BigInt(v) : undefined;
  if (depth > 8) return undefined;
  if (v instanceof Uint8Array) return Array.from(v, (b) => BigInt(b));
  if (Array.isArray(v)) return v.map((x) => toValue(x, depth + 1));
  if (typeof v === 'object') {
    const out: Record<string, Value> = {};
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) out[k] = toValue(x, depth + 1);
    return out;
  }
  return undefined;
}

export function truthy(v: Value): boolean {
  if (v === undefined) return false;
  if (typeof v === 'bigint') return v !== 0n;
  if (typeof v === 'string') return v.length > 0;
  if (typeof v === 'boolean') return v;
  return true;
}

const asInt = (v: Value): bigint | undefined => (typeof v === 'bigint' ? v : typeof v === 'boolean' ? (v ? 1n : 0n) : undefined);
const MAX_SHIFT = 1024n;

function evaluate(n: Node, scope: Record<string, unknown>): Value {
  switch (n.t) {
    case 'lit': return n.v;
    case 'id': return Object.prototype.hasOwnProperty.call(scope, n.name) ? toValue(scope[n.name]) : undefined;
    case 'member': {
      const o = evaluate(n.obj, scope);
      if (o === undefined || typeof o !== 'object' || Array.isArray(o)) return n.key === 'length' && Array.isArray(o) ? BigInt(o.length) : undefined;
      return Object.prototype.hasOwnProperty.call(o, n.key) ? o[n.key] : undefined;
    }
    case 'index': {
      const o = evaluate(n.obj, scope), i = asInt(evaluate(n.index, scope));
      if (!Array.isArray(o) || i === undefined || i < 0n || i >= BigInt(o.length)) return undefined;
      return o[Number(i)];
    }
    case 'call': {
      const a = n.args.map((x) => evaluate(x, scope));
      if (n.fn === 'bit') { const b = asInt(a[0]); return b === undefined || b < 0n || b > MAX_SHIFT ? undefined : 1n << b; }
      if (n.fn === 'len') { const x = a[0]; return Array.isArray(x) ? BigInt(x.length) : typeof x === 'string' ? BigInt(x.length) : undefined; }
      // has(mask, bit): bit `bit` of `mask` is set.
      const m = asInt(a[0]), b = asInt(a[1]);
      return m === undefined || b === undefined || b < 0n || b > MAX_SHIFT ? undefined : ((m >> b) & 1n) === 1n;
    }
    case 'unary': {
      const v = evaluate(n.arg, scope);
      if (n.op === '!') return !truthy(v);
      const i = asInt(v);
      if (i === undefined) return undefined;
      return n.op === '-' ? -i : ~i;
    }
    case 'binary': {
      if (n.op === '&&') { const l = evaluate(n.left, scope); return truthy(l) ? truthy(evaluate(n.right, scope)) : false; }
      if (n.op === '||') { const l = evaluate(n.left, scope); return truthy(l) ? true : truthy(evaluate(n.right, scope)); }
      const l = evaluate(n.left, scope), r = evaluate(n.right, scope);
      if (n.op === '==' || n.op === '!=') {
        if (l === undefined || r === undefined) return false;
        const eq = equal(l, r);
        return eq === undefined ? false : n.op === '==' ? eq : !eq;
      }
      if (typeof l === 'string' && typeof r === 'string') {
        switch (n.op) {
          case '<': return l < r;
          case '<=': return l <= r;
          case '>': return l > r;
          case '>=': return l >= r;
          case '+': return l + r;
          default: return undefined;
        }
      }
      const a = asInt(l), b = asInt(r);
      if (a === undefined || b === undefined) return n.op === '<' || n.op === '<=' || n.op === '>' || n.op === '>=' ? false : undefined;
      switch (n.op) {
        case '<': return a < b;
        case '<=': return a <= b;
        case '>': return a > b;
        case '>=': return a >= b;
        case '&': return a & b;
        case '|': return a | b;
        case '^': return a ^ b;
        case '<<': return b < 0n || b > MAX_SHIFT ? undefined : a << b;
        case '>>': return b < 0n || b > MAX_SHIFT ? undefined : a >> b;
        case '+': return a + b;
        case '-': return a - b;
        case '*': return a * b;
        case '/': return b === 0n ? undefined : a / b;
        case '%': return b === 0n ? undefined : a % b;
      }
      return undefined;
    }
  }
}

function equal(l: Value, r: Value): boolean | undefined {
  if (typeof l === 'string' || typeof r === 'string') {
    return typeof l === 'string' && typeof r === 'string' ? l === r : false;
  }
  const a = asInt(l), b = asInt(r);
  if (a === undefined || b === undefined) return undefined;
  return a === b;
}

// ---- hit counts --------------------------------------------------------------------------------------------

/** `N` (the Nth hit and after), `>= N`, `> N`, `== N`, `< N`, `<= N`, `% N` (every Nth). */
export interface HitCondition { op: '>=' | '>' | '==' | '<' | '<=' | '%'; n: number; source: string }

export function parseHitCondition(source: string): HitCondition {
  const m = /^\s*(>=|>|===?|=|<=|<|%)?\s*(\d{1,9})\s*$/.exec(source);
  if (!m) throw new ConditionError(`hit count "${source}": use N, >= N, > N, == N, < N, <= N or % N`);
  const op = (m[1] === undefined ? '>=' : m[1].startsWith('=') ? '==' : m[1]) as HitCondition['op'];
  const n = Number(m[2]);
  if (op === '%' && n === 0) throw new ConditionError('hit count "% 0" never matches');
  return { op, n, source };
}

export function hitMatches(h: HitCondition, count: number): boolean {
  switch (h.op) {
    case '>=': return count >= h.n;
    case '>': return count > h.n;
    case '==': return count === h.n;
    case '<': return count < h.n;
    case '<=': return count <= h.n;
    case '%': return count % h.n === 0;
  }
}

// ---- message patterns ----------------------------------------------------------------------------------------

export type ReplyMode = 'request' | 'reply' | 'any';

export interface MessagePattern {
  source: string;
  specs: MessageSpec[];
  reply: ReplyMode;
}

const normalise = (s: string): string => s.trim().toUpperCase().replace(/^VHOST_USER_/, '');

function globRegex(glob: string): RegExp {
  const body = glob.replace(/[.+^${}()|\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.');
  return new RegExp(`^${body}$`);
}

/**
 * A function breakpoint name: `NAME`, a glob (`SET_VRING_*`, `*MEM*`), `main:12` / `backend:3` by code, an optional
 * `main:`/`backend:` channel prefix, and an optional ` reply` (replies only) or ` any` (requests and replies) suffix.
 */
export function parsePattern(source: string): MessagePattern {
  let text = source.trim();
  let reply: ReplyMode = 'request';
  const suffix = /\s+(reply|replies|any)$/i.exec(text);
  if (suffix) { reply = suffix[1].toLowerCase() === 'any' ? 'any' : 'reply'; text = text.slice(0, suffix.index).trim(); }
  let channel: Channel | undefined;
  const pre = /^(main|backend):\s*/i.exec(text);
  if (pre) { channel = pre[1].toLowerCase() as Channel; text = text.slice(pre[0].length); }
  if (!text) throw new ConditionError('empty breakpoint name: give a message name, a glob like SET_VRING_*, or main:CODE');
  if (/^\d+$/.test(text)) {
    const code = Number(text);
    const specs = MESSAGES.filter((m) => m.code === code && (channel ? m.channel === channel : m.channel === 'main'));
    if (!specs.length) throw new ConditionError(`no ${channel ?? 'main'} channel message has code ${code}`);
    return { source, specs, reply };
  }
  const name = normalise(text);
  if (!/^[A-Z0-9_*?]+$/.test(name)) throw new ConditionError(`"${text}" is not a message name or glob (letters, digits, _, * and ?)`);
  const re = globRegex(name);
  const specs = MESSAGES.filter((m) => (!channel || m.channel === channel) && (re.test(m.name) || (m.oldNames ?? []).some((o) => re.test(o))));
  if (!specs.length) throw new ConditionError(`no message matches "${text}" (see the message table: vhost-lens table)`);
  return { source, specs, reply };
}

// ---- the breakpoint set ----------------------------------------------------------------------------------------

/** What a message looks like to breakpoints (SessionMessage is one). */
export interface MessageLike {
  channel: Channel;
  code: number;
  name: string;
  reply: boolean;
  category?: Category;
  payload?: Record<string, unknown>;
  seq?: number;
  session?: number;
  from?: string;
  needReply?: boolean;
  flags?: number;
  size?: number;
  fds?: number;
}

/** The scope a condition sees: payload fields over message fields. */
export function conditionScope(m: MessageLike): Record<string, unknown> {
  const base: Record<string, unknown> = {
    name: m.name, code: m.code, channel: m.channel, reply: m.reply, category: m.category,
    seq: m.seq, session: m.session, from: m.from, needReply: m.needReply, flags: m.flags, size: m.size, fds: m.fds,
    payload: m.payload,
  };
  return { ...base, ...(m.payload ?? {}) };
}

export interface BreakpointResult { id: number; verified: boolean; message?: string }

interface FunctionBreakpoint {
  id: number;
  pattern: MessagePattern;
  keys: Set<string>;
  condition?: Condition;
  hit?: HitCondition;
  hits: number;
}

interface FilterBreakpoint { id: number; category: Category; condition?: Condition; keys: Set<string> }

export interface Hit {
  kind: 'function' | 'filter';
  ids: number[];
  /** Function breakpoint source names, or the category. */
  label: string;
  category?: Category;
}

export const CATEGORY_IDS = Object.keys(CATEGORIES) as Category[];

export const categoryLabel = (c: Category): string => ({
  'negotiation': 'Negotiation', 'memory': 'Memory', 'vring-setup': 'Vring setup', 'notification': 'Notification fds',
  'device': 'Device status/config', 'backend-channel': 'Back-end channel', 'migration': 'Migration', 'iommu': 'IOMMU', 'other': 'Other',
} as Record<Category, string>)[c];

const keyOf = (s: MessageSpec): string => `${s.channel}:${s.code}`;

export class BreakpointSet {
  private nextId = 1;
  private functions: FunctionBreakpoint[] = [];
  private filters: FilterBreakpoint[] = [];
  /** Condition failures already reported (once per breakpoint). */
  private readonly reported = new Set<number>();
  onConditionProblem?: (id: number, message: string) => void;

  /** Replace the function breakpoints (DAP setFunctionBreakpoints semantics). Hit counts restart. */
  setFunctionBreakpoints(list: { name: string; condition?: string; hitCondition?: string }[]): BreakpointResult[] {
    this.functions = [];
    return list.map((b) => {
      const id = this.nextId++;
      try {
        const pattern = parsePattern(b.name);
        const condition = b.condition?.trim() ? compileCondition(b.condition) : undefined;
        const hit = b.hitCondition?.trim() ? parseHitCondition(b.hitCondition) : undefined;
        this.functions.push({ id, pattern, keys: new Set(pattern.specs.map(keyOf)), condition, hit, hits: 0 });
        const names = pattern.specs.map((s) => s.name);
        return { id, verified: true, message: names.length > 1 ? `${names.length} messages: ${names.slice(0, 8).join(', ')}${names.length > 8 ? ', …' : ''}` : undefined };
      } catch (e) {
        return { id, verified: false, message: (e as Error).message };
      }
    });
  }

  /** Replace the category filters (DAP setExceptionBreakpoints: filters and filterOptions with conditions). */
  setFilters(filters: string[], options: { filterId: string; condition?: string }[] = []): BreakpointResult[] {
    this.filters = [];
    const all = [...filters.map((f) => ({ filterId: f, condition: undefined as string | undefined })), ...options];
    return all.map((f) => {
      const id = this.nextId++;
      if (!CATEGORY_IDS.includes(f.filterId as Category)) return { id, verified: false, message: `unknown message category "${f.filterId}"` };
      try {
        const category = f.filterId as Category;
        const condition = f.condition?.trim() ? compileCondition(f.condition) : undefined;
        this.filters.push({ id, category, condition, keys: new Set(MESSAGES.filter((m) => m.category === category).map(keyOf)) });
        return { id, verified: true };
      } catch (e) {
        return { id, verified: false, message: (e as Error).message };
      }
    });
  }

  /** Gate keys (`channel:code`) of every message some breakpoint could stop on: the relay holds only these. */
  gateKeys(): string[] {
    const keys = new Set<string>();
    for (const f of this.functions) for (const k of f.keys) keys.add(k);
    for (const f of this.filters) for (const k of f.keys) keys.add(k);
    return [...keys].sort();
  }

  get empty(): boolean { return !this.functions.length && !this.filters.length; }

  /**
   * Whether a message stops: function breakpoints first (pattern, reply mode, condition, then hit count), then
   * category filters (requests only). Each call counts as one hit for every breakpoint whose condition holds.
   */
  check(m: MessageLike): Hit | undefined {
    const key = `${m.channel}:${m.code}`;
    let scope: Record<string, unknown> | undefined;
    const holds = (id: number, c?: Condition): boolean => {
      if (!c) return true;
      scope ??= conditionScope(m);
      try { return c.test(scope); } catch (e) {
        if (!this.reported.has(id)) { this.reported.add(id); this.onConditionProblem?.(id, `condition "${c.source}": ${(e as Error).message}`); }
        return false;
      }
    };
    const ids: number[] = [];
    const labels: string[] = [];
    for (const f of this.functions) {
      if (!f.keys.has(key)) continue;
      if (f.pattern.reply === 'request' ? m.reply : f.pattern.reply === 'reply' ? !m.reply : false) continue;
      if (!holds(f.id, f.condition)) continue;
      f.hits++;
      if (f.hit && !hitMatches(f.hit, f.hits)) continue;
      ids.push(f.id);
      labels.push(f.pattern.source.trim());
    }
    if (ids.length) return { kind: 'function', ids, label: labels.join(', ') };
    if (m.reply) return undefined;
    for (const f of this.filters) {
      if (!f.keys.has(key) || !holds(f.id, f.condition)) continue;
      ids.push(f.id);
      return { kind: 'filter', ids, label: categoryLabel(f.category), category: f.category };
    }
    return undefined;
  }
}
