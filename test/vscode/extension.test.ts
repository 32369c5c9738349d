// A real VS Code (code-server's VS Code server and Node extension host, workbench in headless chromium) installs the
// packaged extension (VSIX); in its extension host test/vscode/host/suite.ts replays a capture recorded by the CLI
// proxy through VS Code's debug API, the adapter running in a process of its own. See test/vscode/README.md.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as util from 'node:util';
import { FfiNative } from '../../core/node/ffi';
import { CLI, runCli } from '../helpers/cliProxy';
import { TestPeer, acceptOne, until } from '../helpers/peer';
import { msg } from '../helpers/wire';
import { LOG_FILE, SPEC_FILE, type HostSpec } from './host/spec';

const root = path.join(__dirname, '..', '..', '..');
const CODE_SERVER = path.join(root, 'node_modules', '.cache', 'vhost-lens', 'code-server', 'node_modules', '.bin', 'code-server');
const CHROMIUM = process.env.VL_CHROMIUM ?? '/usr/bin/chromium';
const HOST_SUITE = path.join(__dirname, 'host', 'suite.js');
const RUN_MS = 120_000;

/** Everything the test needs, or one clear reason why not (never a skip). */
function preflight(): void {
  const setup = 'run `bash scripts/setup.sh` (as root) and `npm run build`';
  assert.ok(fs.existsSync(CODE_SERVER), `code-server is not installed at ${CODE_SERVER}: ${setup}`);
  assert.ok(fs.existsSync(CHROMIUM), `chromium is not installed at ${CHROMIUM} (Debian package chromium, or set VL_CHROMIUM): ${setup}`);
  assert.doesNotThrow(() => require.resolve('playwright-core'), `playwright-core is missing: ${setup}`);
  for (const f of ['dist/extension.js', 'dist/adapter.js', 'dist/cli.js']) assert.ok(fs.existsSync(path.join(root, f)), `${f} is missing: ${setup}`);
  assert.ok(fs.existsSync(HOST_SUITE), `${HOST_SUITE} is missing: ${setup}`);
}

/** A capture of a small real session: the CLI proxy between two synthetic peers, with an fd; its messages as replayed. */
async function recordCapture(t: TestContext, dir: string, file: string): Promise<HostSpec['messages']> {
  const n = new FfiNative();
  const fe = path.join(dir, 'fe.sock');
  const be = path.join(dir, 'be.sock');
  const beListen = n.listenUnix(be);
  t.after(() => n.close(beListen));
  const cli = runCli(t, ['proxy', '--frontend', fe, '--backend', be, '--json', '--capture', file]);
  try {
    const front = await until(() => { try { return TestPeer.connect(n, fe); } catch { return undefined; } }, 'the proxy listening', 30_000);
    const back = await acceptOne(n, beListen);
    const features = 0x1_4000_0000n;
    front.send(msg('GET_FEATURES').bytes());
    await back.recv();
    back.send(msg('GET_FEATURES').reply().u64(features).bytes());
    await front.recv();
    front.send(msg('SET_FEATURES').u64(features).bytes());
    front.send(msg('SET_OWNER').bytes());
    front.send(msg('SET_VRING_NUM').payload((p) => p.vringState(0, 256)).bytes());
    const kick = n.eventfd(0, 'kick');
    front.send(msg('SET_VRING_KICK').payload((p) => p.vringFd(0)).bytes(), [n.dup(kick, 'sent')]);
    n.close(kick);
    for (let i = 0; i < 4; i++) for (const fd of (await back.recv()).fds) n.close(fd);
    front.close();
    await back.eof();
    back.close();
    await cli.waitFor((c) => c.of('session').some((l) => l.event === 'end'), 'the session end');
  } catch (e) {
    throw new Error(`${(e as Error).message}\n${cli.log()}`);
  }
  assert.equal(await cli.interrupt(), 0, cli.log());
  const r = spawnSync(process.execPath, [CLI, 'replay', file, '--json'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)).filter((l) => l.kind === 'message')
    .map((m) => ({ seq: m.seq, name: m.name, reply: m.reply }));
}

/** Scratch home for code-server, VS Code and chromium: nothing is read from or written to the real one. */
function scratchEnv(dir: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, HOME: path.join(dir, 'home'), XDG_CONFIG_HOME: path.join(dir, 'home', '.config'),
    XDG_DATA_HOME: path.join(dir, 'home', '.local', 'share'), XDG_CACHE_HOME: path.join(dir, 'home', '.cache'), TMPDIR: path.join(dir, 'tmp') };
  for (const k of Object.keys(env)) if (k.startsWith('VSCODE_') || k === 'ELECTRON_RUN_AS_NODE') delete env[k];
  for (const k of ['HOME', 'XDG_CONFIG_HOME', 'XDG_DATA_HOME', 'XDG_CACHE_HOME', 'TMPDIR']) fs.mkdirSync(env[k]!, { recursive: true });
  return env;
}

