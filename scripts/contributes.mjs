// Writes package.json `contributes.debuggers` from the typed configuration schema in common/debugConfig.ts (run after build).
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const root = new URL('..', import.meta.url).pathname;
const require = createRequire(import.meta.url);

export function debuggersContribution() {
  const cfg = require(`${root}out/common/debugConfig.js`);
  const { DEBUG_TYPE } = require(`${root}out/common/dap.js`);
  return [{
    type: DEBUG_TYPE,
    label: 'vhost-user (Vhost Lens)',
    program: './dist/adapter.js',
    runtime: 'node',
    languages: [],
    configurationAttributes: cfg.CONFIGURATION_ATTRIBUTES,
    initialConfigurations: cfg.INITIAL_CONFIGURATIONS,
    configurationSnippets: cfg.CONFIGURATION_SNIPPETS,
  }];
}

if (process.argv[1] === new URL(import.meta.url).pathname) {
  const path = `${root}package.json`;
  const pkg = JSON.parse(readFileSync(path, 'utf8'));
  pkg.contributes = { ...pkg.contributes, debuggers: debuggersContribution() };
  writeFileSync(path, `${JSON.stringify(pkg, null, 2)}\n`);
  console.log('package.json contributes.debuggers updated');
}
