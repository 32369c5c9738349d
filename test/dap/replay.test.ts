// The bundled adapter (dist/adapter.js) driven over DAP on a replayed capture: stops, stepping, breakpoints and conditions, variables, console, custom requests, errors.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import type { DebugProtocol } from '@vscode/debugprotocol';
import { Dap, withAdapterLog } from './dapClient';
import { writeBlkCapture } from './fixtures';
import { CLI } from '../helpers/cliProxy';
import { DEBUG_TYPE, type MessageDto } from '../../common/dap';

const GUARD = { timeout: 120_000 };

function capture(t: TestContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vl-dap-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'session.vlcap');
  writeBlkCapture(file);
  return file;
}

const replay = (file: string, extra: Record<string, unknown> = {}) => ({ type: DEBUG_TYPE, request: 'launch', name: 'replay', mode: 'replay', capture: file, ...extra });

async function messageVars(d: Dap): Promise<DebugProtocol.Variable[]> { return d.scope('Message'); }
const value = (vars: DebugProtocol.Variable[], name: string): string => Dap.find(vars, name).value;

test('replay: stop on entry, `next` steps one message at a time, `continue` runs to the end; the timeline equals the CLI replay', GUARD, async (t) => {
  const file = capture(t);
  const d = await Dap.start(t);
  await withAdapterLog(d, async () => {
    await d.begin('launch', replay(file, { stopOnEntry: true }));
    const entry = await d.stopped();
    assert.equal(entry.body.reason, 'entry');
    assert.equal(entry.body.threadId, 1);
    assert.equal(entry.body.allThreadsStopped, true);
    assert.equal(entry.body.description, 'GET_FEATURES (1) front-end → back-end');
    const frames = await d.frames();
    assert.equal(frames.length, 1, 'nothing in the history yet: the held message alone');
    assert.match(frames[0].name, /^⏸ #1 GET_FEATURES F→B/);
    const src = await d.dc.sourceRequest({ source: frames[0].source, sourceReference: frames[0].source!.sourceReference! });
    assert.match(src.body.content, /GET_FEATURES \(1\) front-end → back-end/);
    assert.match(src.body.content, /held at a breakpoint: not relayed yet/);
    const seqs = [Number(value(await messageVars(d), 'seq'))];
    for (let i = 0; i < 4; i++) {
      await d.dc.nextRequest({ threadId: 1 });
      const s = await d.stopped();
      assert.equal(s.body.reason, 'step');
      seqs.push(Number(value(await messageVars(d), 'seq')));
    }
    assert.deepEqual(seqs, [1, 2, 3, 4, 5], 'one message per step, in order');
    const top = await d.frames();
    assert.deepEqual(top.map((f) => f.name.replace(/ F→B.*| B→F.*/, '')), ['⏸ #5 SET_PROTOCOL_FEATURES', '#4 GET_PROTOCOL_FEATURES reply', '#3 GET_PROTOCOL_FEATURES', '#2 GET_FEATURES reply', '#1 GET_FEATURES'],
      'the stack is the channel history, newest first, the held message on top');
    assert.match(top[1].name, /B→F features=0x8f2b \[MQ,LOG_SHMFD,REPLY_ACK,/);
    await d.dc.continueRequest({ threadId: 1 });
    await d.next('terminated');
    assert.match(d.output(), /--- replay finished: \d+ messages/);
    // Same decoded stream as `vhost-lens replay FILE --json`.
    const cli = spawnSync(process.execPath, [CLI, 'replay', file, '--json'], { encoding: 'utf8' });
    assert.equal(cli.status, 0, cli.stderr);
    const cliMessages = cli.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)).filter((l) => l.kind === 'message');
    const page = await d.custom('vhostLens/timeline', { kinds: ['message'], limit: 5000 });
    assert.deepEqual(page.entries.map((e) => e.message), cliMessages);
    assert.deepEqual(d.timeline().filter((e) => e.kind === 'message').map((e) => e.message), cliMessages, 'the custom event stream carries the same entries');
    const runs = page.entries.map((e) => e.phase).filter((p, i, a) => i === 0 || p !== a[i - 1]);
    assert.deepEqual(runs, ['negotiation', 'memory', 'vring setup', 'running', 'stop'], 'phases in order');
    const groups = d.events.filter((e) => e.event === 'output' && (e as DebugProtocol.OutputEvent).body.group === 'start').map((e) => (e as DebugProtocol.OutputEvent).body.output.trim());
    assert.deepEqual(groups, ['negotiation', 'memory', 'vring setup', 'running', 'stop'], 'Debug Console groups by phase');
    assert.ok(d.timeline().some((e) => e.kind === 'notify' && e.notify?.count === 4), 'notifier events reach the timeline');
  });
});

