// The adapter as a process and inline: DAP over handleMessage in-process, and the bundled process cleaning up its engine on disconnect, SIGTERM and stdin closing.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { DebugProtocol } from '@vscode/debugprotocol';
import { VhostDebugSession } from '../../adapter/debugAdapter';
import { Dap } from './dapClient';
import { writeBlkCapture } from './fixtures';
import { DEBUG_TYPE } from '../../common/dap';

const GUARD = { timeout: 60_000 };

function tmp(t: TestContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vl-proc-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('inline: the session answers DAP through handleMessage (as a DebugAdapterInlineImplementation would)', GUARD, async (t) => {
  const file = path.join(tmp(t), 'session.vlcap');
  writeBlkCapture(file);
  const session = new VhostDebugSession();
  const sent: DebugProtocol.ProtocolMessage[] = [];
  session.onDidSendMessage((m) => sent.push(m as DebugProtocol.ProtocolMessage));
  t.after(() => session.teardown());
  let seq = 1;
  const request = async (command: string, args?: unknown): Promise<DebugProtocol.Response> => {
    const s = seq++;
    session.handleMessage({ seq: s, type: 'request', command, arguments: args } as DebugProtocol.Request);
    for (let i = 0; i < 2000; i++) {
      const r = sent.find((m) => m.type === 'response' && (m as DebugProtocol.Response).request_seq === s) as DebugProtocol.Response | undefined;
      if (r) return r;
      await new Promise((res) => setTimeout(res, 5));
    }
    throw new Error(`no response to ${command}`);
  };
  const init = await request('initialize', { adapterID: DEBUG_TYPE, pathFormat: 'path', linesStartAt1: true, columnsStartAt1: true, supportsMemoryReferences: true });
  assert.equal(init.success, true);
  const caps = init.body as DebugProtocol.Capabilities;
  assert.equal(caps.supportsReadMemoryRequest, true);
  assert.equal(caps.supportsFunctionBreakpoints, true);
  assert.equal(caps.supportsExceptionFilterOptions, true);
  assert.deepEqual(caps.exceptionBreakpointFilters?.map((f) => f.filter), ['negotiation', 'memory', 'vring-setup', 'notification', 'device', 'backend-channel', 'migration', 'iommu', 'other']);
  assert.ok(caps.exceptionBreakpointFilters?.every((f) => f.supportsCondition));
  assert.ok(sent.some((m) => m.type === 'event' && (m as DebugProtocol.Event).event === 'initialized'));
  assert.equal((await request('launch', { mode: 'replay', capture: file, stopOnEntry: true })).success, true);
  assert.equal((await request('configurationDone')).success, true);
  for (let i = 0; i < 2000 && !sent.some((m) => (m as DebugProtocol.Event).event === 'stopped'); i++) await new Promise((r) => setTimeout(r, 5));
  const stopped = sent.find((m) => (m as DebugProtocol.Event).event === 'stopped') as DebugProtocol.StoppedEvent;
  assert.equal(stopped.body.reason, 'entry');
  const threads = await request('threads');
  assert.deepEqual((threads.body as DebugProtocol.ThreadsResponse['body']).threads.map((x) => x.id), [1]);
  assert.equal((await request('disconnect', {})).success, true);
});

test('process: SIGTERM and a closed stdin stop the engine and remove its listening socket; exit code 0', GUARD, async (t) => {
  const dir = tmp(t);
  const be = path.join(dir, 'be.sock');
  const server = net.createServer().listen(be);
  await new Promise((r) => server.once('listening', r));
  t.after(() => server.close());
  for (const how of ['SIGTERM', 'stdin'] as const) {
    const fe = path.join(dir, `fe-${how}.sock`);
    const d = await Dap.start(t);
    await d.begin('attach', { type: DEBUG_TYPE, request: 'attach', frontend: `listen:${fe}`, backend: `connect:${be}` });
    assert.ok(fs.statSync(fe).isSocket(), 'the proxy listens for the front-end');
    assert.match(d.output(), new RegExp(`listening for the front-end on ${fe}`));
    const exited = new Promise<number | null>((r) => d.process.once('exit', (code) => r(code)));
    if (how === 'SIGTERM') d.process.kill('SIGTERM');
    else d.process.stdin!.end();
    assert.equal(await exited, 0, `${how}: clean exit`);
    assert.ok(!fs.existsSync(fe), `${how}: the listening socket is gone`);
  }
});

test('process: attach to a path already in use is a clear error', GUARD, async (t) => {
  const dir = tmp(t);
  const be = path.join(dir, 'be.sock');
  const server = net.createServer().listen(be);
  await new Promise((r) => server.once('listening', r));
  t.after(() => server.close());
  const fe = path.join(dir, 'fe.sock');
  fs.writeFileSync(fe, 'not a socket');
  const d = await Dap.start(t);
  await assert.rejects(d.begin('attach', { type: DEBUG_TYPE, request: 'attach', frontend: `listen:${fe}`, backend: `connect:${be}` }), /cannot listen: EEXIST \(.*fe.sock exists and is not a socket\)$/);
});
