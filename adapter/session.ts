// The vhost-user debug session: hosts one Engine and maps its vhost-user session onto DAP (a thread per channel, message history as the stack, held messages as stops, guest memory as readMemory).
import {
  LoggingDebugSession, logger, Logger, InitializedEvent, TerminatedEvent, StoppedEvent, ContinuedEvent, OutputEvent, ThreadEvent,
  Thread, StackFrame, Scope, Source, Event, ErrorDestination,
} from '@vscode/debugadapter';
import type { DebugProtocol } from '@vscode/debugprotocol';
import { sessionMemory, type DeviceMemory } from '../core/memory/iotlb';
import { RingObserver, type RingEvent } from '../core/session/rings';
import { messageLine, payloadText, stateChangeLine } from '../core/session/format';
import { snapshotRing, type RingSnapshot } from '../core/virtio/snapshot';
import { CATEGORIES, MESSAGES, specFor, type Category, type Channel } from '../core/protocol/table';
import type { Engine } from '../core/engine';
import type { EngineEvent } from '../core/session/tracker';
import type { Session, SessionMessage } from '../core/session/session';
import {
  CUSTOM_REQUESTS, parseMemoryReference, type MemorySpace, type CustomRequestName, type CustomRequests, type CustomEvents, type NotifierDto, type Phase,
  type TimelineEntry, type StopDto,
} from '../common/dap';
import { attachConfig, launchConfig, ConfigError, type SessionConfig } from './config';
import { createEngine } from './engines';
import { BreakpointSet, CATEGORY_IDS, categoryLabel, type Hit } from './breakpoints';
import { Timeline } from './timeline';
import { VariableStore, VariableTrees } from './variables';
import { deviceSpace, messageDto, messageTitle, notifierDto, notifierText, ringEventDto, ringSnapshotDto, ringText, stateDto } from './dto';
import { readGuest, MemoryUnavailable } from './memory';
import { evaluateCommand } from './console';

export const MAIN_THREAD = 1;
export const BACKEND_THREAD = 2;
const threadOf = (c: Channel): number => (c === 'main' ? MAIN_THREAD : BACKEND_THREAD);
const channelOf = (threadId: number): Channel => (threadId === BACKEND_THREAD ? 'backend' : 'main');

/** A message stopped at the engine's gate: not relayed until released. */
interface Held { holdId: number; msg: SessionMessage }

interface Stop { reason: string; description: string; held?: Held; hit?: Hit }

/** A stack frame: one message of one session's history (or the held one). */
interface FrameRef { session: number; seq: number; channel: Channel }

const REPLAY_NO_MEMORY = 'a replayed capture records messages, not guest memory';

export class VhostDebugSession extends LoggingDebugSession {
  private cfg?: SessionConfig;
  private engine?: Engine;
  private rings?: RingObserver;
  private readonly bps = new BreakpointSet();
  private configured = false;
  /** Why the next held message stops regardless of breakpoints. */
  private step: 'none' | 'step' | 'entry' = 'none';
  private stopped?: Stop;
  /** A message held before configurationDone: decided once breakpoints are known. */
  private early?: Held;
  private autoTimer?: NodeJS.Timeout;
  private readonly timeline = new Timeline();
  private group?: { session: number; phase: Phase };
  private readonly notifierCounts = new Map<number, Map<string, NotifierDto>>();
  private readonly memories = new Map<number, DeviceMemory>();
  private readonly store = new VariableStore();
  private readonly trees: VariableTrees;
  private readonly frames = new Map<number, FrameRef>();
  private readonly frameIds = new Map<string, number>();
  private nextFrame = 1;
  private clientMemoryReferences = false;
  private backendThread = false;
  private ended = false;
  private teardownP?: Promise<void>;
  private pending: TimelineEntry[] = [];
  private flushScheduled = false;

  constructor() {
    super();
    this.setDebuggerLinesStartAt1(true);
    this.setDebuggerColumnsStartAt1(true);
    const self = this;
    this.trees = new VariableTrees(this.store, {
      get memoryReferences() { return self.clientMemoryReferences; },
      snapshot: (s, v) => this.snapshot(s, v),
      notifiers: (id) => this.notifiersOf(id),
      get notifiersEnabled() { return !!self.cfg?.notifiers; },
      get memoryUnavailable() { return self.cfg?.mode === 'replay' ? REPLAY_NO_MEMORY : undefined; },
    });
    this.bps.onConditionProblem = (_id, message) => this.out(`breakpoint ${message}`, 'stderr');
  }

  // ---- set-up -------------------------------------------------------------------------------------------------

