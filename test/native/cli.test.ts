// The CLI's contract for misuse: one clear line on stderr and a non-zero exit, nothing left behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FfiNative } from '../../core/node/ffi';
import { CLI } from '../helpers/cliProxy';

function cli(args: string[], opts: { uid?: number } = {}) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 30_000, ...opts });
}
const oneLine = (s: string) => s.trim().split('\n').length === 1;

test('misuse gets one line and a non-zero exit', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vl-cli-'));
  const n = new FfiNative();
  const live = path.join(dir, 'live.sock');
  const l = n.listenUnix(live);
  try {
    const cases: [string[], RegExp][] = [
      [['proxy', '--frontend', path.join(dir, 'p.sock'), '--backend', path.join(dir, 'missing.sock')], /back-end socket .*missing\.sock does not exist/],
      [['proxy', '--frontend', live, '--backend', live], /in use/],
      [['proxy', '--frontend', path.join(dir, 'no-such-dir', 'p.sock'), '--backend', live], /ENOENT/],
      [['proxy', '--frontend', 'tcp:1.2.3.4', '--backend', live], /unknown endpoint kind/],
      [['proxy', '--backend', live], /needs --frontend and --backend/],
      [['proxy', '--frontend', path.join(dir, 'q.sock'), '--backend', live, '--socket-mode', '999'], /--socket-mode must be octal/],
      [['proxy', '--frontend', path.join(dir, 'r.sock'), '--backend', live, '--poll-hz', '5'], /--poll-hz needs --rings/],
      [['replay', path.join(dir, 'nothing.vlcap')], /ENOENT|no such file/i],
      [['frobnicate'], /unknown command "frobnicate"/],
    ];
    for (const [args, re] of cases) {
      const r = cli(args);
      assert.notEqual(r.status, 0, `${args.join(' ')} must fail`);
      assert.match(r.stderr, re, `${args.join(' ')}: ${r.stderr}`);
      assert.ok(oneLine(r.stderr), `one line for ${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, /^vhost-lens: /);
    }
    // Nothing is left listening where a failed start was attempted.
    for (const s of ['p.sock', 'q.sock', 'r.sock']) assert.ok(!fs.existsSync(path.join(dir, s)), `${s} removed`);
    // Permission: a non-root user cannot create a socket in a root-only directory, nor reach a root-only one.
    fs.chmodSync(dir, 0o711);
    const hidden = cli(['proxy', '--frontend', path.join(dir, 's.sock'), '--backend', path.join(dir, 'locked2', 'x.sock')], { uid: 65534 });
    fs.mkdirSync(path.join(dir, 'locked2'), { mode: 0o700 });
    const hidden2 = cli(['proxy', '--frontend', path.join(dir, 's.sock'), '--backend', path.join(dir, 'locked2', 'x.sock')], { uid: 65534 });
    assert.match(hidden.stderr, /does not exist/);
    assert.match(hidden2.stderr, /permission denied/);
    const locked = path.join(dir, 'locked');
    fs.mkdirSync(locked, { mode: 0o700 });
    const r = cli(['proxy', '--frontend', path.join(locked, 'p.sock'), '--backend', live], { uid: 65534 });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /EACCES|permission/i);
    assert.ok(oneLine(r.stderr), r.stderr);
  } finally {
    n.close(l);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a capture that is not a capture is refused clearly', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vl-cli-'));
  const f = path.join(dir, 'x.vlcap');
  fs.writeFileSync(f, '{"format":"something-else","version":1}\n');
  const r1 = cli(['replay', f]);
  assert.equal(r1.status, 2);
  assert.match(r1.stderr, /not a vhost-lens-capture file/);
  fs.writeFileSync(f, '{"format":"vhost-lens-capture","version":99}\n');
  const r2 = cli(['replay', f]);
  assert.match(r2.stderr, /version 99 is newer than this tool/);
  fs.rmSync(dir, { recursive: true, force: true });
});