/** code-server in a session and process group of its own (it keeps extension hosts alive): killed as a group. */
class CodeServer {
  log = '';
  private constructor(readonly proc: ChildProcess) {}

  static async start(t: TestContext, env: NodeJS.ProcessEnv, args: string[]): Promise<{ server: CodeServer; port: number }> {
    const proc = spawn(CODE_SERVER, ['--auth', 'none', '--bind-addr', '127.0.0.1:0', '--disable-telemetry', '--disable-update-check',
      '--disable-workspace-trust', '--disable-getting-started-override', '--disable-proxy', '--ignore-last-opened', ...args],
    { env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    const server = new CodeServer(proc);
    t.after(() => server.stop());
    proc.stdout!.setEncoding('utf8').on('data', (d: string) => { server.log += d; });
    proc.stderr!.setEncoding('utf8').on('data', (d: string) => { server.log += d; });
    const port = await until(() => {
      if (proc.exitCode !== null) throw new Error(`code-server exited (${proc.exitCode}) before listening\n${server.log}`);
      const m = /HTTP server listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(server.log);
      return m ? Number(m[1]) : undefined;
    }, 'code-server listening', 30_000).catch((e: Error) => { throw new Error(`${e.message}\n${server.log}`); });
    return { server, port };
  }

  /** SIGTERM to the group, SIGKILL to what is left after 5 s. */
  async stop(): Promise<void> {
    const pgid = this.proc.pid!;
    const alive = (): boolean => { try { process.kill(-pgid, 0); return true; } catch { return false; } };
    if (!alive()) return;
    process.kill(-pgid, 'SIGTERM');
    const end = Date.now() + 5000;
    while (alive() && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    if (alive()) process.kill(-pgid, 'SIGKILL');
  }
}

/** Open the workbench with the extension-test payload; resolves with the extension host's exit code and log lines. */
async function runInWorkbench(env: NodeJS.ProcessEnv, dir: string, port: number, folder: string, payload: [string, string][]): Promise<{ code: number | 'timeout'; lines: string[] }> {
  const { chromium } = require('playwright-core') as typeof import('playwright-core');
  const context = await chromium.launchPersistentContext(path.join(dir, 'chromium'), {
    executablePath: CHROMIUM, headless: true, env: env as Record<string, string>,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run'],
  });
  const lines: string[] = [];
  const t0 = Date.now();
  const mark = (s: string): void => { lines.push(`+${Date.now() - t0} ms ${s}`); };
  mark('[driver] chromium started');
  try {
    const page = context.pages()[0] ?? await context.newPage();
    page.on('pageerror', (e) => mark(`[page error] ${e.message}`));
    let exit!: (code: number) => void;
    const exited = new Promise<number>((r) => { exit = r; });
    await page.exposeFunction('codeAutomationLog', (type: string, args: unknown[]) => mark(`[${type}] ${util.format(...(args ?? []))}`));
    await page.exposeFunction('codeAutomationExit', (code: number) => exit(code));
    const url = `http://127.0.0.1:${port}/?folder=${encodeURIComponent(folder)}&payload=${encodeURIComponent(JSON.stringify(payload))}`;
    await page.goto(url);
    mark('[driver] page loaded');
    let timer: NodeJS.Timeout | undefined;
    const code = await Promise.race([exited, new Promise<'timeout'>((r) => { timer = setTimeout(() => r('timeout'), RUN_MS); })]);
    clearTimeout(timer);
    mark(`[driver] exit code ${code}`);
    return { code, lines };
  } finally {
    await context.close().catch(() => undefined);
  }
}

test('in a real VS Code, the installed VSIX activates, runs its adapter in its own process and replays a capture', { timeout: 300_000 }, async (t) => {
  preflight();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vl-vscode-'));
  let keep = false;
  t.after(() => { if (!keep) fs.rmSync(dir, { recursive: true, force: true }); });
  const times: string[] = [];
  let t0 = Date.now();
  const lap = (what: string): void => { times.push(`${what} ${Date.now() - t0} ms`); t0 = Date.now(); };

  // The workspace VS Code opens: the capture and what the in-host suite expects of it.
  const workspace = path.join(dir, 'workspace');
  fs.mkdirSync(workspace);
  const messages = await recordCapture(t, dir, path.join(workspace, 'session.vlcap'));
  assert.deepEqual(messages.map((m) => m.name), ['GET_FEATURES', 'GET_FEATURES', 'SET_FEATURES', 'SET_OWNER', 'SET_VRING_NUM', 'SET_VRING_KICK']);
  lap('capture');

  // Package the extension as users get it and install it into this VS Code.
  const env = scratchEnv(dir);
  const vsix = path.join(dir, 'vhost-lens.vsix');
  const p = spawnSync(path.join(root, 'node_modules', '.bin', 'vsce'), ['package', '--target', 'linux-x64', '--no-rewrite-relative-links', '-o', vsix], { cwd: root, encoding: 'utf8' });
  assert.equal(p.status, 0, p.stderr + p.stdout);
  lap('vsce package');
  const userData = path.join(dir, 'user-data');
  const extensionsDir = path.join(dir, 'extensions');
  fs.mkdirSync(path.join(userData, 'User'), { recursive: true });
  fs.writeFileSync(path.join(userData, 'User', 'settings.json'), JSON.stringify({
    'workbench.startupEditor': 'none', 'workbench.tips.enabled': false, 'security.workspace.trust.enabled': false,
    'extensions.autoCheckUpdates': false, 'extensions.autoUpdate': false, 'extensions.ignoreRecommendations': true,
    'update.mode': 'none', 'telemetry.telemetryLevel': 'off',
  }, null, 2));
  const dirs = ['--user-data-dir', userData, '--extensions-dir', extensionsDir];
  const inst = spawnSync(CODE_SERVER, [...dirs, '--install-extension', vsix], { env, encoding: 'utf8', timeout: 60_000 });
  assert.equal(inst.status, 0, `code-server --install-extension failed:\n${inst.stdout}${inst.stderr}`);
  lap('install VSIX');
  const installed = fs.readdirSync(extensionsDir).filter((d) => d.startsWith('vhost-lens.vhost-lens-')).map((d) => path.join(extensionsDir, d));
  assert.equal(installed.length, 1, `one installed copy: ${fs.readdirSync(extensionsDir).join(', ')}`);
  for (const f of ['dist/adapter.js', 'dist/extension.js', 'node_modules/ffi-rs']) assert.ok(fs.existsSync(path.join(installed[0], f)), `installed extension has ${f}`);
  for (const f of ['node_modules/.cache', 'node_modules/playwright-core', 'test', 'out']) assert.ok(!fs.existsSync(path.join(installed[0], f)), `test tooling kept out of the VSIX: ${f}`);

  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
  const spec: HostSpec = { extensionId: `${pkg.publisher}.${pkg.name}`, extensionsDir, capture: 'session.vlcap', messages };
  fs.writeFileSync(path.join(workspace, SPEC_FILE), JSON.stringify(spec, null, 2));
  // extensionTestsPath needs a development extension: an empty one, so the extension under test is the installed VSIX.
  const runner = path.join(dir, 'runner');
  fs.mkdirSync(runner);
  fs.writeFileSync(path.join(runner, 'package.json'), JSON.stringify({ name: 'vhost-lens-vscode-test', publisher: 'vhost-lens-test', version: '0.0.0', engines: { vscode: '*' } }));

  const { server, port } = await CodeServer.start(t, env, [...dirs, workspace]);
  lap('code-server start');
  const remote = (p: string): string => `vscode-remote://127.0.0.1:${port}${p}`;
  const run = await runInWorkbench(env, dir, port, workspace, [['extensionDevelopmentPath', remote(runner)], ['extensionTestsPath', remote(HOST_SUITE)]]);
  lap('VS Code run');
  await server.stop();

  const hostLog = fs.existsSync(path.join(workspace, LOG_FILE)) ? fs.readFileSync(path.join(workspace, LOG_FILE), 'utf8') : '(the suite wrote no log: did it load?)\n';
  t.diagnostic(`timings: ${times.join(', ')}`);
  for (const l of hostLog.trim().split('\n')) t.diagnostic(l);
  if (process.env.VL_VSCODE_VERBOSE) for (const l of run.lines) t.diagnostic(l);
  if (run.code !== 0 || !/^PASS$/m.test(hostLog)) {
    keep = true;
    assert.fail(`the extension-host suite ${run.code === 'timeout' ? `did not finish within ${RUN_MS} ms` : `exited with ${run.code}`} (scratch kept: ${dir})\n` +
      `--- host suite log:\n${hostLog}--- workbench/extension host log:\n${run.lines.join('\n')}\n--- code-server log:\n${server.log}`);
  }
});