  protected override initializeRequest(response: DebugProtocol.InitializeResponse, args: DebugProtocol.InitializeRequestArguments): void {
    logger.setup(Logger.LogLevel.Stop, false);
    this.clientMemoryReferences = !!args.supportsMemoryReferences;
    response.body = {
      supportsConfigurationDoneRequest: true,
      supportsFunctionBreakpoints: true,
      supportsConditionalBreakpoints: true,
      supportsHitConditionalBreakpoints: true,
      supportsExceptionFilterOptions: true,
      supportsExceptionInfoRequest: true,
      exceptionBreakpointFilters: CATEGORY_IDS.map((c) => ({
        filter: c, label: categoryLabel(c), description: CATEGORIES[c], default: false,
        supportsCondition: true, conditionDescription: 'Condition on decoded fields, e.g. index == 1, num > 256, features & 0x100000000',
      })),
      supportsReadMemoryRequest: true,
      supportsTerminateRequest: true,
      supportsDelayedStackTraceLoading: true,
      supportsEvaluateForHovers: false,
      supportsCompletionsRequest: true,
      completionTriggerCharacters: [' '],
      supportsSteppingGranularity: false,
      supportsSetVariable: false,
    };
    this.sendResponse(response);
    this.sendEvent(new InitializedEvent());
  }

  protected override attachRequest(response: DebugProtocol.AttachResponse, args: DebugProtocol.AttachRequestArguments): void {
    void this.begin(response, () => attachConfig(args as Record<string, unknown>));
  }

  protected override launchRequest(response: DebugProtocol.LaunchResponse, args: DebugProtocol.LaunchRequestArguments): void {
    void this.begin(response, () => launchConfig(args as Record<string, unknown>));
  }

  private async begin(response: DebugProtocol.Response, make: () => SessionConfig): Promise<void> {
    if (this.engine || this.cfg) { this.sendErrorResponse(response, 1000, 'this debug session already runs an engine'); return; }
    let cfg: SessionConfig;
    try { cfg = make(); } catch (e) {
      this.sendErrorResponse(response, 1001, e instanceof ConfigError ? e.message : `invalid configuration: ${(e as Error).message}`);
      return;
    }
    if (cfg.trace) logger.setup(Logger.LogLevel.Verbose, false);
    let engine: Engine;
    try { engine = createEngine(cfg); } catch (e) {
      this.sendErrorResponse(response, 1002, (e as Error).message);
      return;
    }
    this.cfg = cfg;
    this.engine = engine;
    this.step = cfg.stopOnEntry ? 'entry' : 'none';
    engine.on('event', (e) => { try { this.onEngineEvent(e); } catch (err) { this.out(`internal error handling ${e.kind}: ${(err as Error).stack ?? err}`, 'stderr'); } });
    if (cfg.mode !== 'replay') {
      // Engines that capture split rings at notifications (proxy with notifiers, built-in back-end) say so themselves.
      this.rings = new RingObserver(engine, { pollHz: cfg.rings ? cfg.pollHz : 0, cpuBudget: cfg.ringCpu / 100 });
      this.rings.on('ring', (e) => this.onRing(e));
      this.rings.on('fault', (err) => this.out(`ring observer: ${err.message}`, 'stderr'));
    }
    this.applyGate();
    try {
      await engine.start();
    } catch (e) {
      await engine.stop().catch(() => undefined);
      this.rings?.stop();
      this.rings = undefined;
      this.engine = undefined;
      this.cfg = undefined;
      const msg = (e as Error).message.replace(/^listen: |^bind: /, 'cannot listen: ');
      this.sendErrorResponse(response, 1003, cfg.mode === 'replay' ? `cannot replay ${cfg.capture}: ${msg}` : msg);
      return;
    }
    engine.finished().then(() => this.onFinished(), () => this.onFinished());
    this.sendResponse(response);
    this.out(this.describe(cfg));
    if (cfg.autoContinueSeconds > 0) this.out(`A held message is released by itself after ${cfg.autoContinueSeconds} s (autoContinueSeconds).`);
  }

  private describe(cfg: SessionConfig): string {
    switch (cfg.mode) {
      case 'proxy': {
        const ep = (e: { mode: string; path: string }, who: string) => (e.mode === 'listen' ? `listening for the ${who} on ${e.path}` : `connecting to the ${who} at ${e.path}`);
        return `Vhost Lens proxy: ${ep(cfg.frontend, 'front-end')}, ${ep(cfg.backend, 'back-end')}${cfg.capture ? `, recording to ${cfg.capture}` : ''}. ` +
          'Set function breakpoints on message names (SET_VRING_*) or enable message categories in the Breakpoints view.';
      }
      case 'replay': return `Vhost Lens replay of ${cfg.capture} (${REPLAY_NO_MEMORY}).`;
      case 'backend': return `Vhost Lens built-in ${cfg.backendDevice} back-end (${cfg.backendDevice === 'blk' ? `image ${cfg.image}${cfg.readOnly ? ', read-only' : ''}` : cfg.tap ? `TAP ${cfg.tap}` : 'loopback'}), ${cfg.connect ? 'connecting to' : 'listening on'} ${cfg.socket}.`;
    }
  }

  protected override configurationDoneRequest(response: DebugProtocol.ConfigurationDoneResponse): void {
    this.configured = true;
    this.sendResponse(response);
    this.applyGate();
    const h = this.early;
    this.early = undefined;
    if (h) this.decide(h);
  }

