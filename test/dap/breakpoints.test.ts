// Message breakpoints: names and globs, reply modes, category filters, the condition language (bigint, safe), hit counts, gate keys.
import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  BreakpointSet, compileCondition, parseHitCondition, hitMatches, parsePattern, conditionScope, ConditionError, CATEGORY_IDS, type MessageLike,
} from '../../adapter/breakpoints';
import { CATEGORIES, MESSAGES } from '../../core/protocol/table';
import { decodeMessage } from '../../core/protocol/codec';
import { msg } from '../helpers/wire';
import type { MessageBuilder } from '../helpers/wire';

/** A decoded message as the adapter sees it (what the engine's `held` event carries). */
function decoded(b: MessageBuilder, seq = 1): MessageLike {
  const d = decodeMessage(b.raw());
  return { ...d, seq, session: 1, category: d.spec?.category };
}

const kick = (i: number) => decoded(msg('SET_VRING_KICK').payload((p) => p.vringFd(i)).fds(1));
const num = (i: number, n: number) => decoded(msg('SET_VRING_NUM').payload((p) => p.vringState(i, n)));
const features = (f: bigint) => decoded(msg('SET_FEATURES').payload((p) => p.u64(f)));

describe('patterns', () => {
  test('exact names, VHOST_USER_ prefix, case, old names', () => {
    assert.deepEqual(parsePattern('SET_VRING_KICK').specs.map((s) => s.name), ['SET_VRING_KICK']);
    assert.deepEqual(parsePattern('vhost_user_set_vring_kick').specs.map((s) => s.name), ['SET_VRING_KICK']);
    assert.deepEqual(parsePattern('SLAVE_IOTLB_MSG').specs.map((s) => s.name), ['BACKEND_IOTLB_MSG']);
  });
  test('globs', () => {
    const names = parsePattern('SET_VRING_*').specs.map((s) => s.name);
    for (const n of ['SET_VRING_NUM', 'SET_VRING_ADDR', 'SET_VRING_BASE', 'SET_VRING_KICK', 'SET_VRING_CALL', 'SET_VRING_ERR', 'SET_VRING_ENABLE']) assert.ok(names.includes(n), n);
    assert.ok(!names.includes('GET_VRING_BASE'));
    assert.ok(parsePattern('*MEM*').specs.some((s) => s.name === 'ADD_MEM_REG'));
    assert.deepEqual(parsePattern('SET_VRING_???').specs.map((s) => s.name).sort(), ['SET_VRING_ERR', 'SET_VRING_NUM']);
  });
  test('codes and channel prefixes', () => {
    assert.deepEqual(parsePattern('12').specs.map((s) => `${s.channel}:${s.name}`), ['main:SET_VRING_KICK']);
    assert.deepEqual(parsePattern('backend:1').specs.map((s) => s.name), ['BACKEND_IOTLB_MSG']);
    assert.deepEqual(parsePattern('main:*IOTLB*').specs.map((s) => s.name), ['IOTLB_MSG']);
  });
  test('reply suffixes', () => {
    assert.equal(parsePattern('GET_FEATURES').reply, 'request');
    assert.equal(parsePattern('GET_FEATURES reply').reply, 'reply');
    assert.equal(parsePattern('GET_FEATURES any').reply, 'any');
  });
  test('errors say what is wrong', () => {
    assert.throws(() => parsePattern('NO_SUCH_THING'), /no message matches "NO_SUCH_THING"/);
    assert.throws(() => parsePattern('main:999'), /no main channel message has code 999/);
    assert.throws(() => parsePattern('SET VRING'), /not a message name or glob/);
    assert.throws(() => parsePattern('  '), /empty breakpoint name/);
  });
});

