// Integration: the built-in back-ends against real front-ends (QEMU guests, DPDK virtio-user), through the CLI and in-process.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createRawImage, readSectors, requireBinary, requireTestpmd, type QemuGuest, type PeerSet } from '../../core/peers';
import { Backend, type BackendOptions } from '../../core/backend/backend';
import type { EngineEvent } from '../../core/session/tracker';
import { note, randomAlnum, usePeers, withPeerLogs } from '../helpers/peers';
import { CLI, runCli, type CliRun, type JsonLine } from '../helpers/cliProxy';

const GUARD = { timeout: 300_000 };
const LONG = { timeoutMs: 90_000 };

async function waitDisk(guest: QemuGuest): Promise<void> {
  await guest.check('i=0; while ! [ -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; [ -b /dev/vda ]', LONG);
}
async function waitEth(guest: QemuGuest, ip: string): Promise<void> {
  await guest.check(`i=0; while ! [ -e /sys/class/net/eth0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; ip link set eth0 up && ip addr add ${ip}/24 dev eth0`, LONG);
}
function pingCounts(out: string): { transmitted: number; received: number } {
  const m = /(\d+) packets transmitted, (\d+) (?:packets )?received/.exec(out);
  assert.ok(m, `ping summary missing:\n${out}`);
  return { transmitted: Number(m[1]), received: Number(m[2]) };
}

/** An in-process back-end whose events are collected; stopped (fd ledger checked) when the test ends. */
function startBackend(t: TestContext, opts: BackendOptions): { be: Backend; events: EngineEvent[] } {
  const be = new Backend(opts);
  const events: EngineEvent[] = [];
  be.on('event', (e) => events.push(e));
  t.after(async () => { await be.stop(); });
  return { be, events };
}