  // ---- breakpoints --------------------------------------------------------------------------------------------

  protected override setFunctionBreakPointsRequest(response: DebugProtocol.SetFunctionBreakpointsResponse, args: DebugProtocol.SetFunctionBreakpointsArguments): void {
    const results = this.bps.setFunctionBreakpoints(args.breakpoints ?? []);
    response.body = { breakpoints: results.map((r) => ({ id: r.id, verified: r.verified, ...(r.message ? { message: r.message } : {}) })) };
    this.sendResponse(response);
    this.applyGate();
  }

  protected override setExceptionBreakPointsRequest(response: DebugProtocol.SetExceptionBreakpointsResponse, args: DebugProtocol.SetExceptionBreakpointsArguments): void {
    const results = this.bps.setFilters(args.filters ?? [], args.filterOptions ?? []);
    response.body = { breakpoints: results.map((r) => ({ id: r.id, verified: r.verified, ...(r.message ? { message: r.message } : {}) })) };
    this.sendResponse(response);
    this.applyGate();
  }

  protected override setBreakPointsRequest(response: DebugProtocol.SetBreakpointsResponse, args: DebugProtocol.SetBreakpointsArguments): void {
    response.body = {
      breakpoints: (args.breakpoints ?? []).map(() => ({
        verified: false, message: 'vhost-user sessions have no source lines: add a function breakpoint on a message name (e.g. SET_VRING_*) or enable a message category',
      })),
    };
    this.sendResponse(response);
  }

  /** Hold every message while not configured, stepping or stopped; otherwise only those a breakpoint could match. */
  private applyGate(): void {
    if (!this.engine) return;
    const all = !this.configured || this.step !== 'none' || this.stopped !== undefined;
    this.engine.setGate(all, all ? [] : this.bps.gateKeys());
  }

  // ---- engine events ------------------------------------------------------------------------------------------

  private onEngineEvent(e: EngineEvent): void {
    switch (e.kind) {
      case 'listening':
        this.note('connection', `--- listening for the ${e.side === 'frontend' ? 'front-end' : 'back-end'} on ${e.path}`);
        return;
      case 'connection':
        this.note('connection', `--- ${e.side === 'frontend' ? 'front-end' : 'back-end'} ${e.event}${e.detail ? `: ${e.detail}` : ''}`, e.session, e.event === 'failed' ? 'stderr' : 'console');
        return;
      case 'session':
        this.closeGroup();
        if (e.event === 'start') { this.note('session', `--- vhost-user session ${e.session} started`, e.session); return; }
        this.onSessionEnd(e.session, e.reason ?? 'ended', e.summary);
        return;
      case 'message':
        this.onMessage(e);
        return;
      case 'held':
        this.onHeld({ holdId: e.holdId, msg: e.msg });
        return;
      case 'channel':
        if (e.event === 'open' && !this.backendThread) {
          this.backendThread = true;
          this.sendEvent(new ThreadEvent('started', BACKEND_THREAD));
        }
        this.note('channel', `--- back-end channel ${e.event}${e.reason ? `: ${e.reason}` : ''}`, e.session);
        return;
      case 'notify': {
        const dto = notifierDto(e);
        let m = this.notifierCounts.get(e.session);
        if (!m) { m = new Map(); this.notifierCounts.set(e.session, m); }
        m.set(`${e.vring}:${e.what}`, dto);
        const phase = this.activity(e.session);
        const text = notifierText(dto);
        this.out(text, 'stdout');
        this.emitEntry(this.timeline.add({ kind: 'notify', time: e.last, session: e.session, phase, text, notify: dto }));
        return;
      }
      case 'error':
        this.note('error', `!!! ${e.where}: ${e.message}`, e.session, 'stderr');
        return;
      case 'stopped':
        return;
    }
  }

  private onMessage(e: Extract<EngineEvent, { kind: 'message' }>): void {
    const { msg, changes, state } = e;
    const { phase, changed } = this.timeline.advance(msg.session, msg);
    if (changed || this.group?.session !== msg.session) this.openGroup(msg.session, phase);
    const text = messageLine(msg, state.device);
    this.out(text, msg.problems.some((p) => p.severity === 'error') ? 'stderr' : 'stdout');
    for (const c of changes) if (c.what !== 'vring') this.out(`    = ${stateChangeLine(c, state)}`, 'stdout');
    this.emitEntry(this.timeline.add({ kind: 'message', time: msg.time, session: msg.session, phase, text, message: messageDto(msg, state.device) }));
    if (changes.length) this.sendCustomEvent('vhostLens/stateChanged', { session: msg.session, changes: [...new Set(changes.map((c) => c.what))] });
  }

  private onRing(e: RingEvent): void {
    if (this.ended) return;
    const dto = ringEventDto(e, deviceSpace(this.sessionOf(e.session)?.state));
    const text = ringText(dto);
    const phase = this.activity(e.session);
    this.out(text, 'stdout');
    this.emitEntry(this.timeline.add({ kind: 'ring', time: e.time, session: e.session, phase, text, ring: dto }));
  }

