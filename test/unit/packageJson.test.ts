// package.json's debugger contribution is generated from common/debugConfig.ts (npm run contributes) and must not drift.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CONFIGURATION_ATTRIBUTES, INITIAL_CONFIGURATIONS, CONFIGURATION_SNIPPETS } from '../../common/debugConfig';
import { DEBUG_TYPE } from '../../common/dap';

const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8'));

test('contributes.debuggers equals the typed schema (regenerate with npm run contributes)', () => {
  const d = pkg.contributes.debuggers.find((x: { type: string }) => x.type === DEBUG_TYPE);
  assert.ok(d, 'a vhost-user debugger is contributed');
  assert.equal(d.program, './dist/adapter.js');
  assert.deepEqual(d.configurationAttributes, JSON.parse(JSON.stringify(CONFIGURATION_ATTRIBUTES)));
  assert.deepEqual(d.initialConfigurations, JSON.parse(JSON.stringify(INITIAL_CONFIGURATIONS)));
  assert.deepEqual(d.configurationSnippets, JSON.parse(JSON.stringify(CONFIGURATION_SNIPPETS)));
});

test('package.json names the engine, the CLI and the VS Code floor the project promises', () => {
  assert.equal(pkg.name, 'vhost-lens');
  assert.equal(pkg.engines.vscode, '^1.100.0');
  assert.equal(pkg.bin['vhost-lens'], 'dist/cli.js');
  assert.equal(pkg.dependencies['ffi-rs'], '1.3.7', 'ffi-rs pinned');
});