async function until<T>(f: () => T | undefined | false, what: string, ms = 90_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const sessionEnds = (cli: CliRun): JsonLine[] => cli.of('session').filter((l) => l.event === 'end');

async function withCli<T>(cli: CliRun, fn: () => Promise<T>): Promise<T> {
  try { return await fn(); } catch (e) { (e as Error).message += `\n${cli.log()}`; throw e; }
}

test('blk (CLI): a QEMU guest writes a pattern and reads it back; the image holds it; a second front-end reconnects and reads it', GUARD, async (t) => {
  requireBinary('qemu-system-x86_64');
  const peers = usePeers(t);
  const dir = peers.tmpDir('be-blk');
  const image = createRawImage(join(dir, 'disk.img'), 64);
  const socket = join(dir, 'blk.sock');
  const cli = runCli(t, ['backend', 'blk', '--socket', socket, '--image', image, '--json', '--notifiers', '--rings']);
  const pattern = randomAlnum(64 * 1024);
  const SECTOR = 2048;
  await withPeerLogs(peers, () => withCli(cli, async () => {
    await cli.waitFor((c) => c.of('connection').find((l) => l.event === 'listening'), 'back-end listening');
    assert.equal(fs.statSync(socket).mode & 0o777, 0o600, 'listening socket is 0600');
    const g1 = peers.qemu({ name: 'qemu-blk-1', blk: [{ socket }] });
    await g1.start();
    await g1.waitReady();
    await waitDisk(g1);
    assert.equal(await g1.check('cat /sys/block/vda/size'), String(64 * 2048), 'capacity from GET_CONFIG');
    assert.equal(await g1.check('cat /sys/block/vda/ro'), '0');
    await g1.check('rm -f /tmp/p');
    for (let off = 0; off < pattern.length; off += 2048) await g1.check(`printf '%s' '${pattern.slice(off, off + 2048)}' >> /tmp/p`);
    await g1.check(`dd if=/tmp/p of=/dev/vda bs=64k seek=${SECTOR / 128} count=1 oflag=direct conv=fsync 2>&1`, LONG);
    await g1.check('sync; echo 3 > /proc/sys/vm/drop_caches');
    const back = await g1.run(`dd if=/dev/vda of=/tmp/r bs=64k skip=${SECTOR / 128} count=1 iflag=direct 2>&1 && cmp /tmp/p /tmp/r`, LONG);
    assert.equal(back.rc, 0, `guest read-back differs: ${back.output}`);
    // A larger O_DIRECT transfer through many descriptors (indirect tables, several requests in flight).
    await g1.check('dd if=/dev/urandom of=/tmp/big bs=1M count=4 2>/dev/null && dd if=/tmp/big of=/dev/vda bs=1M seek=16 oflag=direct 2>&1 && dd if=/dev/vda of=/tmp/big2 bs=1M skip=16 count=4 iflag=direct 2>&1 && cmp /tmp/big /tmp/big2', LONG);
    // DISCARD (offered, a hint on a raw file): the guest's blkdiscard succeeds, the pattern is not touched.
    await g1.check('blkdiscard -o 33554432 -l 1048576 /dev/vda', LONG);
    assert.deepEqual(await g1.poweroff(), { code: 0, signal: null });
    assert.equal(readSectors(image, SECTOR, 128).toString('latin1'), pattern, 'host image holds the pattern');
    assert.ok(readSectors(image, SECTOR - 8, 8).every((b) => b === 0), 'sectors before it untouched');
    assert.ok(readSectors(image, SECTOR + 128, 8).every((b) => b === 0), 'sectors after it untouched');
    await cli.waitFor((c) => sessionEnds(c).length === 1, 'first session end');

    // The front-end goes away and a new one connects to the same back-end: it sees the data.
    const g2 = peers.qemu({ name: 'qemu-blk-2', blk: [{ socket }] });
    await g2.start();
    await g2.waitReady();
    await waitDisk(g2);
    const again = await g2.check(`dd if=/dev/vda bs=64k skip=${SECTOR / 128} count=1 iflag=direct 2>/dev/null | head -c 64`, LONG);
    assert.equal(again, pattern.slice(0, 64));
    assert.deepEqual(await g2.poweroff(), { code: 0, signal: null });
    await cli.waitFor((c) => sessionEnds(c).length === 2, 'second session end');
    assert.equal(await cli.interrupt(), 0);
  }));
  const msgs = cli.messages();
  const s1 = msgs.filter((m) => m.session === 1);
  assert.ok(s1.some((m) => m.from === 'frontend' && m.name === 'ADD_MEM_REG'), 'memory arrives by ADD_MEM_REG (CONFIGURE_MEM_SLOTS)');
  assert.ok(s1.some((m) => m.from === 'backend' && m.name === 'GET_CONFIG' && m.reply), 'GET_CONFIG answered');
  const stops = s1.filter((m) => m.from === 'backend' && m.name === 'GET_VRING_BASE');
  note(t, 'GET_VRING_BASE replies in session 1 (start/stop cycles)', stops.length);
  assert.ok(stops.length >= 1, 'the ring was stopped with GET_VRING_BASE');
  assert.ok(cli.of('notify').some((n) => n.what === 'kick') && cli.of('notify').some((n) => n.what === 'call'), 'kick and call counts reported');
  // The ring view works on a back-end session as on a proxied one: chains decoded as virtio-blk requests.
  const rings = cli.of('ring');
  assert.ok(rings.some((r) => r.chains.some((c: JsonLine) => c.device?.kind === 'blk' && c.device?.type === 'OUT')), 'ring events show OUT requests');
  assert.ok(rings.some((r) => r.chains.some((c: JsonLine) => c.state === 'used' && c.device?.status === 'OK')), 'ring events show completed requests with status OK');
  assert.equal(cli.of('error').length, 0, `no device errors: ${JSON.stringify(cli.of('error'))}`);
  const summary = cli.of('summary')[0];
  assert.equal(summary.workerFds, 0, 'worker closed every fd');
  assert.equal(summary.sessions.length, 2);
  for (const s of summary.sessions) assert.deepEqual([s.problems, s.missingReplies], [0, []]);
});

test('blk (CLI --readonly): the guest sees a read-only disk, writes fail, the image is unchanged', GUARD, async (t) => {
  requireBinary('qemu-system-x86_64');
  const peers = usePeers(t);
  const dir = peers.tmpDir('be-ro');
  const image = join(dir, 'ro.img');
  const content = randomBytes(8 << 20);
  fs.writeFileSync(image, content);
  const socket = join(dir, 'blk.sock');
  const capture = join(dir, 'ro.vlcap');
  const cli = runCli(t, ['backend', 'blk', '--socket', socket, '--image', image, '--readonly', '--json', '--capture', capture]);
  await withPeerLogs(peers, () => withCli(cli, async () => {
    await cli.waitFor((c) => c.of('connection').find((l) => l.event === 'listening'), 'back-end listening');
    const g = peers.qemu({ name: 'qemu-blk-ro', blk: [{ socket }] });
    await g.start();
    await g.waitReady();
    await waitDisk(g);
    assert.equal(await g.check('cat /sys/block/vda/ro'), '1', 'VIRTIO_BLK_F_RO: read-only block device');
    const w = await g.run('dd if=/dev/zero of=/dev/vda bs=4k count=1 oflag=direct 2>&1', LONG);
    note(t, 'guest write attempt', w.output);
    assert.notEqual(w.rc, 0, 'the write fails');
    assert.match(w.output, /Operation not permitted|Read-only|I\/O error/i);
    const sum = await g.check('dd if=/dev/vda bs=4k count=1 iflag=direct 2>/dev/null | md5sum', LONG);
    assert.equal(sum.split(' ')[0], (await import('node:crypto')).createHash('md5').update(content.subarray(0, 4096)).digest('hex'), 'reads work');
    assert.deepEqual(await g.poweroff(), { code: 0, signal: null });
    await cli.waitFor((c) => sessionEnds(c).length === 1, 'session end');
    assert.equal(await cli.interrupt(), 0);
  }));
  assert.ok(fs.readFileSync(image).equals(content), 'image unchanged');
  const f = cli.messages().find((m) => m.name === 'GET_FEATURES' && m.from === 'backend');
  assert.ok(f && JSON.stringify(f).includes('RO'), 'the offered features name RO');
  // The capture replays to the same decoded messages.
  const replay = spawnSync(process.execPath, [CLI, 'replay', capture, '--json'], { encoding: 'utf8' });
  assert.equal(replay.status, 0, replay.stderr);
  const replayed = replay.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)).filter((l) => l.kind === 'message');
  assert.deepEqual(replayed.map((m) => `${m.from}:${m.name}`), cli.messages().map((m) => `${m.from}:${m.name}`));
});