  /** Ring or notifier activity: the session is running (opens that group if it was still setting up). */
  private activity(session: number): Phase {
    const { phase, changed } = this.timeline.activity(session);
    if (changed) this.openGroup(session, phase);
    return phase;
  }

  private onHeld(h: Held): void {
    if (!this.configured) {
      if (this.early) this.out(`internal: a second message was held before configuration (#${h.msg.seq}); relaying it`, 'stderr');
      if (this.early) { this.engine?.release(h.holdId); return; }
      this.early = h;
      return;
    }
    this.decide(h);
  }

  /** A held message: stop on it (stepping, paused, a breakpoint hit) or relay it at once. */
  private decide(h: Held): void {
    if (this.stopped) {
      if (!this.stopped.held) { this.stopAt('pause', h); return; }
      // The engine holds one message at a time; a second one means it was released meanwhile.
      this.engine?.release(h.holdId);
      return;
    }
    const hit = this.bps.check(h.msg);
    if (hit) { this.step = 'none'; this.stopAt(hit.kind === 'function' ? 'function breakpoint' : 'exception', h, hit); return; }
    if (this.step !== 'none') {
      const reason = this.step;
      this.step = 'none';
      this.stopAt(reason, h);
      return;
    }
    this.engine?.release(h.holdId);
  }

  private stopAt(reason: string, held?: Held, hit?: Hit): void {
    const description = held ? messageTitle(held.msg) : 'Paused: the next message will be held (nothing crosses until you continue)';
    this.stopped = { reason, description, held, hit };
    this.store.reset();
    this.applyGate();
    const ev = new StoppedEvent(reason, threadOf(held?.msg.channel ?? 'main')) as DebugProtocol.StoppedEvent;
    ev.body.description = hit ? `${hit.kind === 'filter' ? `${hit.label} message` : `Breakpoint ${hit.label}`}: ${description}` : description;
    ev.body.allThreadsStopped = true;
    if (hit?.kind === 'function') ev.body.hitBreakpointIds = hit.ids;
    if (hit?.kind === 'filter') ev.body.text = `${hit.label}: ${description}`;
    if (held) {
      const device = this.sessionOf(held.msg.session)?.state.device ?? 'unknown';
      const text = `⏸ held (${reason}): ${messageLine(held.msg, device)}`;
      this.out(text, 'console');
      this.emitEntry(this.timeline.add({ kind: 'held', time: held.msg.time, session: held.msg.session, phase: this.timeline.phaseOf(held.msg.session), text, message: messageDto(held.msg, device) }));
      const secs = this.cfg?.autoContinueSeconds ?? 0;
      if (secs > 0) {
        this.autoTimer = setTimeout(() => {
          this.autoTimer = undefined;
          if (this.stopped?.held !== held) return;
          this.out(`auto-continue: released ${held.msg.name} #${held.msg.seq} after ${secs} s (autoContinueSeconds)`, 'console');
          this.resume('continue', false);
        }, secs * 1000);
      }
    }
    this.sendEvent(ev);
  }

  /** Leave the stopped state: relay the held message; `step` stops at the next one. */
  private resume(mode: 'continue' | 'step', byUser: boolean): void {
    if (this.autoTimer) { clearTimeout(this.autoTimer); this.autoTimer = undefined; }
    const held = this.stopped?.held;
    this.stopped = undefined;
    this.store.reset();
    this.step = mode === 'step' ? 'step' : 'none';
    this.applyGate();
    if (held) this.engine?.release(held.holdId);
    if (!byUser) this.sendEvent(new ContinuedEvent(held ? threadOf(held.msg.channel) : MAIN_THREAD, true));
  }

  private onSessionEnd(session: number, reason: string, summary?: { messages: number; problems: number; missingReplies: string[] }): void {
    const stats = summary ? ` (${summary.messages} messages, ${summary.problems} problems${summary.missingReplies.length ? `, unanswered: ${summary.missingReplies.join(' ')}` : ''})` : '';
    if (this.early?.msg.session === session) this.early = undefined;
    const held = this.stopped?.held;
    if (held && held.msg.session === session) {
      if (this.autoTimer) { clearTimeout(this.autoTimer); this.autoTimer = undefined; }
      this.stopped = undefined;
      this.step = 'none';
      this.store.reset();
      const text = `The vhost-user session ended while ${held.msg.name} #${held.msg.seq} was held: ${reason}. The held message was not delivered.`;
      this.out(text, 'stderr');
      this.out(text, 'important');
      this.sendEvent(new ContinuedEvent(threadOf(held.msg.channel), true));
      this.applyGate();
    }
    this.note('session', `--- vhost-user session ${session} ended: ${reason}${stats}`, session);
    this.memories.delete(session);
  }