describe('conditions', () => {
  const scope = conditionScope(num(1, 512));
  const ev = (src: string, s = scope) => compileCondition(src).eval(s);
  test('comparisons and arithmetic on decoded fields', () => {
    assert.equal(ev('index == 1'), true);
    assert.equal(ev('index == 0'), false);
    assert.equal(ev('num > 256'), true);
    assert.equal(ev('num >= 512 && num <= 512'), true);
    assert.equal(ev('num % 256 == 0 && !(index != 1)'), true);
    assert.equal(ev('num / 2 + 1'), 257n);
    assert.equal(ev('(num << 1) | 1'), 1025n);
    assert.equal(ev('-index'), -1n);
    assert.equal(ev('~0 & 0xff'), 0xffn);
    assert.equal(ev('0b101 ^ 1'), 4n);
    assert.equal(ev('1_000 = 1000'), true, 'single = is equality, _ separates digits');
  });
  test('u64 features with bigint precision', () => {
    const s = conditionScope(features(0x140000046n));
    assert.equal(compileCondition('features & 0x100000000').test(s), true);
    assert.equal(compileCondition('features & 0x800000000').test(s), false);
    assert.equal(compileCondition('has(features, 32) && !has(features, 34)').test(s), true);
    assert.equal(compileCondition('features & bit(30)').eval(s), 1n << 30n);
    assert.equal(compileCondition('features == 0x140000046').test(s), true);
    assert.equal(compileCondition('0xffffffffffffffff + 1 == 0x10000000000000000').test(s), true, 'no 64-bit wrap, no float rounding');
  });
  test('message fields, strings, booleans, nested payloads', () => {
    const s = conditionScope(kick(3));
    assert.equal(compileCondition("name == 'SET_VRING_KICK' && from == \"frontend\" && !reply && noFd == false").test(s), true);
    assert.equal(compileCondition('code == 12 && fds == 1 && channel == "main" && category == "notification"').test(s), true);
    const table = decoded(msg('SET_MEM_TABLE').payload((p) => p.memTable([{ gpa: 0, size: 0x80000, uva: 0x7f00_0000_0000n }, { gpa: 0x100000, size: 0x1000, uva: 0x7f10_0000_0000n }])).fds(2, 'memfd'));
    const ts = conditionScope(table);
    assert.equal(compileCondition('len(regions) == 2 && regions[1].guestPhysAddr == 0x100000').test(ts), true);
    assert.equal(compileCondition('regions.length == 2 && payload.nregions == 2').test(ts), true);
    assert.equal(compileCondition('regions[5].guestPhysAddr == 0').test(ts), false, 'out of range is undefined');
  });
  test('missing fields are undefined: comparisons are false, never an error', () => {
    const s = conditionScope(kick(0));
    assert.equal(compileCondition('num > 256').test(s), false);
    assert.equal(compileCondition('num == 0').test(s), false);
    assert.equal(compileCondition('num != 0').test(s), false);
    assert.equal(compileCondition('!num').test(s), true);
    assert.equal(compileCondition('num + 1').eval(s), undefined);
    assert.equal(compileCondition('index / 0').eval(s), undefined);
    assert.equal(compileCondition('1 << 5000').eval(s), undefined, 'shift amounts are bounded');
  });
  test('parse errors are clear', () => {
    assert.throws(() => compileCondition('index =='), ConditionError);
    assert.throws(() => compileCondition('index == (1'), /expected "\)"/);
    assert.throws(() => compileCondition('index @ 1'), /unexpected "@" at 7/);
    assert.throws(() => compileCondition('foo(1)'), /unknown function foo\(\)/);
    assert.throws(() => compileCondition('"abc'), /unterminated string/);
    assert.throws(() => compileCondition('1 2'), /unexpected "2"/);
    assert.throws(() => compileCondition('('.repeat(200) + '1' + ')'.repeat(200)), /nested too deeply/);
    assert.throws(() => compileCondition('1+'.repeat(600) + '1'), /longer than 1000/);
  });
  test('no access to JavaScript: prototype names are not fields', () => {
    const s = conditionScope(kick(0));
    assert.equal(compileCondition('constructor').eval(s), undefined);
    assert.equal(compileCondition('__proto__').eval(s), undefined);
    assert.equal(compileCondition('payload.constructor').eval(s), undefined);
    assert.equal(compileCondition('toString').eval(s), undefined);
  });
});

describe('hit conditions', () => {
  test('forms', () => {
    const at = (src: string) => [1, 2, 3, 4, 5, 6].filter((n) => hitMatches(parseHitCondition(src), n));
    assert.deepEqual(at('3'), [3, 4, 5, 6], 'N: from the Nth hit on');
    assert.deepEqual(at('>= 3'), [3, 4, 5, 6]);
    assert.deepEqual(at('>3'), [4, 5, 6]);
    assert.deepEqual(at('== 2'), [2]);
    assert.deepEqual(at('=2'), [2]);
    assert.deepEqual(at('< 3'), [1, 2]);
    assert.deepEqual(at('<= 3'), [1, 2, 3]);
    assert.deepEqual(at('% 2'), [2, 4, 6]);
    assert.throws(() => parseHitCondition('two'), /use N, >= N/);
    assert.throws(() => parseHitCondition('% 0'), /never matches/);
  });
});

