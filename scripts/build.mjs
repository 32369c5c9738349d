// Build: transpile every TypeScript file to out/ (for node --test) and bundle the entry points to dist/ (esbuild).
import { build } from 'esbuild';
import { readdirSync, statSync, existsSync, rmSync, chmodSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const srcDirs = ['core', 'common', 'adapter', 'extension', 'test', 'bench'];
const external = ['ffi-rs', '@yuuang/ffi-rs-linux-x64-gnu', 'vscode'];

function tsFiles(dir) {
  const out = [];
  if (!existsSync(dir)) return out;
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...tsFiles(p));
    else if (name.endsWith('.ts') && !name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/** One esbuild call per bundle; all share these options. */
function bundle(entry, outfile, extra = {}) {
  return build({
    entryPoints: [join(root, entry)], outfile: join(root, outfile), bundle: true, platform: 'node',
    format: 'cjs', target: 'node20', sourcemap: true, external, logLevel: 'warning', ...extra,
  });
}

const entries = srcDirs.flatMap((d) => tsFiles(join(root, d)));
await build({
  entryPoints: entries, outdir: join(root, 'out'), outbase: root, bundle: false, platform: 'node',
  format: 'cjs', target: 'node20', sourcemap: 'inline', logLevel: 'warning',
});
// Prune outputs whose source is gone (in place, so a test run reading out/ meanwhile never sees it empty).
const wanted = new Set(entries.map((e) => relative(root, e).replace(/\.ts$/, '.js')));
function prune(dir) {
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) prune(p);
    else if (name.endsWith('.js') && !wanted.has(relative(join(root, 'out'), p))) rmSync(p);
  }
}
prune(join(root, 'out'));

const bundles = [
  ['extension/extension.ts', 'dist/extension.js'],
  ['core/cli/index.ts', 'dist/cli.js', { banner: { js: '#!/usr/bin/env node' } }],
  ['core/node/pumpWorker.ts', 'dist/pumpWorker.js'],
  ['adapter/debugAdapter.ts', 'dist/adapter.js'],
];
for (const [entry, outfile, extra] of bundles) {
  if (existsSync(join(root, entry))) await bundle(entry, outfile, extra);
}
if (existsSync(join(root, 'dist/cli.js'))) chmodSync(join(root, 'dist/cli.js'), 0o755);
console.log(`built ${entries.length} modules to out/, bundles to dist/`);