  private onFinished(): void {
    if (this.ended) return;
    this.ended = true;
    this.closeGroup();
    if (this.autoTimer) { clearTimeout(this.autoTimer); this.autoTimer = undefined; }
    if (this.stopped) { this.stopped = undefined; this.sendEvent(new ContinuedEvent(MAIN_THREAD, true)); }
    this.out(this.cfg?.mode === 'replay' ? `--- replay finished: ${this.timeline.all().filter((e) => e.kind === 'message').length} messages` : '--- the engine stopped: debug session ends');
    this.flush();
    this.sendEvent(new TerminatedEvent());
  }

  // ---- output and the timeline --------------------------------------------------------------------------------

  private out(text: string, category: 'console' | 'stdout' | 'stderr' | 'important' = 'console'): void {
    this.sendEvent(new OutputEvent(`${text}\n`, category));
  }

  private note(kind: TimelineEntry['kind'], text: string, session?: number, category: 'console' | 'stderr' = 'console'): void {
    this.out(text, category);
    this.emitEntry(this.timeline.add({ kind, time: Date.now() * 1000, ...(session !== undefined ? { session } : {}), text }));
  }

  private openGroup(session: number, phase: Phase): void {
    this.closeGroup();
    const ev = new OutputEvent(`${phase}\n`, 'console') as DebugProtocol.OutputEvent;
    ev.body.group = 'start';
    this.sendEvent(ev);
    this.group = { session, phase };
  }

  private closeGroup(): void {
    if (!this.group) return;
    const ev = new OutputEvent('', 'console') as DebugProtocol.OutputEvent;
    ev.body.group = 'end';
    this.sendEvent(ev);
    this.group = undefined;
  }

