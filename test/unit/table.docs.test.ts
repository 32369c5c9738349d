// The generated markdown message table: every row of both channels appears once, with the table's own columns.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MESSAGES, CATEGORIES, type MessageSpec } from '../../core/protocol/table';
import { messageTableMarkdown, messageRow } from '../../core/protocol/docs';

const md = messageTableMarkdown();
const lines = md.split('\n');

/** Split a markdown row into cells, honouring escaped pipes. */
function cells(row: string): string[] {
  return row.slice(2, -2).split(/(?<!\\) \| /).map((c) => c.replace(/\\\|/g, '|').replace(/\\\\/g, '\\'));
}

/** Rows of the section titled `heading`, until the next heading. */
function section(startsWith: string): string[] {
  const i = lines.findIndex((l) => l.startsWith(`## ${startsWith}`));
  assert.ok(i >= 0, `no section ${startsWith}`);
  const end = lines.findIndex((l, j) => j > i && l.startsWith('## '));
  return lines.slice(i + 1, end < 0 ? undefined : end).filter((l) => l.startsWith('| ') && !l.startsWith('| Code'));
}

const rowOf = (m: MessageSpec, rows: string[]): string[] => {
  const found = rows.filter((r) => cells(r)[1].split(' ')[0] === m.name);
  assert.equal(found.length, 1, `${m.channel}:${m.code} ${m.name} appears ${found.length} times`);
  return cells(found[0]);
};

test('every message of both channels appears exactly once, in its channel section, in code order', () => {
  const main = section('Front-end');
  const back = section('Back-end');
  assert.equal(main.length, MESSAGES.filter((m) => m.channel === 'main').length);
  assert.equal(back.length, MESSAGES.filter((m) => m.channel === 'backend').length);
  for (const m of MESSAGES) {
    const c = rowOf(m, m.channel === 'main' ? main : back);
    assert.equal(c.length, 8, `${m.name}: ${c.join(' / ')}`);
    assert.equal(c[0], String(m.code));
    assert.equal(c[6], m.category);
    assert.equal(c[7], m.summary);
  }
  assert.deepEqual(main.map((r) => Number(cells(r)[0])), MESSAGES.filter((m) => m.channel === 'main').map((m) => m.code));
  // code 1 on each channel is a different message
  assert.match(main[0], /^\| 1 \| GET_FEATURES \|/);
  assert.match(back[0], /^\| 1 \| BACKEND_IOTLB_MSG \(old: SLAVE_IOTLB_MSG\) \|/);
});

test('columns: payload layout, reply, fds, gate', () => {
  const main = section('Front-end');
  const back = section('Back-end');
  const get = (name: string): string[] => rowOf(MESSAGES.find((m) => m.name === name)!, name.startsWith('BACKEND_') ? back : main);
  assert.deepEqual(get('GET_FEATURES').slice(1, 6), ['GET_FEATURES', '-', 'u64', '-', '-']);
  assert.deepEqual(get('SET_MEM_TABLE').slice(2, 6), ['multiple memory regions', 'ack if NEED_REPLY; or multiple memory regions', '1 per region', '-']);
  assert.deepEqual(get('SET_LOG_BASE').slice(3, 6), ['conditional: u64 (REPLY_ACK: 0 = success)', '0-1', 'PROTOCOL_F_LOG_SHMFD']);
  assert.deepEqual(get('SET_VRING_KICK').slice(2, 5), ['u64 (vring index, bit 8 = no fd)', 'ack if NEED_REPLY', '1 unless no-fd bit']);
  assert.equal(get('SET_BACKEND_REQ_FD')[1], 'SET_BACKEND_REQ_FD (old: SET_SLAVE_REQ_FD)');
  assert.equal(get('GET_INFLIGHT_FD')[4], '-; reply: 1');
  assert.equal(get('SET_VRING_ENABLE')[5], 'F_PROTOCOL_FEATURES');
  assert.equal(get('IOTLB_MSG')[5], 'F_ACCESS_PLATFORM');
  assert.equal(get('BACKEND_SHARED_OBJECT_LOOKUP')[3], 'u64');
  assert.equal(get('BACKEND_SHARED_OBJECT_LOOKUP')[4], '-; reply: 0-1');
});

test('categories legend lists every category', () => {
  for (const [name, text] of Object.entries(CATEGORIES)) assert.ok(md.includes(`- \`${name}\`: ${text}`), name);
});

test('cells are escaped: a pipe in a summary does not split the row', () => {
  const m = { ...MESSAGES[0], summary: 'A | B \\ C.' } as MessageSpec;
  const c = cells(messageRow(m));
  assert.equal(c.length, 8);
  assert.equal(c[7], 'A | B \\ C.');
});

test('the output is stable markdown ending in a newline', () => {
  assert.equal(messageTableMarkdown(), md);
  assert.ok(md.endsWith('\n'));
  assert.ok(md.startsWith('# vhost-user messages\n'));
});
