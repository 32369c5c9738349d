// docs/messages.md is generated from the message table (`vhost-lens table --markdown`) and must not drift from it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { messageTableMarkdown } from '../../core/protocol/docs';

test('docs/messages.md equals the table generator output (regenerate with: node dist/cli.js table --markdown > docs/messages.md)', () => {
  const file = path.join(__dirname, '..', '..', '..', 'docs', 'messages.md');
  assert.equal(fs.readFileSync(file, 'utf8'), messageTableMarkdown());
});
