// Test driver for the bundled adapter (dist/adapter.js): a DebugClient plus an event log that never misses an event, and typed custom requests.
import * as path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import type { TestContext } from 'node:test';
import { DebugClient } from '@vscode/debugadapter-testsupport';
import type { DebugProtocol } from '@vscode/debugprotocol';
import { sendCustomRequest, type CustomRequestName, type CustomRequests, type TimelineEntry } from '../../common/dap';

export const ADAPTER = path.join(__dirname, '..', '..', '..', 'dist', 'adapter.js');

const EVENTS = ['initialized', 'stopped', 'continued', 'output', 'terminated', 'exited', 'thread', 'vhostLens/timeline', 'vhostLens/stateChanged'];

export interface StartOptions {
  functionBreakpoints?: DebugProtocol.FunctionBreakpoint[];
  filters?: string[];
  filterOptions?: DebugProtocol.ExceptionFilterOptions[];
}

export class Dap {
  readonly dc: DebugClient;
  readonly events: DebugProtocol.Event[] = [];
  private readonly consumed = new Set<DebugProtocol.Event>();
  stderr = '';
  exitCode: number | null | undefined;

  constructor() {
    this.dc = new DebugClient('node', ADAPTER, 'vhost-user', { stdio: ['pipe', 'pipe', 'pipe'] }, false);
    this.dc.defaultTimeout = 120_000;
    for (const name of EVENTS) this.dc.on(name, (e: DebugProtocol.Event) => this.events.push(e));
  }

  get process(): ChildProcess { return (this.dc as unknown as { _adapterProcess: ChildProcess })._adapterProcess; }

  /** Spawn the adapter; it is disconnected (and killed if need be) when the test ends. */
  static async start(t: TestContext): Promise<Dap> {
    const d = new Dap();
    await d.dc.start();
    const p = d.process;
    p.stderr!.setEncoding('utf8').on('data', (s: string) => { d.stderr += s; });
    p.on('exit', (code) => { d.exitCode = code; });
    t.after(async () => {
      if (d.exitCode !== undefined) return; // already gone: a disconnect would never be answered
      const gone = new Promise((r) => p.once('exit', r));
      await Promise.race([d.dc.stop(), gone, new Promise((r) => setTimeout(r, 20_000).unref())]);
      if (d.exitCode === undefined) p.kill('SIGKILL');
    });
    await d.dc.initializeRequest({ adapterID: 'vhost-user', linesStartAt1: true, columnsStartAt1: true, pathFormat: 'path', supportsMemoryReferences: true });
    return d;
  }

  /** The VS Code order: launch/attach, then (on `initialized`) breakpoints, then configurationDone. */
  async begin(request: 'launch' | 'attach', args: Record<string, unknown>, o: StartOptions = {}): Promise<DebugProtocol.Response> {
    const response = request === 'launch' ? this.dc.launchRequest(args as DebugProtocol.LaunchRequestArguments) : this.dc.attachRequest(args as DebugProtocol.AttachRequestArguments);
    response.catch(() => undefined); // the caller awaits it; a failure must not be an unhandled rejection meanwhile
    await this.setBreakpoints(o);
    await this.dc.configurationDoneRequest();
    return response;
  }

  async setBreakpoints(o: StartOptions): Promise<{ functions?: DebugProtocol.SetFunctionBreakpointsResponse; filters?: DebugProtocol.SetExceptionBreakpointsResponse }> {
    const out: { functions?: DebugProtocol.SetFunctionBreakpointsResponse; filters?: DebugProtocol.SetExceptionBreakpointsResponse } = {};
    if (o.functionBreakpoints) out.functions = await this.dc.setFunctionBreakpointsRequest({ breakpoints: o.functionBreakpoints });
    if (o.filters || o.filterOptions) out.filters = await this.dc.setExceptionBreakpointsRequest({ filters: o.filters ?? [], filterOptions: o.filterOptions });
    return out;
  }

  /** The next not yet consumed event of that kind matching pred (hang guard only). */
  async next<E extends DebugProtocol.Event = DebugProtocol.Event>(name: string, pred: (e: E) => boolean = () => true, ms = 120_000): Promise<E> {
    const end = Date.now() + ms;
    for (;;) {
      const e = this.events.find((x) => x.event === name && !this.consumed.has(x) && pred(x as E));
      if (e) { this.consumed.add(e); return e as E; }
      if (Date.now() > end) throw new Error(`no "${name}" event within ${ms} ms\n${this.log()}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async stopped(ms?: number): Promise<DebugProtocol.StoppedEvent> { return this.next<DebugProtocol.StoppedEvent>('stopped', () => true, ms); }

  /** Everything the Debug Console got. */
  output(): string {
    return this.events.filter((e) => e.event === 'output').map((e) => (e as DebugProtocol.OutputEvent).body.output).join('');
  }

  /** Timeline entries received as custom events. */
  timeline(): TimelineEntry[] {
    return this.events.filter((e) => e.event === 'vhostLens/timeline').flatMap((e) => (e.body as { entries: TimelineEntry[] }).entries);
  }

  async custom<K extends CustomRequestName>(command: K, args: CustomRequests[K]['args']): Promise<CustomRequests[K]['result']> {
    return sendCustomRequest({ customRequest: (c, a) => this.dc.customRequest(c, a).then((r) => r.body) }, command, args);
  }

  async frames(threadId = 1, levels = 20): Promise<DebugProtocol.StackFrame[]> {
    return (await this.dc.stackTraceRequest({ threadId, startFrame: 0, levels })).body.stackFrames;
  }

  /** Variables of a scope of the top frame (or a given frame), by scope name prefix. */
  async scope(prefix: string, frameId?: number): Promise<DebugProtocol.Variable[]> {
    const id = frameId ?? (await this.frames())[0].id;
    const scopes = (await this.dc.scopesRequest({ frameId: id })).body.scopes;
    const s = scopes.find((x) => x.name.startsWith(prefix));
    if (!s) throw new Error(`no scope "${prefix}" in ${scopes.map((x) => x.name).join(', ')}`);
    return this.vars(s.variablesReference);
  }

  async vars(ref: number): Promise<DebugProtocol.Variable[]> {
    return (await this.dc.variablesRequest({ variablesReference: ref })).body.variables;
  }

  /** Find a variable by name, expanding children of `parent` if given. */
  static find(vars: DebugProtocol.Variable[], name: string): DebugProtocol.Variable {
    const v = vars.find((x) => x.name === name);
    if (!v) throw new Error(`no variable "${name}" in ${vars.map((x) => `${x.name}=${x.value}`).join(', ')}`);
    return v;
  }

  async evaluate(expression: string, frameId?: number): Promise<DebugProtocol.EvaluateResponse['body']> {
    return (await this.dc.evaluateRequest({ expression, context: 'repl', ...(frameId !== undefined ? { frameId } : {}) })).body;
  }

  log(): string {
    const out = this.output();
    return `--- adapter Debug Console (tail):\n${out.slice(-6000)}\n--- adapter stderr:\n${this.stderr.slice(-3000)}`;
  }
}

/** Run `fn`; on failure append the adapter's console and stderr to the error. */
export async function withAdapterLog<T>(d: Dap, fn: () => Promise<T>): Promise<T> {
  try { return await fn(); } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    err.message += `\n${d.log()}`;
    throw err;
  }
}