test('blk (in-process): QEMU reconnect=1 survives back-end restarts; rings resume from the returned index', GUARD, async (t) => {
  requireBinary('qemu-system-x86_64');
  const peers = usePeers(t);
  const dir = peers.tmpDir('be-rc');
  const image = createRawImage(join(dir, 'disk.img'), 16);
  const socket = join(dir, 'blk.sock');
  const opts: BackendOptions = { device: 'blk', blk: { image }, endpoint: { mode: 'listen', path: socket } };
  let { be, events } = startBackend(t, opts);
  await be.start();
  await withPeerLogs(peers, async () => {
    const g = peers.qemu({ name: 'qemu-blk-reconnect', blk: [{ socket, reconnect: 1 }] });
    await g.start();
    await g.waitReady();
    await waitDisk(g);
    const marks = ['first', 'second', 'third'].map((m) => `${m}-${randomAlnum(20)}`);
    const write = (i: number) => g.check(`printf '%s' '${marks[i]}' > /tmp/m${i} && dd if=/tmp/m${i} of=/dev/vda bs=512 seek=${i} count=1 conv=sync oflag=direct 2>&1`, LONG);
    await write(0);
    for (const i of [1, 2]) {
      const final = await be.stop();
      assert.deepEqual(final, { ledger: 0, violations: [] }, 'stopped back-end released every fd');
      assert.ok(events.some((e) => e.kind === 'session' && e.event === 'end'));
      ({ be, events } = startBackend(t, opts));
      await be.start();
      await write(i); // QEMU reconnects, renegotiates, restores the ring from GET_VRING_BASE's index
      const restored = be.tracker.current!.messages.filter((m) => m.name === 'SET_VRING_BASE' && m.from === 'frontend');
      assert.ok(restored.length >= 1, 'QEMU restored the ring');
    }
    const back = await g.check('echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=512 count=3 iflag=direct 2>/dev/null | tr -d "\\000"; echo', LONG);
    assert.equal(back, marks.join(''));
    assert.deepEqual(await g.poweroff(), { code: 0, signal: null });
    marks.forEach((m, i) => assert.equal(readSectors(image, i).subarray(0, m.length).toString(), m));
    await until(() => events.find((e) => e.kind === 'session' && e.event === 'end'), 'session end');
  });
  assert.deepEqual(events.filter((e) => e.kind === 'error'), []);
});

