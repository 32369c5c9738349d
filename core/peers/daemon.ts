// A daemon peer that serves one UNIX socket (qemu-storage-daemon, virtiofsd): start until it listens, stop, kill, restart.
import { PeerProcess, removeIfExists, waitForListeningSocket, type ExitInfo, type Peer } from './process';

/** One daemon; an instance can be restarted on the same socket, and keeps the logs of every run. */
export abstract class SocketDaemon implements Peer {
  protected proc?: PeerProcess;
  /** Every process this instance started, oldest first (their logs survive restarts). */
  readonly runs: PeerProcess[] = [];

  constructor(readonly name: string, readonly socket: string) {}

  /** The program and its arguments for the next run (may throw when the program is missing). */
  protected abstract command(): { command: string; args: string[] };

  get pid(): number | undefined { return this.proc?.pid; }
  get running(): boolean { return this.proc?.running ?? false; }
  /** Output of every run, separated by a header line. */
  get log(): string { return this.runs.map((p, i) => `--- run ${i + 1}: ${p.commandLine()}\n${p.log}`).join('\n'); }

  /** Spawn the daemon (removing a stale socket first) and wait until it listens. */
  async start(timeoutMs = 20_000): Promise<void> {
    if (this.running) throw new Error(`${this.name}: already running`);
    const { command, args } = this.command();
    removeIfExists(this.socket);
    const p = new PeerProcess({ name: this.name, command, args });
    this.proc = p;
    this.runs.push(p);
    await p.start();
    await waitForListeningSocket(this.socket, timeoutMs, p);
  }

  /** SIGTERM and wait for the exit (SIGKILL after graceMs). */
  stop(graceMs = 10_000): Promise<ExitInfo> { return this.proc ? this.proc.stop('SIGTERM', graceMs) : Promise.resolve({ code: null, signal: null }); }

  /** SIGKILL (the socket file stays behind, as after a crash). */
  kill(): Promise<ExitInfo> { return this.proc ? this.proc.kill() : Promise.resolve({ code: null, signal: null }); }

  /** Stop (SIGTERM, or SIGKILL with hard=true) and start again on the same socket. */
  async restart(hard = false): Promise<void> {
    if (this.running) await (hard ? this.kill() : this.stop());
    await this.start();
  }

  waitForText(re: RegExp, timeoutMs = 30_000): Promise<RegExpExecArray> {
    if (!this.proc) throw new Error(`${this.name}: not started`);
    return this.proc.waitForText(re, { timeoutMs });
  }

  exited(): Promise<ExitInfo> { return this.proc ? this.proc.exited() : Promise.resolve({ code: null, signal: null }); }

  cleanupFiles(): void { if (!this.running) removeIfExists(this.socket); }
}
