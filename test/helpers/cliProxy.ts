// Runs the real `vhost-lens` CLI (dist/cli.js) as a child process and collects its JSON lines, for integration tests.
import { spawn, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import type { TestContext } from 'node:test';

export const CLI = path.join(__dirname, '..', '..', '..', 'dist', 'cli.js');

export type JsonLine = Record<string, any>;

export class CliRun {
  readonly proc: ChildProcess;
  readonly lines: JsonLine[] = [];
  stdout = '';
  stderr = '';
  readonly exited: Promise<number | null>;
  private partial = '';

  constructor(args: string[]) {
    this.proc = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc.stdout!.setEncoding('utf8').on('data', (d: string) => {
      this.stdout += d;
      const parts = (this.partial + d).split('\n');
      this.partial = parts.pop()!;
      for (const l of parts) if (l.startsWith('{')) this.lines.push(JSON.parse(l));
    });
    this.proc.stderr!.setEncoding('utf8').on('data', (d: string) => { this.stderr += d; });
    this.exited = new Promise((r) => this.proc.on('exit', (code) => r(code)));
  }

  of(kind: string): JsonLine[] { return this.lines.filter((l) => l.kind === kind); }
  messages(): JsonLine[] { return this.of('message'); }

  /** Wait until pred finds something in the JSON lines; the deadline is a hang guard. */
  async waitFor<T>(pred: (c: CliRun) => T | undefined | false, what: string, ms = 60_000): Promise<T> {
    const end = Date.now() + ms;
    for (;;) {
      const v = pred(this);
      if (v) return v;
      if (this.proc.exitCode !== null) throw new Error(`vhost-lens exited (${this.proc.exitCode}) before ${what}\n${this.stderr}`);
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}\nstderr: ${this.stderr}\nlast lines: ${this.stdout.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** SIGINT, then the exit code (the CLI prints a summary line first). */
  async interrupt(): Promise<number | null> {
    if (this.proc.exitCode === null) this.proc.kill('SIGINT');
    return this.exited;
  }

  log(): string { return `--- vhost-lens stdout (tail):\n${this.stdout.slice(-4000)}\n--- stderr:\n${this.stderr}`; }
}

export function runCli(t: TestContext, args: string[]): CliRun {
  const r = new CliRun(args);
  t.after(() => { if (r.proc.exitCode === null) r.proc.kill('SIGKILL'); });
  return r;
}
