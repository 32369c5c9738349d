// Helpers shared by the benchmarks: statistics, formatting, and running the CLI as users run it.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const CLI = path.join(__dirname, '..', '..', 'dist', 'cli.js');

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}
export function fmt(v: number): string { return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2); }
export const range = (xs: number[]) => `${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))}`;

export async function waitSocket(p: string, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!fs.existsSync(p)) { if (Date.now() > end) throw new Error(`no socket ${p}`); await sleep(20); }
}

/** `vhost-lens ARGS --json` with its output decoded and written to /dev/null, once `socket` exists. */
export async function startCli(args: string[], socket: string): Promise<ChildProcess> {
  const out = fs.openSync('/dev/null', 'w');
  const p = spawn(process.execPath, [CLI, ...args, '--json'], { stdio: ['ignore', out, 'inherit'] });
  fs.closeSync(out);
  await waitSocket(socket);
  return p;
}

/** SIGINT (the CLI prints its summary and exits), then wait for the exit. */
export async function stopCli(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null) return;
  const done = new Promise((r) => p.once('exit', r));
  p.kill('SIGINT');
  await done;
}