test('net loopback (CLI --connect, QEMU listens): the guest pings the responder; notifiers counted', GUARD, async (t) => {
  requireBinary('qemu-system-x86_64');
  const peers = usePeers(t);
  const dir = peers.tmpDir('be-lo');
  const socket = join(dir, 'net.sock');
  await withPeerLogs(peers, async () => {
    const g = peers.qemu({ name: 'qemu-net-loopback', net: [{ socket, server: true }] });
    await g.start();
    await g.waitForServerSockets();
    const cli = runCli(t, ['backend', 'net', '--socket', socket, '--connect', '--loopback', '--ip', '10.0.0.1', '--json', '--notifiers']);
    await withCli(cli, async () => {
      await cli.waitFor((c) => c.of('connection').find((l) => l.event === 'connected'), 'back-end connected');
      await g.waitReady();
      await waitEth(g, '10.0.0.2');
      const ping = pingCounts((await g.run('ping -c 5 -i 0.2 -W 2 10.0.0.1', LONG)).output);
      note(t, 'guest ping 10.0.0.1 (responder)', ping);
      assert.equal(ping.transmitted, 5);
      assert.ok(ping.received >= 4, `ping answered (${ping.received}/5)`);
      assert.match(await g.check('arp -a'), /10\.0\.0\.1.*52:54:00:00:00:01/, 'the responder answered ARP');
      assert.deepEqual(await g.poweroff(), { code: 0, signal: null });
      await cli.waitFor((c) => sessionEnds(c).length === 1, 'session end');
      assert.equal(await cli.interrupt(), 0);
    });
    const notify = cli.of('notify');
    assert.ok(notify.some((n) => n.what === 'kick' && n.vring === 1), 'TX kicks counted');
    assert.ok(notify.some((n) => n.what === 'call' && n.vring === 0), 'RX calls counted');
    assert.equal(cli.of('summary')[0].workerFds, 0);
    assert.equal(cli.of('error').length, 0, JSON.stringify(cli.of('error')));
  });
});