test('replay: function breakpoint holds SET_VRING_KICK; Variables show index and fd; conditions pick one vring; the back-end channel is a thread', GUARD, async (t) => {
  const file = capture(t);
  const d = await Dap.start(t);
  await withAdapterLog(d, async () => {
    await d.begin('launch', replay(file), { functionBreakpoints: [{ name: 'SET_VRING_KICK' }] });
    const s = await d.stopped();
    assert.equal(s.body.reason, 'function breakpoint');
    assert.equal(s.body.description, 'Breakpoint SET_VRING_KICK: SET_VRING_KICK (12) front-end → back-end');
    assert.equal(s.body.hitBreakpointIds?.length, 1);
    const msg = await messageVars(d);
    assert.equal(value(msg, 'index'), '0');
    assert.equal(value(msg, 'noFd'), 'false');
    assert.match(value(msg, 'status'), /^held: not relayed yet/);
    const fds = Dap.find(msg, 'fds');
    assert.equal(fds.value, '[eventfd]');
    assert.equal((await d.vars(fds.variablesReference))[0].value, 'eventfd');
    const header = await d.vars(Dap.find(msg, 'header').variablesReference);
    assert.equal(value(header, 'request'), '12 (SET_VRING_KICK)');
    const threads = (await d.dc.threadsRequest()).body.threads;
    assert.deepEqual(threads.map((x) => x.name), ['vhost-user main channel', 'back-end channel']);

    const session = await d.scope('Session');
    const features = await d.vars(Dap.find(session, 'features').variablesReference);
    assert.equal(value(features, 'acked'), '0x140000046');
    assert.equal(value(features, 'VERSION_1'), 'offered, acked (bit 32)');
    assert.equal(value(features, 'FLUSH'), 'offered, not acked (bit 9)');
    const regions = await d.vars(Dap.find(session, 'memory regions').variablesReference);
    assert.match(regions[0].value, /^gpa 0x0 \+ 256M memfd/);
    assert.equal(regions[0].memoryReference, undefined, 'no memory references in replay');
    const vrings = await d.scope('Vrings');
    const v0 = await d.vars(Dap.find(vrings, 'vring 0').variablesReference);
    assert.equal(value(v0, 'num'), '128');
    assert.match(value(v0, 'ring'), /not available: a replayed capture records messages, not guest memory/);
    assert.match((await d.scope('Notifiers'))[0].value, /not interposed/);

    // Debug Console and memory in replay.
    assert.equal((await d.evaluate('index == 0')).result, 'true');
    assert.equal((await d.evaluate('fds')).result, '1');
    assert.match((await d.evaluate('features')).result, /features acked: {3}0x140000046 \[BLK_SIZE|SEG_MAX/);
    assert.match((await d.evaluate('help')).result, /vring N/);
    assert.match((await d.evaluate('vring 0')).result, /vring 0: num=128 desc 0x7efc13fdc000 avail 0x7efc13fdc800 used 0x7efc13fdd000 kick=- call=-\ncontents: ring contents are not available/);
    await assert.rejects(d.evaluate('vring 1'), /vring 1 is not set up \(known: 0\)/);
    await assert.rejects(d.evaluate('mem 0x1000 16'), /not available in replay/);
    await assert.rejects(d.dc.customRequest('readMemory', { memoryReference: 'gpa:0x1000', count: 16 }), /not available in replay/);
    await assert.rejects(d.evaluate('index =='), /type "help" for the commands/);
    assert.match((await d.evaluate('state')).result, /^session 1, device blk, \d+ messages; stopped \(function breakpoint\): SET_VRING_KICK/);
    assert.match((await d.evaluate('regions')).result, /^\[0\] gpa 0x0 \+ 256M \(uva 0x7efc03fff000, offset 0x0, memfd:\)/);
    assert.match((await d.evaluate('notifiers')).result, /no notifier counts/);
    assert.equal((await d.evaluate('timeline 1')).result.split('\n').length, 1);
    const msgEval = await d.evaluate('message');
    assert.equal(msgEval.result, 'SET_VRING_KICK (12) front-end → back-end #19 (held)');
    assert.ok(msgEval.variablesReference > 0);
    const completions = await d.dc.completionsRequest({ text: 'vr', column: 3 });
    assert.deepEqual(completions.body.targets.map((x) => x.label), ['vring']);

    const state = await d.custom('vhostLens/state', {});
    assert.equal(state.mode, 'replay');
    assert.equal(state.stopped?.held?.name, 'SET_VRING_KICK');
    assert.equal(state.state?.features.acked, '0x140000046');
    assert.equal(state.memoryAvailable, false);
    await assert.rejects(d.custom('vhostLens/ringSnapshot', { vring: 0 }), /not available/);
    const types = await d.custom('vhostLens/messageTypes', {});
    assert.ok(types.messages.some((m) => m.name === 'SET_VRING_KICK' && m.category === 'notification'));
    assert.equal(types.categories.length, 9);

    // Continue: the next kick (vring 1) stops too.
    await d.dc.continueRequest({ threadId: 1 });
    const s2 = await d.stopped();
    assert.equal(value(await messageVars(d), 'index'), '1');
    assert.equal(s2.body.reason, 'function breakpoint');
    // A condition on the vring it names: every SET_VRING_* of vring 1 from here on, nothing of vring 0.
    const r = await d.setBreakpoints({ functionBreakpoints: [{ name: 'SET_VRING_*', condition: 'index == 1' }] });
    assert.equal(r.functions!.body.breakpoints[0].verified, true);
    const names: string[] = [];
    for (let i = 0; i < 2; i++) {
      await d.dc.continueRequest({ threadId: 1 });
      await d.stopped();
      const vars = await messageVars(d);
      assert.equal(value(vars, 'index'), '1', `stopped only on vring 1 (${value(vars, 'message')})`);
      names.push(Dap.find(vars, 'message').value.split(' ')[0]);
    }
    assert.deepEqual(names, ['SET_VRING_CALL', 'SET_VRING_ENABLE'], 'vring 0 messages (SET_VRING_ENABLE 0) crossed without stopping');
    // Back-end channel messages stop on thread 2.
    await d.setBreakpoints({ functionBreakpoints: [{ name: 'BACKEND_CONFIG_CHANGE_MSG' }] });
    await d.dc.continueRequest({ threadId: 1 });
    const s3 = await d.stopped();
    assert.equal(s3.body.threadId, 2);
    assert.equal(s3.body.description, 'Breakpoint BACKEND_CONFIG_CHANGE_MSG: BACKEND_CONFIG_CHANGE_MSG (2) back-end → front-end [back-end channel]');
    const f2 = await d.frames(2);
    assert.match(f2[0].name, /^⏸ #\d+ BACKEND_CONFIG_CHANGE_MSG B→F/);
    const f1 = await d.frames(1);
    assert.match(f1[0].name, /#\d+ SET_VRING_ENABLE F→B index=1 num=1/, 'the main thread shows its own history');
    await d.setBreakpoints({ functionBreakpoints: [] });
    await d.dc.continueRequest({ threadId: 2 });
    await d.next('terminated');
  });
});

test('replay: a category filter stops on the first memory message; filter conditions; hit counts; auto-continue', GUARD, async (t) => {
  const file = capture(t);
  const d = await Dap.start(t);
  await withAdapterLog(d, async () => {
    const r = d.begin('launch', replay(file, { autoContinueSeconds: 1 }), { filters: ['memory'] });
    await r;
    const s = await d.stopped();
    assert.equal(s.body.reason, 'exception');
    assert.match(s.body.description!, /^Memory message: GET_MAX_MEM_SLOTS \(36\) front-end → back-end/);
    const info = await d.dc.exceptionInfoRequest({ threadId: 1 });
    assert.equal(info.body.exceptionId, 'memory');
    const frames = await d.frames(1, 100);
    const history = await d.custom('vhostLens/timeline', { kinds: ['message'] });
    assert.ok(history.entries.every((e) => e.message!.category !== 'memory'), 'no memory message crossed before the stop');
    assert.equal(frames.length, history.entries.filter((e) => e.message!.channel === 'main').length + 1);
    // Not continued by the user: autoContinueSeconds releases it.
    const cont = await d.next<DebugProtocol.ContinuedEvent>('continued');
    assert.equal(cont.body.allThreadsContinued, true);
    assert.match(d.output(), /auto-continue: released GET_MAX_MEM_SLOTS #8 after 1 s/);
    // The next memory message stops too (ADD_MEM_REG): now change to a vring-setup filter with a condition and a hit count on calls.
    const s2 = await d.stopped();
    assert.match(s2.body.description!, /ADD_MEM_REG \(37\)/);
    await d.setBreakpoints({ filters: [], filterOptions: [{ filterId: 'vring-setup', condition: 'index == 1 && num == 128' }], functionBreakpoints: [{ name: 'SET_VRING_CALL', hitCondition: '== 2' }] });
    await d.dc.continueRequest({ threadId: 1 });
    const s3 = await d.stopped();
    assert.equal(s3.body.reason, 'exception');
    assert.match(s3.body.description!, /^Vring setup message: SET_VRING_NUM \(8\)/);
    assert.equal(value(await messageVars(d), 'index'), '1');
    await d.dc.continueRequest({ threadId: 1 });
    const s4 = await d.stopped();
    assert.equal(s4.body.reason, 'function breakpoint');
    assert.match(s4.body.description!, /SET_VRING_CALL/);
    assert.equal(value(await messageVars(d), 'index'), '1', 'the second SET_VRING_CALL (hit count == 2)');
    await d.setBreakpoints({ filters: [], functionBreakpoints: [] });
    await d.dc.continueRequest({ threadId: 1 });
    await d.next('terminated');
  });
});

test('configuration errors are answered clearly; disconnect ends the adapter process', GUARD, async (t) => {
  const d = await Dap.start(t);
  await assert.rejects(d.dc.launchRequest({ mode: 'replay' } as DebugProtocol.LaunchRequestArguments), /needs "capture"/);
  await assert.rejects(d.dc.launchRequest({ mode: 'replay', capture: '/nonexistent.vlcap' } as DebugProtocol.LaunchRequestArguments), /cannot replay \/nonexistent.vlcap: ENOENT/);
  await assert.rejects(d.dc.launchRequest({ mode: 'backend', device: 'blk', socket: '/tmp/x.sock', image: '/nonexistent/x.img' } as DebugProtocol.LaunchRequestArguments), /image \/nonexistent\/x.img does not exist/);
  await assert.rejects(d.dc.attachRequest({ frontend: '/tmp/vl-fe.sock', backend: '/nonexistent/be.sock' } as DebugProtocol.AttachRequestArguments), /back-end socket \/nonexistent\/be.sock does not exist/);
  const bp = await d.dc.setBreakpointsRequest({ source: { path: '/tmp/x.c' }, breakpoints: [{ line: 3 }] });
  assert.equal(bp.body.breakpoints[0].verified, false);
  const fb = await d.dc.setFunctionBreakpointsRequest({ breakpoints: [{ name: 'SET_VRING_NOPE' }, { name: 'SET_VRING_KICK', condition: 'index ==' }] });
  assert.deepEqual(fb.body.breakpoints.map((b) => b.verified), [false, false]);
  assert.match(fb.body.breakpoints[1].message!, /incomplete condition|expected/);
  const exited = new Promise<number | null>((r) => d.process.once('exit', (code) => r(code)));
  await d.dc.disconnectRequest({});
  assert.equal(await exited, 0, 'the adapter exits with 0 after disconnect');
});

test('the Message scope on a held message matches the custom state request (MessageDto form)', GUARD, async (t) => {
  const file = capture(t);
  const d = await Dap.start(t);
  await withAdapterLog(d, async () => {
    await d.begin('launch', replay(file), { functionBreakpoints: [{ name: 'ADD_MEM_REG' }] });
    await d.stopped();
    const st = await d.custom('vhostLens/state', {});
    const held = st.stopped!.held as MessageDto;
    assert.equal(held.name, 'ADD_MEM_REG');
    assert.equal(held.payload!.guestPhysAddr, '0x0');
    assert.equal(held.payload!.memorySize, '0x10000000');
    const vars = await messageVars(d);
    assert.equal(value(vars, 'guestPhysAddr'), '0x0');
    assert.equal(value(vars, 'memorySize'), '0x10000000');
    assert.equal(Dap.find(vars, 'guestPhysAddr').memoryReference, undefined, 'replay: no memory to reference');
    await d.dc.pauseRequest({ threadId: 1 }); // already stopped: a no-op
    await d.setBreakpoints({ functionBreakpoints: [] });
    await d.dc.continueRequest({ threadId: 1 });
    await d.next('terminated');
  });
});
