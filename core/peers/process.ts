// Peer process base: spawns a real peer in its own process group, records its output and waits on it.
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync, statSync, unlinkSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { StringDecoder } from 'node:string_decoder';

export interface ExitInfo { code: number | null; signal: NodeJS.Signals | null }

export interface PeerSpawnSpec {
  /** Short label used in logs and error messages, e.g. "qemu" or "testpmd-vhost". */
  name: string;
  command: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** 'pipe' keeps stdin open for writing (the QEMU serial console); default 'ignore' (/dev/null). */
  stdin?: 'pipe' | 'ignore';
}

export type OutputStream = 'out' | 'err' | 'all';

export interface WaitTextOptions {
  timeoutMs?: number;
  /** Only consider text from this offset of the chosen stream (see PeerProcess.length()). */
  from?: number;
  stream?: OutputStream;
}

/** Anything a PeerSet can clean up. */
export interface Peer {
  readonly name: string;
  /** Kill every process of this peer (SIGKILL to its process group) and wait for it to go. */
  kill(): Promise<unknown>;
  /** Output so far, for failure messages. */
  readonly log: string;
  /** Synchronous last-resort cleanup of files the peer leaves behind (optional). */
  cleanupFiles?(): void;
}

// Process groups of every peer still running, killed if this Node process exits with them alive.
const liveGroups = new Set<number>();
let exitHookInstalled = false;
function killLiveGroups(): void {
  for (const pgid of liveGroups) { try { process.kill(-pgid, 'SIGKILL'); } catch { /* already gone */ } }
}
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', killLiveGroups);
  // Peers run in their own process groups, so a terminal's Ctrl-C does not reach them: kill them here,
  // then restore the default action unless someone else handles the signal.
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = (): void => {
      killLiveGroups();
      process.removeListener(sig, onSignal);
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    };
    process.on(sig, onSignal);
  }
}

/** Process groups of peers still running (for tests that prove nothing leaked). */
export function liveProcessGroups(): number[] { return [...liveGroups]; }