describe('BreakpointSet', () => {
  test('function breakpoints: verified results, gate keys, condition on the vring it names', () => {
    const b = new BreakpointSet();
    const r = b.setFunctionBreakpoints([{ name: 'SET_VRING_*', condition: 'index == 1' }, { name: 'NOPE' }, { name: 'SET_VRING_KICK', condition: 'index ==' }]);
    assert.equal(r[0].verified, true);
    assert.match(r[0].message!, /messages: SET_VRING_NUM/);
    assert.equal(r[1].verified, false);
    assert.match(r[1].message!, /no message matches/);
    assert.equal(r[2].verified, false);
    assert.deepEqual(b.gateKeys(), ['main:10', 'main:12', 'main:13', 'main:14', 'main:18', 'main:23', 'main:8', 'main:9'].sort());
    assert.equal(b.check(num(0, 256)), undefined);
    const hit = b.check(num(1, 256));
    assert.deepEqual(hit, { kind: 'function', ids: [r[0].id], label: 'SET_VRING_*' });
    assert.equal(b.check(features(1n)), undefined);
  });
  test('requests by default; "reply" and "any" suffixes', () => {
    const b = new BreakpointSet();
    b.setFunctionBreakpoints([{ name: 'GET_FEATURES' }]);
    const request = decoded(msg('GET_FEATURES'));
    const reply = decoded(msg('GET_FEATURES').reply().payload((p) => p.u64(0x40000000)));
    assert.ok(b.check(request));
    assert.equal(b.check(reply), undefined);
    b.setFunctionBreakpoints([{ name: 'GET_FEATURES reply', condition: 'features & bit(30)' }]);
    assert.equal(b.check(request), undefined);
    assert.ok(b.check(reply));
    b.setFunctionBreakpoints([{ name: 'GET_FEATURES any' }]);
    assert.ok(b.check(request) && b.check(reply));
  });
  test('hit counts count only hits whose condition holds, and restart when breakpoints are set again', () => {
    const b = new BreakpointSet();
    b.setFunctionBreakpoints([{ name: 'SET_VRING_NUM', condition: 'num > 100', hitCondition: '== 2' }]);
    assert.equal(b.check(num(0, 256)), undefined, 'hit 1');
    assert.equal(b.check(num(0, 64)), undefined, 'condition false: not a hit');
    assert.ok(b.check(num(1, 256)), 'hit 2');
    assert.equal(b.check(num(1, 256)), undefined, 'hit 3');
    b.setFunctionBreakpoints([{ name: 'SET_VRING_NUM', hitCondition: '2' }]);
    assert.equal(b.check(num(0, 1)), undefined);
    assert.ok(b.check(num(0, 1)));
  });
  test('category filters: every category of the table, requests only, with conditions', () => {
    assert.deepEqual(new Set(CATEGORY_IDS), new Set(Object.keys(CATEGORIES)));
    const b = new BreakpointSet();
    const r = b.setFilters(['memory'], [{ filterId: 'vring-setup', condition: 'num > 200' }, { filterId: 'bogus' }]);
    assert.deepEqual(r.map((x) => x.verified), [true, true, false]);
    for (const m of MESSAGES.filter((x) => x.category === 'memory')) assert.ok(b.gateKeys().includes(`${m.channel}:${m.code}`), m.name);
    const add = decoded(msg('ADD_MEM_REG').payload((p) => p.singleRegion({ gpa: 0, size: 0x1000, uva: 0x1000 })).fds(1, 'memfd'));
    assert.deepEqual(b.check(add), { kind: 'filter', ids: [r[0].id], label: 'Memory', category: 'memory' });
    assert.equal(b.check(decoded(msg('ADD_MEM_REG').reply().payload((p) => p.u64(0)))), undefined, 'replies do not stop on filters');
    assert.equal(b.check(num(0, 128)), undefined);
    assert.equal(b.check(num(0, 256))?.category, 'vring-setup');
  });
  test('function breakpoints win over filters; a failing condition is reported once', () => {
    const b = new BreakpointSet();
    const problems: string[] = [];
    b.onConditionProblem = (_id, m) => problems.push(m);
    b.setFilters(['notification']);
    b.setFunctionBreakpoints([{ name: 'SET_VRING_KICK' }]);
    assert.equal(b.check(kick(0))?.kind, 'function');
    b.setFunctionBreakpoints([]);
    assert.equal(b.check(kick(0))?.kind, 'filter');
    assert.deepEqual(problems, []);
    assert.ok(!b.empty);
    b.setFilters([]);
    assert.ok(b.empty);
    assert.deepEqual(b.gateKeys(), []);
  });
});
