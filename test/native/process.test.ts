// Whole-process behaviour of the native layer: a fresh process that starts and stops a relay worker exits cleanly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as os from 'node:os';
import * as path from 'node:path';
import * as fs from 'node:fs';

test('a process that starts and stops pump workers exits 0 (ffi-rs loaded by the host thread first, no crash at worker exit)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vl-proc-'));
  const proxyJs = path.join(__dirname, '..', '..', 'core', 'proxy', 'proxy.js');
  const script = `
    const { Proxy } = require(${JSON.stringify(proxyJs)});
    (async () => {
      for (let i = 0; i < 3; i++) {
        const p = new Proxy({ frontend: { mode: 'listen', path: ${JSON.stringify(dir)} + '/fe' + i }, backend: { mode: 'connect', path: ${JSON.stringify(dir)} + '/be' } });
        await p.start();
        const r = await p.stop();
        if (r.ledger !== 0) { console.error('worker ledger', r.ledger); process.exit(3); }
      }
      setTimeout(() => console.log('clean'), 100);
    })();`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60_000 });
  fs.rmSync(dir, { recursive: true, force: true });
  assert.equal(r.signal, null, `no signal (a SIGSEGV here means a worker loaded ffi-rs first): ${r.stderr}`);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'clean');
});