/** Reject after timeoutMs with a message; a hang guard, never a timed assertion. */
export function withTimeout<T>(p: Promise<T>, timeoutMs: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms: ${what()}`)), timeoutMs);
  });
  return Promise.race([p, guard]).finally(() => clearTimeout(timer));
}

export function sleep(ms: number): Promise<void> { return new Promise((r) => setTimeout(r, ms)); }

/** The last `chars` characters of a log, indented, for error messages. */
export function tail(text: string, chars = 3000): string {
  const t = text.length > chars ? '...' + text.slice(-chars) : text;
  return t.replace(/\r/g, '').replace(/\x1b\[[0-9;]*[A-Za-z]/g, '').split('\n').map((l) => '    | ' + l).join('\n');
}

/** True when a UNIX stream socket bound to `path` is listening (read from /proc/net/unix, no connection made). */
export function isListening(path: string): boolean {
  let table: string;
  try { table = readFileSync('/proc/net/unix', 'utf8'); } catch { return existsSync(path); }
  for (const line of table.split('\n')) {
    const cols = line.trim().split(/\s+/);
    // Num RefCount Protocol Flags Type St Inode Path; Flags bit 0x10000 is __SO_ACCEPTCON (listening).
    if (cols.length >= 8 && cols.slice(7).join(' ') === path && (parseInt(cols[3], 16) & 0x10000) !== 0) return true;
  }
  return false;
}

/**
 * Wait until a peer listens on the UNIX socket `path`. `alive` lets the wait fail fast when the
 * process that should create it has died.
 */
export async function waitForListeningSocket(path: string, timeoutMs = 20_000, alive?: Peer & { running: boolean }): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (isListening(path)) return;
    if (alive && !alive.running) throw new Error(`${alive.name} exited before listening on ${path}\n${tail(alive.log)}`);
    if (Date.now() > deadline) {
      throw new Error(`no listener on ${path} after ${timeoutMs} ms` + (alive ? `\n${alive.name} output:\n${tail(alive.log)}` : ''));
    }
    await sleep(50);
  }
}

/** Remove a file if it exists (stale sockets). */
export function removeIfExists(path: string): void { try { unlinkSync(path); } catch { /* absent */ } }

/** The executable `name` resolves to on PATH (or `name` itself when it contains a slash), or undefined. */
export function whichBinary(name: string): string | undefined {
  const candidates = name.includes('/') ? [name] : (process.env.PATH ?? '').split(delimiter).filter(Boolean).map((d) => join(d, name));
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      if (statSync(c).isFile()) return c;
    } catch { /* not here */ }
  }
  return undefined;
}

export function onPath(name: string): boolean { return whichBinary(name) !== undefined; }

/** One spawned peer: its own process group, recorded stdout/stderr, text waits, signals. */
export class PeerProcess implements Peer {
  readonly name: string;
  readonly spec: PeerSpawnSpec;
  private child?: ChildProcess;
  private outText = '';
  private errText = '';
  private allText = '';
  private readonly waiters = new Set<() => void>();
  private exitInfo?: ExitInfo;
  private exitPromise?: Promise<ExitInfo>;
  /** Wall-clock ms when the process was spawned. */
  startedAt = 0;

  constructor(spec: PeerSpawnSpec) {
    this.spec = spec;
    this.name = spec.name;
  }

  get pid(): number | undefined { return this.child?.pid; }
  get running(): boolean { return this.child !== undefined && this.exitInfo === undefined; }
  get exit(): ExitInfo | undefined { return this.exitInfo; }
  /** stdout and stderr interleaved in arrival order. */
  get log(): string { return this.allText; }
  get stdout(): string { return this.outText; }
  get stderr(): string { return this.errText; }
  length(stream: OutputStream = 'all'): number { return this.text(stream).length; }
  commandLine(): string { return [this.spec.command, ...this.spec.args].join(' '); }

  /** Spawn the process; resolves once it is running, rejects if it cannot be executed. */
  start(): Promise<void> {
    if (this.child) throw new Error(`${this.name}: already started`);
    installExitHook();
    const child = spawn(this.spec.command, this.spec.args, {
      cwd: this.spec.cwd, env: this.spec.env ?? process.env, detached: true,
      stdio: [this.spec.stdin ?? 'ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    this.startedAt = Date.now();
    const outDec = new StringDecoder('utf8');
    const errDec = new StringDecoder('utf8');
    child.stdout!.on('data', (b: Buffer) => this.append('out', outDec.write(b)));
    child.stderr!.on('data', (b: Buffer) => this.append('err', errDec.write(b)));
    child.stdin?.on('error', () => { /* peer closed its console; reported through exit */ });
    this.exitPromise = new Promise<ExitInfo>((resolve) => {
      child.on('close', (code, signal) => {
        if (child.pid !== undefined) liveGroups.delete(child.pid);
        this.exitInfo = { code, signal };
        this.notify();
        resolve(this.exitInfo);
      });
    });
    return new Promise<void>((resolve, reject) => {
      child.once('spawn', () => { if (child.pid !== undefined) liveGroups.add(child.pid); resolve(); });
      child.once('error', (e) => {
        this.exitInfo ??= { code: null, signal: null };
        this.notify();
        reject(new Error(`${this.name}: cannot run ${this.spec.command}: ${e.message}`));
      });
    });
  }

  /** Resolves when the process has exited and its output is drained. */
  exited(): Promise<ExitInfo> {
    if (!this.exitPromise) return Promise.resolve({ code: null, signal: null });
    return this.exitPromise;
  }

  /** Write to the peer's stdin (only with stdin: 'pipe'). */
  write(text: string): void {
    if (!this.child?.stdin || !this.running) throw new Error(`${this.name}: not running, cannot write ${JSON.stringify(text)}`);
    this.child.stdin.write(text);
  }

  /** Wait for `re` to match the output; resolves with the match (index relative to the searched slice). */
  waitForText(re: RegExp, opts: WaitTextOptions = {}): Promise<RegExpExecArray> {
    const stream = opts.stream ?? 'all';
    const from = opts.from ?? 0;
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const rx = new RegExp(re.source, re.flags.replace('g', ''));
    return new Promise<RegExpExecArray>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const finish = (): void => { clearTimeout(timer); this.waiters.delete(check); };
      const check = (): void => {
        const m = rx.exec(this.text(stream).slice(from));
        if (m) { finish(); resolve(m); return; }
        if (this.exitInfo) {
          finish();
          reject(new Error(`${this.name} exited (${describeExit(this.exitInfo)}) before printing ${re}\n${tail(this.allText)}`));
        }
      };
      timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`${this.name}: ${re} not seen within ${timeoutMs} ms\n${tail(this.allText)}`));
      }, timeoutMs);
      this.waiters.add(check);
      check();
    });
  }

  /** Send a signal to the process (group=false) or its whole process group. */
  signal(sig: NodeJS.Signals, group = true): void {
    const pid = this.child?.pid;
    if (pid === undefined || !this.running) return;
    try { process.kill(group ? -pid : pid, sig); } catch { /* raced with exit */ }
  }

  /** Send `sig` (default SIGTERM) and wait; SIGKILL the group if it has not exited after graceMs. */
  async stop(sig: NodeJS.Signals = 'SIGTERM', graceMs = 10_000): Promise<ExitInfo> {
    if (!this.running) return this.exited();
    this.signal(sig, false);
    let timer: NodeJS.Timeout | undefined;
    const graceful = await Promise.race([
      this.exited().then((e) => e),
      new Promise<undefined>((r) => { timer = setTimeout(() => r(undefined), graceMs); }),
    ]);
    clearTimeout(timer);
    if (graceful) return graceful;
    this.signal('SIGKILL');
    return this.exited();
  }

  /** SIGKILL the whole process group and wait for the exit. */
  async kill(): Promise<ExitInfo> {
    this.signal('SIGKILL');
    return this.exited();
  }

  private text(stream: OutputStream): string {
    return stream === 'out' ? this.outText : stream === 'err' ? this.errText : this.allText;
  }

  private append(stream: 'out' | 'err', s: string): void {
    if (!s) return;
    if (stream === 'out') this.outText += s; else this.errText += s;
    this.allText += s;
    this.notify();
  }

  private notify(): void { for (const w of [...this.waiters]) w(); }
}

export function describeExit(e: ExitInfo): string {
  return e.signal ? `signal ${e.signal}` : `code ${e.code}`;
}
