// Runs inside VS Code's extension host (extensionTestsPath, started by test/vscode/extension.test.ts): the installed
// Vhost Lens extension activates, runs its debug adapter in a process of its own, and a replay debug session works
// through VS Code's debug API (breakpoints, custom requests, events, termination).
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import type { DebugProtocol } from '@vscode/debugprotocol';
import { DEBUG_TYPE, isCustomEvent, sendCustomRequest, type TimelineEntry } from '../../../common/dap';
import { LOG_FILE, SPEC_FILE, type HostSpec } from './spec';

const STEP_MS = 20_000;

export async function run(): Promise<void> {
  const folder = vscode.workspace.workspaceFolders?.[0];
  if (!folder) throw new Error('no workspace folder open');
  const logFile = path.join(folder.uri.fsPath, LOG_FILE);
  const log = (s: string): void => {
    fs.appendFileSync(logFile, `${s}\n`);
    console.log(`[vl-host] ${s}`);
  };
  try {
    await suite(folder, log);
    log('PASS');
  } catch (e) {
    log(`FAIL ${(e as Error).stack ?? e}`);
    throw e;
  }
}

async function suite(folder: vscode.WorkspaceFolder, log: (s: string) => void): Promise<void> {
  const spec = JSON.parse(fs.readFileSync(path.join(folder.uri.fsPath, SPEC_FILE), 'utf8')) as HostSpec;
  log(`VS Code ${vscode.version} (${vscode.env.appName}, remote ${vscode.env.remoteName ?? 'none'}), extension host pid ${process.pid}, node ${process.version}`);

  // 1. The extension is installed (from the VSIX, not a development folder) and activates.
  const ext = vscode.extensions.getExtension(spec.extensionId);
  assert.ok(ext, `extension ${spec.extensionId} is not installed; have: ${vscode.extensions.all.map((e) => e.id).filter((id) => !id.startsWith('vscode.')).join(', ')}`);
  assert.ok(ext.extensionPath.startsWith(spec.extensionsDir + path.sep), `${ext.extensionPath} is not under the extensions folder ${spec.extensionsDir}`);
  assert.equal(ext.extensionKind, vscode.ExtensionKind.Workspace);
  await within(Promise.resolve(ext.activate()), 'extension activation');
  assert.ok(ext.isActive, 'extension active');
  log(`${ext.id} ${ext.packageJSON.version} active from ${ext.extensionPath}`);

  // 2. Everything the adapter sends, as VS Code receives it.
  const sent: DebugProtocol.ProtocolMessage[] = [];
  let adapterExit: { code?: number; signal?: string } | undefined;
  const tracker = vscode.debug.registerDebugAdapterTrackerFactory(DEBUG_TYPE, {
    createDebugAdapterTracker: () => ({
      onDidSendMessage: (m: DebugProtocol.ProtocolMessage) => { sent.push(m); },
      onExit: (code: number | undefined, signal: string | undefined) => { adapterExit = { code, signal }; },
      onError: (e: Error) => log(`adapter stream: ${e.message}`),
    }),
  });
  const events = (name: string): DebugProtocol.Event[] => sent.filter((m): m is DebugProtocol.Event => m.type === 'event' && (m as DebugProtocol.Event).event === name);
  const output = (): string => events('output').map((e) => (e as DebugProtocol.OutputEvent).body.output).join('');

  const expected = spec.messages;
  const last = expected[expected.length - 1];
  assert.ok(expected.length >= 3 && !last.reply && expected.filter((m) => m.name === last.name && !m.reply).length === 1,
    'the capture ends with a request that occurs once (it gets the breakpoint)');
  const bp = new vscode.FunctionBreakpoint(last.name);
  vscode.debug.addBreakpoints([bp]);
  try {
    // 3. Start a replay session; VS Code resolves ${workspaceFolder} and launches the adapter through the extension.
    const started = once(vscode.debug.onDidStartDebugSession, (s) => s.type === DEBUG_TYPE);
    const terminated = once(vscode.debug.onDidTerminateDebugSession, (s) => s.type === DEBUG_TYPE);
    const config = { type: DEBUG_TYPE, request: 'launch', name: 'replay', mode: 'replay', capture: `\${workspaceFolder}/${spec.capture}`, stopOnEntry: true };
    assert.ok(await within(Promise.resolve(vscode.debug.startDebugging(folder, config)), 'startDebugging'), 'startDebugging returned false');
    const session = await within(started, 'the debug session to start');
    log(`debug session "${session.name}" started (${session.type})`);

    // 4. Stopped on entry: the first message is held.
    await until(() => events('stopped').length >= 1, 'the stop on entry', () => output());
    let state = await sendCustomRequest(session, 'vhostLens/state', {});
    assert.equal(state.mode, 'replay');
    assert.equal(state.stopped?.reason, 'entry');
    assert.equal(state.stopped?.held?.name, expected[0].name);
    assert.equal(state.stopped?.held?.seq, 1);
    log(`stopped on entry: ${state.stopped?.description}`);

    // 5. The adapter is a process of its own: a child of this extension host, running the installed dist/adapter.js.
    const adapter = adapterProcesses(path.join(ext.extensionPath, 'dist', 'adapter.js'));
    assert.equal(adapter.length, 1, `one adapter process, found ${JSON.stringify(adapter)}`);
    const [pid] = adapter.map((a) => a.pid);
    assert.notEqual(pid, process.pid, 'the adapter is not the extension host');
    assert.equal(adapter[0].ppid, process.pid, 'the adapter is a child of the extension host');
    log(`adapter process ${pid} (parent ${adapter[0].ppid}): ${adapter[0].argv.join(' ')}`);

    // 6. Continue: VS Code's function breakpoint holds the last message; the timeline has every message before it.
    await session.customRequest('continue', { threadId: 1 });
    await until(() => events('stopped').length >= 2, `the breakpoint on ${last.name}`, () => output());
    state = await sendCustomRequest(session, 'vhostLens/state', {});
    assert.equal(state.stopped?.held?.name, last.name, `held at the breakpoint: ${JSON.stringify(state.stopped)}`);
    assert.equal(state.stopped?.held?.seq, last.seq);
    const page = await sendCustomRequest(session, 'vhostLens/timeline', { kinds: ['message'], limit: 5000 });
    const shown = (es: TimelineEntry[]) => es.map((e) => ({ seq: e.message!.seq, name: e.message!.name, reply: e.message!.reply }));
    assert.deepEqual(shown(page.entries), expected.slice(0, -1), 'vhostLens/timeline: the replayed messages before the held one');
    log(`stopped at the breakpoint: ${state.stopped?.description}; vhostLens/timeline has ${page.entries.length} messages`);

    // 7. Continue to the end: the replay finishes with every message, the session ends and the adapter process exits.
    await session.customRequest('continue', { threadId: 1 });
    await within(terminated, 'the debug session to end', () => output());
    const streamed = events('vhostLens/timeline').flatMap((e) => (isCustomEvent(e as { event: string; body?: unknown }, 'vhostLens/timeline') ? (e.body as { entries: TimelineEntry[] }).entries : []));
    assert.deepEqual(shown(streamed.filter((e) => e.kind === 'message')), expected, 'the vhostLens/timeline events carry every message of the capture, in order');
    assert.match(output(), new RegExp(`--- replay finished: ${expected.length} messages`));
    await until(() => adapterExit !== undefined && !fs.existsSync(`/proc/${pid}`), 'the adapter process to exit');
    log(`replay finished: ${expected.length} messages; adapter exited (${JSON.stringify(adapterExit)})`);
  } finally {
    vscode.debug.removeBreakpoints([bp]);
    tracker.dispose();
  }
}

/** Live processes whose command line runs `script`, with their parent. */
function adapterProcesses(script: string): { pid: number; ppid: number; argv: string[] }[] {
  const out: { pid: number; ppid: number; argv: string[] }[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const argv = fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0').filter(Boolean);
      if (!argv.includes(script)) continue;
      const ppid = Number(/^PPid:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${d}/status`, 'utf8'))?.[1]);
      out.push({ pid: Number(d), ppid, argv });
    } catch { /* gone meanwhile */ }
  }
  return out;
}

function once<T>(event: vscode.Event<T>, pred: (v: T) => boolean): Promise<T> {
  return new Promise((resolve) => {
    const d = event((v) => { if (pred(v)) { d.dispose(); resolve(v); } });
  });
}

async function within<T>(p: Promise<T>, what: string, context?: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${STEP_MS} ms waiting for ${what}${context ? `\n--- adapter output:\n${context()}` : ''}`)), STEP_MS);
  });
  try { return await Promise.race([p, timeout]); } finally { clearTimeout(timer); }
}

async function until(cond: () => boolean, what: string, context?: () => string): Promise<void> {
  const end = Date.now() + STEP_MS;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${STEP_MS} ms waiting for ${what}${context ? `\n--- adapter output:\n${context()}` : ''}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
