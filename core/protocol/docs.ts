// Markdown documentation generated from the message table (README and `vhost-lens table`); no other source of truth.
import { MESSAGES, CATEGORIES, type Channel, type FdRule, type MessageSpec } from './table';

const CHANNEL_TITLE: Record<Channel, string> = {
  main: 'Front-end → back-end requests (main socket)',
  backend: 'Back-end → front-end requests (back-end channel, opened by SET_BACKEND_REQ_FD)',
};

const FD_TEXT: Record<FdRule, string> = {
  'none': '-',
  'one': '1',
  'optional': '0-1',
  'per-region': '1 per region',
  'unless-nofd': '1 unless no-fd bit',
  'up-to-8': '0-8',
};

/** Escape what would break a table cell. */
const cell = (s: string): string => s.replace(/\\/g, '\\\\').replace(/\|/g, '\\|').replace(/\r?\n/g, ' ');

function layoutText(layout: string): string { return layout === 'none' ? '-' : layout; }

function replyText(m: MessageSpec): string {
  const layout = m.reply ? layoutText(m.reply.layout) : undefined;
  switch (m.replyRule) {
    case 'always': return layout ?? '-';
    case 'conditional': return `conditional: ${layout ?? 'u64'}`;
    case 'ack': return layout && layout !== 'u64 (REPLY_ACK: 0 = success)' ? `ack if NEED_REPLY; or ${layout}` : 'ack if NEED_REPLY';
  }
}

function fdsText(m: MessageSpec): string {
  const req = FD_TEXT[m.fds];
  return m.replyFds === 'none' ? req : `${req}; reply: ${FD_TEXT[m.replyFds]}`;
}

function gateText(m: MessageSpec): string {
  const g: string[] = [];
  if (m.gate?.protocol) g.push(`PROTOCOL_F_${m.gate.protocol}`);
  if (m.gate?.feature) g.push(m.gate.feature === 'PROTOCOL_FEATURES' ? 'F_PROTOCOL_FEATURES' : `F_${m.gate.feature}`);
  return g.length ? g.join(', ') : '-';
}

function nameText(m: MessageSpec): string {
  return m.oldNames?.length ? `${m.name} (old: ${m.oldNames.join(', ')})` : m.name;
}

/** One markdown row per message: code, name, payload, reply, fds, gate, category, summary. */
export function messageRow(m: MessageSpec): string {
  const cols = [String(m.code), nameText(m), layoutText(m.request.layout), replyText(m), fdsText(m), gateText(m), m.category, m.summary];
  return `| ${cols.map(cell).join(' | ')} |`;
}

/** The whole table as markdown: one section per channel, then the category legend. */
export function messageTableMarkdown(): string {
  const out: string[] = ['# vhost-user messages', ''];
  out.push('Generated from the message table (`core/protocol/table.ts`). The back-end channel reuses codes: channel and code together name a message.');
  for (const channel of ['main', 'backend'] as const) {
    out.push('', `## ${CHANNEL_TITLE[channel]}`, '');
    out.push('| Code | Name | Payload | Reply | FDs | Gate | Category | Summary |');
    out.push('|---:|---|---|---|---|---|---|---|');
    for (const m of MESSAGES) if (m.channel === channel) out.push(messageRow(m));
  }
  out.push('', '## Categories', '');
  for (const [name, text] of Object.entries(CATEGORIES)) out.push(`- \`${name}\`: ${text}`);
  return `${out.join('\n')}\n`;
}
