// The VSIX for linux-x64 carries the bundles and the ffi-rs binary: unpacked, its CLI relays a session with fds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FfiNative } from '../../core/node/ffi';
import { TestPeer, acceptOne, until } from '../helpers/peer';

const root = path.join(__dirname, '..', '..', '..');

test('vsce packages a linux-x64 VSIX whose CLI runs from the unpacked package (ffi-rs binary included)', { timeout: 180_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vl-vsix-'));
  const vsix = path.join(dir, 'vhost-lens.vsix');
  const vsce = path.join(root, 'node_modules', '.bin', 'vsce');
  const p = spawnSync(vsce, ['package', '--target', 'linux-x64', '--no-rewrite-relative-links', '-o', vsix], { cwd: root, encoding: 'utf8' });
  assert.equal(p.status, 0, p.stderr + p.stdout);
  const x = spawnSync('python3', ['-m', 'zipfile', '-e', vsix, path.join(dir, 'x')], { encoding: 'utf8' });
  assert.equal(x.status, 0, x.stderr);
  const ext = path.join(dir, 'x', 'extension');
  for (const f of ['dist/cli.js', 'dist/pumpWorker.js', 'dist/adapter.js', 'dist/extension.js', 'package.json',
    'node_modules/ffi-rs/index.js', 'node_modules/@yuuang/ffi-rs-linux-x64-gnu/ffi-rs.linux-x64-gnu.node']) {
    assert.ok(fs.existsSync(path.join(ext, f)), `VSIX carries ${f}`);
  }
  assert.ok(!fs.existsSync(path.join(ext, 'core')) && !fs.existsSync(path.join(ext, 'test')), 'no sources or tests in the VSIX');
  const manifest = JSON.parse(fs.readFileSync(path.join(ext, 'package.json'), 'utf8'));
  assert.equal(manifest.contributes.debuggers[0].type, 'vhost-user');

  // Run the packaged CLI as a proxy and pass a message with an fd through it.
  const n = new FfiNative();
  const beL = n.listenUnix(path.join(dir, 'be.sock'));
  const cli = spawn(process.execPath, [path.join(ext, 'dist', 'cli.js'), 'proxy', '--frontend', path.join(dir, 'fe.sock'), '--backend', path.join(dir, 'be.sock'), '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  cli.stdout!.on('data', (d) => { out += d; });
  try {
    await until(() => fs.existsSync(path.join(dir, 'fe.sock')), 'the packaged proxy listening', 30_000);
    const fe = TestPeer.connect(n, path.join(dir, 'fe.sock'));
    const be = await acceptOne(n, beL);
    const ev = n.eventfd(7, 'kick');
    fe.send({ channel: 'main', code: 12, payload: { index: 0, noFd: false } }, [n.dup(ev, 'sent')]);
    const m = await be.recv();
    assert.equal(m.fds.length, 1);
    const v = Buffer.alloc(8);
    fs.readSync(m.fds[0], v, 0, 8, null);
    assert.equal(v.readBigUInt64LE(0), 7n, 'the same eventfd came through the packaged relay');
    for (const f of [m.fds[0], ev]) n.close(f);
    fe.close();
    be.close();
    await until(() => out.includes('"name":"SET_VRING_KICK"'), 'the packaged CLI decoded the message', 30_000);
  } finally {
    cli.kill('SIGINT');
    await new Promise((r) => cli.once('exit', r));
    n.close(beL);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
