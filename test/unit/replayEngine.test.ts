// ReplayEngine: a capture replays to the same engine events as the CLI's replay, honours the gate (holds until released), stops cleanly, reports bad files.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ReplayEngine } from '../../core/proxy/replayEngine';
import { readCapture, CaptureError } from '../../core/proxy/capture';
import { SessionTracker, type EngineEvent } from '../../core/session/tracker';
import { writeBlkCapture } from '../dap/fixtures';

function tmpCapture(t: { after(fn: () => void): void }): { file: string; messages: number } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vl-replay-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'session.vlcap');
  return { file, messages: writeBlkCapture(file) };
}

function collect(engine: ReplayEngine): EngineEvent[] {
  const events: EngineEvent[] = [];
  engine.on('event', (e) => events.push(e));
  return events;
}

async function until<T>(f: () => T | undefined | false, what: string): Promise<T> {
  const end = Date.now() + 20_000;
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const brief = (e: EngineEvent): string => {
  switch (e.kind) {
    case 'message': return `message ${e.msg.seq} ${e.msg.name}${e.msg.reply ? ' reply' : ''}`;
    case 'held': return `held ${e.msg.seq} ${e.msg.name}`;
    case 'session': return `session ${e.event}${e.reason ? ` ${e.reason}` : ''}`;
    case 'channel': return `channel ${e.event}`;
    case 'notify': return `notify ${e.vring} ${e.what} ${e.count}`;
    default: return e.kind;
  }
};

test('replays a capture to the same events the CLI replay decodes, then finishes', async (t) => {
  const { file, messages } = tmpCapture(t);
  const engine = new ReplayEngine({ capture: file });
  const events = collect(engine);
  await engine.start();
  await engine.finished();
  const reference: EngineEvent[] = [];
  const tracker = new SessionTracker({ device: 'blk' });
  tracker.on('event', (e) => reference.push(e));
  for (const e of readCapture(file).events) tracker.handle(e);
  assert.deepEqual(events.filter((e) => e.kind !== 'stopped').map(brief), reference.map(brief));
  assert.equal(events.filter((e) => e.kind === 'message').length, messages);
  assert.equal(events.at(-1)?.kind, 'stopped', 'a final stopped event');
  assert.equal(engine.tracker.sessions.get(1)?.state.device, 'blk', 'device type from the capture header');
  assert.equal(engine.tracker.sessions.get(1)?.state.features.acked, 0x140000046n);
  assert.deepEqual(engine.progress, { replayed: readCapture(file).events.length, total: readCapture(file).events.length });
  await engine.stop();
});

test('the gate holds a matching message until release; nothing else passes meanwhile; order is kept', async (t) => {
  const { file } = tmpCapture(t);
  const engine = new ReplayEngine({ capture: file });
  const events = collect(engine);
  engine.setGate(false, ['main:12']); // SET_VRING_KICK
  await engine.start();
  const first = await until(() => events.find((e) => e.kind === 'held'), 'first hold') as Extract<EngineEvent, { kind: 'held' }>;
  assert.equal(first.msg.name, 'SET_VRING_KICK');
  assert.equal((first.msg.payload as { index: number }).index, 0);
  assert.deepEqual(first.msg.fdInfo, [{ kind: 'eventfd' }]);
  await new Promise((r) => setTimeout(r, 50));
  const last = events.filter((e) => e.kind === 'message').at(-1) as Extract<EngineEvent, { kind: 'message' }>;
  assert.equal(last.msg.seq, first.msg.seq - 1, 'nothing after the held message was replayed');
  assert.ok(!engine.tracker.sessions.get(1)!.messages.some((m) => m.seq === first.msg.seq), 'the held message is not in the history yet');
  engine.release(first.holdId + 1000); // a stale id is ignored
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(events.filter((e) => e.kind === 'held').length, 1);
  engine.release(first.holdId);
  const second = await until(() => events.filter((e) => e.kind === 'held')[1], 'second hold') as Extract<EngineEvent, { kind: 'held' }>;
  assert.equal(second.msg.name, 'SET_VRING_KICK');
  assert.equal((second.msg.payload as { index: number }).index, 1);
  const i = events.indexOf(first);
  const after = events.slice(i + 1).find((e) => e.kind === 'message') as Extract<EngineEvent, { kind: 'message' }>;
  assert.equal(after.msg.seq, first.msg.seq, 'the released message comes next');
  engine.setGate(false, []);
  engine.release(second.holdId);
  await engine.finished();
  const seqs = events.flatMap((e) => (e.kind === 'message' ? [e.msg.seq] : []));
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), 'messages in order');
  assert.equal(new Set(seqs).size, seqs.length, 'each message once');
});

test('gate "all" steps one message at a time', async (t) => {
  const { file } = tmpCapture(t);
  const engine = new ReplayEngine({ capture: file });
  const events = collect(engine);
  engine.setGate(true, []);
  await engine.start();
  const seen: number[] = [];
  for (let k = 0; k < 5; k++) {
    const h = await until(() => events.filter((e) => e.kind === 'held')[k], `hold ${k}`) as Extract<EngineEvent, { kind: 'held' }>;
    seen.push(h.msg.seq);
    engine.release(h.holdId);
  }
  assert.deepEqual(seen, [1, 2, 3, 4, 5]);
  await engine.stop();
  await engine.finished();
});

test('stop while a message is held ends the replay; later releases are ignored', async (t) => {
  const { file } = tmpCapture(t);
  const engine = new ReplayEngine({ capture: file });
  const events = collect(engine);
  engine.setGate(true, []);
  await engine.start();
  const h = await until(() => events.find((e) => e.kind === 'held'), 'hold') as Extract<EngineEvent, { kind: 'held' }>;
  assert.deepEqual(await engine.stop(), { ledger: -1, violations: [] });
  await engine.finished();
  const n = events.length;
  engine.release(h.holdId);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(events.length, n, 'nothing after stop');
});

test('a missing or foreign file is a clear start error', async (t) => {
  const missing = new ReplayEngine({ capture: '/nonexistent/vl.vlcap' });
  await assert.rejects(missing.start(), /ENOENT/);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vl-replay-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const foreign = path.join(dir, 'x.json');
  fs.writeFileSync(foreign, '{"hello":1}\n');
  await assert.rejects(new ReplayEngine({ capture: foreign }).start(), (e: Error) => e instanceof CaptureError && /not a vhost-lens-capture file/.test(e.message));
  fs.writeFileSync(foreign, '');
  await assert.rejects(new ReplayEngine({ capture: foreign }).start(), /empty capture/);
});