/** A network namespace for the test, removed afterwards. */
function netns(t: TestContext): string {
  requireBinary('ip');
  const ns = `vl-${process.pid}-${randomBytes(2).toString('hex')}`;
  const r = spawnSync('ip', ['netns', 'add', ns], { encoding: 'utf8' });
  assert.equal(r.status, 0, `ip netns add: ${r.stderr}`);
  t.after(() => { spawnSync('ip', ['netns', 'del', ns]); });
  return ns;
}
function inNs(ns: string, cmd: string[]): { status: number | null; out: string } {
  const r = spawnSync('ip', ['netns', 'exec', ns, ...cmd], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

/** The CLI run inside a network namespace (so its TAP device lives there). */
function cliInNs(t: TestContext, ns: string, args: string[]): { proc: ChildProcess; lines: JsonLine[]; out: () => string } {
  const proc = spawn('ip', ['netns', 'exec', ns, process.execPath, CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: JsonLine[] = [];
  let text = '', partial = '';
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => {
    text += d;
    const parts = (partial + d).split('\n');
    partial = parts.pop()!;
    for (const l of parts) if (l.startsWith('{')) lines.push(JSON.parse(l));
  });
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => { text += d; });
  t.after(() => { if (proc.exitCode === null) proc.kill('SIGKILL'); });
  return { proc, lines, out: () => text.slice(-4000) };
}

test('net tap (CLI in a network namespace): guest and host ping each other through the TAP device', GUARD, async (t) => {
  requireBinary('qemu-system-x86_64');
  requireBinary('busybox');
  const peers = usePeers(t);
  const ns = netns(t);
  const dir = peers.tmpDir('be-tap');
  const socket = join(dir, 'net.sock');
  const tap = 'vltap0';
  const cli = cliInNs(t, ns, ['backend', 'net', '--socket', socket, '--tap', tap, '--json']);
  await withPeerLogs(peers, async () => {
    try {
      await until(() => cli.lines.find((l) => l.kind === 'connection' && l.event === 'listening'), 'back-end listening', 30_000);
      for (const cmd of [['ip', 'addr', 'add', '10.77.0.1/24', 'dev', tap], ['ip', 'link', 'set', tap, 'up'], ['ip', 'link', 'set', 'lo', 'up']]) {
        const r = inNs(ns, cmd);
        assert.equal(r.status, 0, `${cmd.join(' ')}: ${r.out}`);
      }
      const g = peers.qemu({ name: 'qemu-net-tap', net: [{ socket }] });
      await g.start();
      await g.waitReady();
      await waitEth(g, '10.77.0.2');
      const fromGuest = pingCounts((await g.run('ping -c 5 -i 0.2 -W 2 10.77.0.1', LONG)).output);
      note(t, 'guest -> host (TAP in the namespace)', fromGuest);
      assert.ok(fromGuest.received >= 4, `guest ping answered (${fromGuest.received}/5)`);
      const h = inNs(ns, ['busybox', 'ping', '-c', '5', '-W', '2', '10.77.0.2']);
      const fromHost = pingCounts(h.out);
      note(t, 'host -> guest', fromHost);
      assert.ok(fromHost.received >= 4, `host ping answered (${fromHost.received}/5): ${h.out}`);
      assert.deepEqual(await g.poweroff(), { code: 0, signal: null });
      await until(() => cli.lines.find((l) => l.kind === 'session' && l.event === 'end'), 'session end', 30_000);
      cli.proc.kill('SIGINT');
      await until(() => cli.proc.exitCode !== null, 'CLI exit', 30_000);
      assert.equal(cli.proc.exitCode, 0);
      const summary = cli.lines.find((l) => l.kind === 'summary')!;
      assert.equal(summary.workerFds, 0, 'TAP and every other fd closed');
      assert.equal(cli.lines.filter((l) => l.kind === 'error').length, 0);
    } catch (e) {
      (e as Error).message += `\n--- vhost-lens:\n${cli.out()}`;
      throw e;
    }
  });
});

async function virtioUser(peers: PeerSet, socket: string, name: string, queues = 1, packedVq = false): Promise<{ rx: number; tx: number; pps: number[] }> {
  const tp = peers.testpmd({
    name, vdev: { kind: 'virtio-user', path: socket, queues, packedVq }, txFirst: true,
    extraArgs: queues > 1 ? [`--rxq=${queues}`, `--txq=${queues}`] : [],
  });
  await tp.start();
  await tp.waitForRx(1000, 60_000);
  const samples = await tp.waitForSamples(3, 60_000);
  const r = await tp.stop();
  assert.equal(r.exit.code, 0);
  const p0 = r.final.find((s) => s.port === 0)!;
  return { rx: p0.rxPackets, tx: p0.txPackets, pps: samples.map((s) => s.rxPps) };
}

test('net loopback (in-process) with DPDK virtio-user (testpmd io forwarding): frames come back; a second front-end reconnects', GUARD, async (t) => {
  requireTestpmd();
  const peers = usePeers(t);
  const dir = peers.tmpDir('be-pmd');
  const socket = join(dir, 'net.sock');
  const { be, events } = startBackend(t, { device: 'net', net: { mode: 'loopback' }, endpoint: { mode: 'listen', path: socket }, notifiers: true });
  await be.start();
  await withPeerLogs(peers, async () => {
    for (const run of [1, 2]) {
      const r = await virtioUser(peers, socket, `testpmd-virtio-user-${run}`);
      note(t, `virtio-user run ${run}`, r);
      assert.ok(r.rx >= 1000, `frames came back (${r.rx})`);
      assert.ok(r.tx >= r.rx, 'io forwarding sends what it receives');
      await until(() => events.filter((e) => e.kind === 'session' && e.event === 'end').length === run, `session ${run} end`);
    }
  });
  const s2 = be.tracker.sessions.get(2)!;
  assert.ok(s2.messages.some((m) => m.name === 'SET_MEM_TABLE' && m.from === 'frontend'), 'virtio-user sends SET_MEM_TABLE');
  assert.ok([...s2.state.vrings.values()].every((v) => v.stopped), 'both rings stopped by GET_VRING_BASE');
  assert.deepEqual(events.filter((e) => e.kind === 'error'), []);
  assert.ok(events.some((e) => e.kind === 'notify' && e.what === 'kick'), 'kicks reported');
});

test('net loopback with two queue pairs (MQ) and DPDK virtio-user queues=2: frames come back on both pairs', GUARD, async (t) => {
  requireTestpmd();
  const peers = usePeers(t);
  const dir = peers.tmpDir('be-mq');
  const socket = join(dir, 'net.sock');
  const { be, events } = startBackend(t, { device: 'net', net: { mode: 'loopback', queuePairs: 2 }, endpoint: { mode: 'listen', path: socket }, notifiers: true, notifyIntervalMs: 50 });
  await be.start();
  await withPeerLogs(peers, async () => {
    const r = await virtioUser(peers, socket, 'testpmd-virtio-user-mq', 2);
    note(t, 'virtio-user queues=2', r);
    assert.ok(r.rx >= 1000, `frames came back (${r.rx})`);
    await until(() => events.find((e) => e.kind === 'session' && e.event === 'end'), 'session end');
  });
  const s = be.tracker.sessions.get(1)!;
  assert.ok(((s.state.features.acked ?? 0n) >> 22n) & 1n, 'VIRTIO_NET_F_MQ negotiated');
  assert.deepEqual([...s.state.vrings.keys()].sort(), [0, 1, 2, 3], 'four vrings set up');
  const kicked = new Set(events.flatMap((e) => (e.kind === 'notify' && e.what === 'kick' ? [e.vring] : [])));
  assert.ok(kicked.has(1) && kicked.has(3), `both TX queues kicked (${[...kicked]})`);
  assert.deepEqual(events.filter((e) => e.kind === 'error'), []);
});

test('net loopback with a packed ring (DPDK virtio-user packed_vq=1): frames come back, GET_VRING_BASE carries both wrap counters', GUARD, async (t) => {
  requireTestpmd();
  const peers = usePeers(t);
  const dir = peers.tmpDir('be-packed');
  const socket = join(dir, 'net.sock');
  const { be, events } = startBackend(t, { device: 'net', net: { mode: 'loopback' }, endpoint: { mode: 'listen', path: socket } });
  await be.start();
  await withPeerLogs(peers, async () => {
    const r = await virtioUser(peers, socket, 'testpmd-virtio-user-packed', 1, true);
    note(t, 'virtio-user packed_vq=1', r);
    assert.ok(r.rx >= 1000, `frames came back (${r.rx})`);
    await until(() => events.find((e) => e.kind === 'session' && e.event === 'end'), 'session end');
  });
  const s = be.tracker.sessions.get(1)!;
  assert.ok(((s.state.features.acked ?? 0n) >> 34n) & 1n, 'VIRTIO_F_RING_PACKED negotiated');
  const bases = s.messages.filter((m) => m.name === 'GET_VRING_BASE' && m.reply);
  assert.equal(bases.length, 2);
  for (const b of bases) {
    const p = b.payload as { availIdx: number; usedIdx: number };
    assert.equal(p.availIdx, p.usedIdx, 'nothing in flight when the ring stops');
  }
  assert.deepEqual(events.filter((e) => e.kind === 'error'), []);
});