  private emitEntry(e: TimelineEntry): void {
    this.pending.push(e);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => this.flush());
  }

  private flush(): void {
    this.flushScheduled = false;
    if (!this.pending.length) return;
    const entries = this.pending;
    this.pending = [];
    this.sendCustomEvent('vhostLens/timeline', { entries });
  }

  private sendCustomEvent<K extends keyof CustomEvents>(name: K, body: CustomEvents[K]): void {
    this.sendEvent(new Event(name, body));
  }

  // ---- execution control --------------------------------------------------------------------------------------

  protected override continueRequest(response: DebugProtocol.ContinueResponse): void {
    response.body = { allThreadsContinued: true };
    this.sendResponse(response);
    this.resume('continue', true);
  }

  protected override nextRequest(response: DebugProtocol.NextResponse): void {
    this.sendResponse(response);
    this.resume('step', true);
  }

  protected override stepInRequest(response: DebugProtocol.StepInResponse): void {
    this.sendResponse(response);
    this.resume('step', true);
  }

  protected override stepOutRequest(response: DebugProtocol.StepOutResponse): void {
    this.sendResponse(response);
    this.resume('step', true);
  }

  /** Stops at once; the next message is held and shown on top (nothing crosses while paused). */
  protected override pauseRequest(response: DebugProtocol.PauseResponse): void {
    this.sendResponse(response);
    if (this.stopped || !this.engine || this.ended) return;
    this.step = 'none';
    this.stopAt('pause');
  }

  // ---- threads, stack, scopes, variables ----------------------------------------------------------------------

  protected override threadsRequest(response: DebugProtocol.ThreadsResponse): void {
    const threads = [new Thread(MAIN_THREAD, 'vhost-user main channel')];
    if (this.backendThread) threads.push(new Thread(BACKEND_THREAD, 'back-end channel'));
    response.body = { threads };
    this.sendResponse(response);
  }

  /** The session shown: the held message's, else the newest. */
  private currentSession(): Session | undefined {
    const held = this.stopped?.held ?? this.early;
    if (held) return this.sessionOf(held.msg.session);
    return this.engine?.tracker.current;
  }

  private sessionOf(id: number): Session | undefined { return this.engine?.tracker.sessions.get(id); }

  private frameId(ref: FrameRef): number {
    const key = `${ref.session}:${ref.seq}`;
    let id = this.frameIds.get(key);
    if (id === undefined) {
      id = this.nextFrame++;
      this.frameIds.set(key, id);
      this.frames.set(id, ref);
    }
    return id;
  }

  /** The message of a frame: the held one, else from the session's history. */
  private frameMessage(frameId: number | undefined): { msg: SessionMessage; held: boolean; session: Session } | undefined {
    const ref = frameId !== undefined ? this.frames.get(frameId) : undefined;
    const held = this.stopped?.held;
    if (!ref) {
      if (held) { const s = this.sessionOf(held.msg.session); return s ? { msg: held.msg, held: true, session: s } : undefined; }
      const s = this.currentSession();
      const last = s?.messages[s.messages.length - 1];
      return s && last ? { msg: last, held: false, session: s } : undefined;
    }
    const session = this.sessionOf(ref.session);
    if (!session) return undefined;
    if (held && held.msg.session === ref.session && held.msg.seq === ref.seq) return { msg: held.msg, held: true, session };
    const msg = findBySeq(session.messages, ref.seq);
    return msg ? { msg, held: false, session } : undefined;
  }

  protected override stackTraceRequest(response: DebugProtocol.StackTraceResponse, args: DebugProtocol.StackTraceArguments): void {
    const channel = channelOf(args.threadId);
    const session = this.currentSession();
    const list: { msg: SessionMessage; held: boolean }[] = [];
    const held = this.stopped?.held;
    if (session) {
      if (held && held.msg.channel === channel && held.msg.session === session.state.id) list.push({ msg: held.msg, held: true });
      const start = args.startFrame ?? 0;
      const want = args.levels ? start + args.levels : Infinity;
      for (let i = session.messages.length - 1; i >= 0 && list.length < want; i--) {
        const m = session.messages[i];
        if (m.channel === channel) list.push({ msg: m, held: false });
      }
    }
    const start = args.startFrame ?? 0;
    const page = list.slice(start, args.levels ? start + args.levels : undefined);
    const device = session?.state.device ?? 'unknown';
    const frames = page.map(({ msg, held: isHeld }) => {
      const id = this.frameId({ session: msg.session, seq: msg.seq, channel: msg.channel });
      const detail = payloadText(msg, device);
      const name = `${isHeld ? '⏸ ' : ''}#${msg.seq} ${msg.name}${msg.reply ? ' reply' : ''} ${msg.from === 'frontend' ? 'F→B' : 'B→F'}${detail ? ` ${detail}` : ''}`;
      const f = new StackFrame(id, name.length > 160 ? `${name.slice(0, 157)}…` : name, new Source(`#${msg.seq} ${msg.name}${msg.reply ? ' reply' : ''}`, undefined, id, 'vhost-user message'), 1, 1) as DebugProtocol.StackFrame;
      f.presentationHint = isHeld ? 'normal' : 'subtle';
      return f;
    });
    let total = 0;
    if (session) total = session.messages.reduce((n, m) => n + (m.channel === channel ? 1 : 0), 0) + (held && held.msg.channel === channel && held.msg.session === session.state.id ? 1 : 0);
    response.body = { stackFrames: frames, totalFrames: total };
    this.sendResponse(response);
  }

  protected override sourceRequest(response: DebugProtocol.SourceResponse, args: DebugProtocol.SourceArguments): void {
    const ref = args.source?.sourceReference ?? args.sourceReference;
    const fm = this.frameMessage(ref);
    if (!fm || !this.frames.has(ref)) { this.sendErrorResponse(response, 2001, 'this message is no longer in the history'); return; }
    response.body = { content: messageDocument(fm.msg, fm.held, fm.session.state.device), mimeType: 'text/plain' };
    this.sendResponse(response);
  }

  protected override scopesRequest(response: DebugProtocol.ScopesResponse, args: DebugProtocol.ScopesArguments): void {
    const fm = this.frameMessage(args.frameId);
    if (!fm) { response.body = { scopes: [] }; this.sendResponse(response); return; }
    const { msg, held, session } = fm;
    response.body = {
      scopes: [
        new Scope(`Message #${msg.seq} ${msg.name}${msg.reply ? ' reply' : ''}${held ? ' (held)' : ''}`, this.store.add(() => this.trees.message(msg, held, session.state)), false),
        new Scope('Session', this.store.add(() => this.trees.session(session)), false),
        new Scope('Vrings', this.store.add(() => this.trees.vrings(session)), false),
        new Scope('Notifiers', this.store.add(() => this.trees.notifiers(session)), false),
      ],
    };
    this.sendResponse(response);
  }

  protected override variablesRequest(response: DebugProtocol.VariablesResponse, args: DebugProtocol.VariablesArguments): void {
    let vars: DebugProtocol.Variable[];
    try { vars = this.store.get(args.variablesReference) ?? []; } catch (e) {
      vars = [{ name: 'error', value: (e as Error).message, variablesReference: 0 }];
    }
    if (args.filter === 'named') vars = vars.filter((v) => !/^\[\d+\]$/.test(v.name));
    if (args.start !== undefined || args.count !== undefined) {
      const start = args.start ?? 0;
      vars = vars.slice(start, args.count ? start + args.count : undefined);
    }
    response.body = { variables: vars };
    this.sendResponse(response);
  }

  protected override exceptionInfoRequest(response: DebugProtocol.ExceptionInfoResponse): void {
    const st = this.stopped;
    const msg = st?.held?.msg;
    const category = st?.hit?.category ?? (msg?.category as Category | undefined);
    response.body = {
      exceptionId: category ?? 'message',
      description: st ? `${st.hit?.label ?? st.reason}: ${st.description}` : 'not stopped',
      breakMode: 'always',
      details: msg ? { message: specFor(msg.channel, msg.code)?.summary ?? msg.name, typeName: msg.name } : undefined,
    };
    this.sendResponse(response);
  }

  // ---- memory and the Debug Console --------------------------------------------------------------------------

  private memoryOf(s: Session): DeviceMemory {
    let m = this.memories.get(s.state.id);
    if (!m) { m = sessionMemory(s.state); this.memories.set(s.state.id, m); }
    return m;
  }

  private snapshot(s: Session, vring: number): RingSnapshot {
    if (this.cfg?.mode === 'replay') throw new MemoryUnavailable(`ring contents are not available: ${REPLAY_NO_MEMORY}`);
    if (this.rings) return this.rings.snapshot(s.state.id, vring);
    const v = s.state.vrings.get(vring);
    if (!v) throw new Error(`no vring ${vring}`);
    return snapshotRing(this.memoryOf(s), v, { features: s.state.features.acked, device: s.state.device });
  }

  private notifiersOf(session: number): NotifierDto[] | undefined {
    const m = this.notifierCounts.get(session);
    return m ? [...m.values()].sort((a, b) => a.vring - b.vring || a.what.localeCompare(b.what)) : undefined;
  }

  /** gpa and uva read the regions as they are; iova (a device address) goes through the IOTLB when the session has one. */
  private read(space: MemorySpace, addr: bigint, count: number): { data: Uint8Array; unreadable: number } {
    if (this.cfg?.mode === 'replay') throw new MemoryUnavailable(`guest memory is not available in replay: ${REPLAY_NO_MEMORY}`);
    const s = this.currentSession();
    if (!s) throw new MemoryUnavailable('no vhost-user session yet');
    if (!s.state.memory.length) throw new MemoryUnavailable('the front-end has not sent its memory table yet (SET_MEM_TABLE / ADD_MEM_REG)');
    const m = this.memoryOf(s);
    return space === 'iova' ? readGuest(m, 'gpa', addr, count) : readGuest(m.regions, space, addr, count);
  }

  protected override readMemoryRequest(response: DebugProtocol.ReadMemoryResponse, args: DebugProtocol.ReadMemoryArguments): void {
    const ref = parseMemoryReference(args.memoryReference);
    if (!ref) { this.sendErrorResponse(response, 3001, `not a guest memory reference: "${args.memoryReference}" (gpa:0x…, uva:0x… or iova:0x…)`); return; }
    let addr = ref.addr + BigInt(args.offset ?? 0);
    if (addr < 0n) addr = 0n;
    try {
      const r = this.read(ref.space, addr, args.count);
      response.body = { address: `0x${addr.toString(16)}`, data: Buffer.from(r.data).toString('base64'), ...(r.unreadable ? { unreadableBytes: r.unreadable } : {}) };
      this.sendResponse(response);
    } catch (e) {
      this.sendErrorResponse(response, 3002, (e as Error).message);
    }
  }

  protected override evaluateRequest(response: DebugProtocol.EvaluateResponse, args: DebugProtocol.EvaluateArguments): void {
    try {
      const r = evaluateCommand(args.expression, {
        session: () => this.currentSession(),
        message: () => this.frameMessage(args.frameId),
        trees: this.trees,
        store: this.store,
        read: (space, addr, len) => this.read(space, addr, len),
        snapshot: (s, v) => this.snapshot(s, v),
        notifiers: (id) => this.notifiersOf(id),
        timeline: this.timeline,
        memoryReferences: this.clientMemoryReferences,
        stopped: () => this.stopped && { reason: this.stopped.reason, description: this.stopped.description },
      });
      response.body = { result: r.result, variablesReference: r.variablesReference ?? 0, ...(r.memoryReference ? { memoryReference: r.memoryReference } : {}) };
      this.sendResponse(response);
    } catch (e) {
      this.sendErrorResponse(response, 4001, (e as Error).message, undefined, ErrorDestination.Telemetry);
    }
  }

  protected override completionsRequest(response: DebugProtocol.CompletionsResponse, args: DebugProtocol.CompletionsArguments): void {
    const words = ['help', 'features', 'state', 'regions', 'vring ', 'mem ', 'notifiers', 'timeline ', 'message'];
    const text = args.text.slice(0, Math.max(0, args.column - 1)).trimStart();
    response.body = { targets: words.filter((w) => w.startsWith(text) && w !== text).map((w) => ({ label: w.trim(), text: w, start: 0, length: text.length })) };
    this.sendResponse(response);
  }

  // ---- custom requests ----------------------------------------------------------------------------------------

  protected override customRequest(command: string, response: DebugProtocol.Response, args: unknown): void {
    if (!(CUSTOM_REQUESTS as readonly string[]).includes(command)) { super.customRequest(command, response, args); return; }
    try {
      response.body = this.custom(command as CustomRequestName, (args ?? {}) as never);
      this.sendResponse(response);
    } catch (e) {
      this.sendErrorResponse(response, 5001, (e as Error).message, undefined, ErrorDestination.Telemetry);
    }
  }

  private custom<K extends CustomRequestName>(command: K, args: CustomRequests[K]['args']): CustomRequests[K]['result'] {
    type R = CustomRequests[K]['result'];
    switch (command) {
      case 'vhostLens/state': {
        const a = args as CustomRequests['vhostLens/state']['args'];
        const s = a.session !== undefined ? this.sessionOf(a.session) : this.currentSession();
        const st = this.stopped;
        const stop: StopDto | null = st ? { reason: st.reason, description: st.description, ...(st.held ? { held: messageDto(st.held.msg, s?.state.device ?? 'unknown') } : {}) } : null;
        return {
          mode: this.cfg?.mode ?? 'proxy', session: s?.state.id ?? null, sessions: [...(this.engine?.tracker.sessions.keys() ?? [])],
          state: s ? stateDto(s.state) : null, stopped: stop,
          memoryAvailable: this.cfg?.mode !== 'replay' && !!s?.state.memory.some((r) => r.fd !== undefined),
          notifiers: s ? this.notifiersOf(s.state.id) ?? [] : [],
        } satisfies CustomRequests['vhostLens/state']['result'] as R;
      }
      case 'vhostLens/ringSnapshot': {
        const a = args as CustomRequests['vhostLens/ringSnapshot']['args'];
        const s = a.session !== undefined ? this.sessionOf(a.session) : this.currentSession();
        if (!s) throw new Error('no vhost-user session yet');
        if (typeof a.vring !== 'number') throw new Error('ringSnapshot needs "vring"');
        return ringSnapshotDto(s.state.id, a.vring, this.snapshot(s, a.vring), deviceSpace(s.state)) as R;
      }
      case 'vhostLens/timeline':
        return this.timeline.page(args as CustomRequests['vhostLens/timeline']['args']) as R;
      case 'vhostLens/messageTypes':
        return {
          messages: MESSAGES.map((m) => ({ channel: m.channel, code: m.code, name: m.name, category: m.category, summary: m.summary })),
          categories: CATEGORY_IDS.map((c) => ({ id: c, label: categoryLabel(c), description: CATEGORIES[c] })),
        } satisfies CustomRequests['vhostLens/messageTypes']['result'] as R;
    }
    throw new Error(`unknown request ${command}`);
  }

  // ---- teardown -----------------------------------------------------------------------------------------------

  protected override disconnectRequest(response: DebugProtocol.DisconnectResponse): void {
    void this.teardown().then(() => {
      this.sendResponse(response);
      this.shutdown();
    });
  }

  protected override terminateRequest(response: DebugProtocol.TerminateResponse): void {
    void this.teardown().then(() => {
      this.sendResponse(response);
      this.onFinished();
    });
  }

  /** Stop the engine (closing every socket and fd it owns); idempotent. */
  teardown(): Promise<void> {
    this.teardownP ??= (async () => {
      if (this.autoTimer) { clearTimeout(this.autoTimer); this.autoTimer = undefined; }
      this.rings?.stop();
      const e = this.engine;
      if (e) { try { await e.stop(); } catch { /* already stopped */ } }
      this.memories.clear();
    })();
    return this.teardownP;
  }

  override shutdown(): void {
    void this.teardown().finally(() => super.shutdown());
  }
}

