// Test runner: node --test over the compiled tests in out/test, one file at a time (real peers share 2 cores).
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync, existsSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const groups = process.argv.slice(2);
const base = join(root, 'out', 'test');
function find(dir) {
  const out = [];
  if (!existsSync(dir)) return out;
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...find(p));
    else if (name.endsWith('.test.js')) out.push(p);
  }
  return out;
}
const files = (groups.length ? groups : ['']).flatMap((g) => find(join(base, g)));
if (files.length === 0) { console.error('no test files found; run npm run build first'); process.exit(1); }
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', ...files], { stdio: 'inherit' });
process.exit(r.status ?? 1);