/** Binary search by seq (history is in seq order; old entries may have been trimmed). */
function findBySeq(list: readonly SessionMessage[], seq: number): SessionMessage | undefined {
  let lo = 0, hi = list.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const s = list[mid].seq;
    if (s === seq) return list[mid];
    if (s < seq) lo = mid + 1; else hi = mid - 1;
  }
  return undefined;
}

/** The read-only text a frame's Source shows: the message decoded, then its bytes. */
export function messageDocument(m: SessionMessage, held: boolean, device: Session['state']['device']): string {
  const dto = messageDto(m, device);
  const lines = [
    `${messageTitle(m)}   #${m.seq}, session ${m.session}`,
    `status: ${held ? 'held at a breakpoint: not relayed yet' : 'relayed'}`,
    `time: ${new Date(Math.floor(m.time / 1000)).toISOString()}`,
    `header: request ${m.code}, flags 0x${m.flags.toString(16)}${m.reply ? ' REPLY' : ''}${m.needReply ? ' NEED_REPLY' : ''}, size ${m.size}`,
    `fds: ${m.fdInfo.length ? m.fdInfo.map((f) => f.kind).join(', ') : 'none'}`,
    `category: ${m.category ?? '-'}`,
    `summary: ${specFor(m.channel, m.code)?.summary ?? 'unknown request'}`,
    '',
    'payload:',
    JSON.stringify(dto.payload, null, 2),
    '',
    `problems: ${m.problems.length ? '' : 'none'}`,
    ...m.problems.map((p) => `  ${p.severity}: ${p.message}`),
    '',
    `bytes (${m.bytes.byteLength}):`,
    ...hexRows(m.bytes),
  ];
  return `${lines.join('\n')}\n`;
}

function hexRows(b: Uint8Array): string[] {
  const out: string[] = [];
  for (let off = 0; off < b.byteLength; off += 16) {
    out.push(`  ${off.toString(16).padStart(4, '0')}  ${Array.from(b.subarray(off, off + 16), (x) => x.toString(16).padStart(2, '0')).join(' ')}`);
  }
  return out;
}
