// Integration: the proxy between real peers (QEMU, qemu-storage-daemon, dpdk-testpmd); the session works as without it.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { createRawImage, readSectors, requireBinary, requireTestpmd, type PeerSet, type QemuGuest } from '../../core/peers';
import { Proxy, type ProxyOptions } from '../../core/proxy/proxy';
import type { EngineEvent } from '../../core/session/tracker';
import { note, randomAlnum, spread, usePeers, withPeerLogs } from '../helpers/peers';
import { CLI, runCli } from '../helpers/cliProxy';

const GUARD = { timeout: 240_000 };
const HOST_MAC = '52:54:00:00:00:01';

/** An in-process proxy whose events are collected; stopped (and its fd ledger checked) after the test. */
function startProxy(t: TestContext, opts: ProxyOptions): { proxy: Proxy; events: EngineEvent[]; ready: Promise<void> } {
  const proxy = new Proxy(opts);
  const events: EngineEvent[] = [];
  proxy.on('event', (e) => events.push(e));
  t.after(async () => { await proxy.stop(); });
  return { proxy, events, ready: proxy.start() };
}

const msgs = (events: EngineEvent[]) => events.flatMap((e) => (e.kind === 'message' ? [e.msg] : []));

async function until<T>(f: () => T | undefined | false, what: string, ms = 60_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The guest writes a marker at a sector with O_DIRECT and reads it back from the device. */
async function writeAndReadBack(guest: QemuGuest, sector: number, marker: string): Promise<void> {
  await guest.check(`printf '%s' '${marker}' | dd of=/dev/vda bs=512 seek=${sector} count=1 conv=sync oflag=direct 2>&1`, { timeoutMs: 60_000 });
  const back = await guest.check(`echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=512 skip=${sector} count=1 iflag=direct 2>/dev/null | head -c ${marker.length}`, { timeoutMs: 60_000 });
  assert.equal(back, marker, `guest read-back of sector ${sector}`);
}

async function waitDisk(guest: QemuGuest): Promise<void> {
  await guest.check('i=0; while ! [ -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; [ -b /dev/vda ]', { timeoutMs: 60_000 });
}

test('(a) QEMU vhost-user-blk <-> vhost-lens proxy (CLI, --json --capture) <-> qemu-storage-daemon', GUARD, async (t) => {
  requireBinary('qemu-system-x86_64');
  requireBinary('qemu-storage-daemon');
  const peers = usePeers(t);
  const dir = peers.tmpDir('px-blk');
  const image = createRawImage(join(dir, 'disk.img'), 64);
  const qsd = peers.qsd({ image, socket: join(dir, 'qsd.sock') });
  const proxySock = join(dir, 'proxy.sock');
  const capture = join(dir, 'session.vlcap');
  await qsd.start();
  const cli = runCli(t, ['proxy', '--frontend', proxySock, '--backend', qsd.socket, '--json', '--capture', capture]);
  await withPeerLogs(peers, async () => {
    try {
      await cli.waitFor((c) => c.of('connection').find((l) => l.event === 'listening'), 'proxy listening');
      assert.equal(fs.statSync(proxySock).mode & 0o777, 0o600, 'listening socket is 0600');
      const guest = peers.qemu({ name: 'qemu-blk-via-proxy', blk: [{ socket: proxySock }] });
      await guest.start();
      await guest.waitReady();
      await waitDisk(guest);
      const markers = [2048, 70000].map((sector) => ({ sector, marker: `VL-${randomAlnum(60)}` }));
      for (const m of markers) await writeAndReadBack(guest, m.sector, m.marker);
      assert.deepEqual(await guest.poweroff(), { code: 0, signal: null });
      for (const m of markers) assert.equal(readSectors(image, m.sector).subarray(0, m.marker.length).toString(), m.marker, `image at sector ${m.sector}`);
      await cli.waitFor((c) => c.of('session').find((l) => l.event === 'end'), 'session end');
      assert.equal(await cli.interrupt(), 0, 'SIGINT ends the CLI cleanly');
    } catch (e) {
      (e as Error).message += `\n${cli.log()}`;
      throw e;
    }
  });
  const summary = cli.of('summary')[0];
  assert.ok(summary, 'summary line printed on SIGINT');
  assert.equal(summary.workerFds, 0, 'relay worker closed every fd');
  assert.equal(summary.hostFds, 0, 'host thread closed every kept memory fd');

  const m = cli.messages();
  note(t, 'messages decoded', m.length);
  for (const x of m) assert.deepEqual(x.problems, [], `#${x.seq} ${x.name} decoded without problems`);
  for (const x of m) for (const k of ['seq', 'time', 'channel', 'from', 'code', 'name', 'reply', 'needReply', 'size', 'fds', 'payload', 'problems']) assert.ok(k in x, `${x.name} has ${k}`);
  assert.equal(m[0].name, 'GET_FEATURES');
  assert.equal(m[0].from, 'frontend');
  const feat = m.find((x) => x.name === 'GET_FEATURES' && x.reply)!;
  assert.equal(feat.from, 'backend');
  assert.equal(feat.replyTo, m[0].seq);
  for (const f of ['VERSION_1', 'PROTOCOL_FEATURES', 'SEG_MAX', 'BLK_SIZE']) assert.ok(feat.payload.featureNames.includes(f), `back-end offers ${f}`);
  const pf = m.find((x) => x.name === 'GET_PROTOCOL_FEATURES' && x.reply)!;
  assert.ok(pf.payload.featureNames.includes('CONFIGURE_MEM_SLOTS'));
  const acked = m.filter((x) => x.name === 'SET_FEATURES').pop()!;
  assert.equal(BigInt(acked.payload.features) & ~BigInt(feat.payload.features), 0n, 'acked features are a subset of the offered');
  const add = m.find((x) => x.name === 'ADD_MEM_REG' && !x.reply)!;
  assert.equal(add.fds, 1);
  assert.equal(add.payload.guestPhysAddr, '0x0');
  assert.equal(add.payload.memorySize, '0x10000000');
  assert.equal(add.fdInfo[0].kind, 'memfd');
  assert.equal(add.fdInfo[0].size, 256 << 20);
  const addAck = m.find((x) => x.name === 'ADD_MEM_REG' && x.reply)!;
  assert.equal(addAck.replyTo, add.seq);
  assert.equal(addAck.payload.ack, '0x0');
  const uva = BigInt(add.payload.userspaceAddr), size = BigInt(add.payload.memorySize);
  const addrs = m.filter((x) => x.name === 'SET_VRING_ADDR');
  assert.ok(addrs.length >= 2, 'firmware and Linux each set the vring up');
  for (const a of addrs) {
    assert.equal(a.payload.index, 0);
    for (const k of ['desc', 'avail', 'used']) {
      const v = BigInt(a.payload[k]);
      assert.ok(v >= uva && v < uva + size, `${k} ${a.payload[k]} lies in the guest RAM region`);
    }
  }
  for (const name of ['SET_VRING_KICK', 'SET_VRING_CALL']) {
    const k = m.find((x) => x.name === name)!;
    assert.equal(k.fds, 1, `${name} carries its eventfd`);
    assert.equal(k.fdInfo[0].kind, 'eventfd');
    assert.equal(k.payload.noFd, false);
  }
  assert.ok(m.find((x) => x.name === 'SET_BACKEND_REQ_FD')?.substituted?.includes('back-end channel socketpair'));
  assert.ok(m.find((x) => x.name === 'GET_VRING_BASE' && x.reply), 'the ring was stopped with GET_VRING_BASE');
  assert.ok(cli.of('state').find((s) => s.what === 'features' && s.ackedNames?.includes('VERSION_1')));

  // The capture replays to the same decoded stream.
  const replay = spawnSync(process.execPath, [CLI, 'replay', capture, '--json'], { encoding: 'utf8' });
  assert.equal(replay.status, 0, replay.stderr);
  const replayed = replay.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l)).filter((l) => l.kind === 'message');
  assert.deepEqual(replayed.map((x) => [x.seq, x.name, x.reply, JSON.stringify(x.payload)]), m.map((x) => [x.seq, x.name, x.reply, JSON.stringify(x.payload)]));
});

interface Ping { transmitted: number; received: number; rx: number; tx: number }
async function ping(guest: QemuGuest, count: number): Promise<Ping> {
  await guest.check('i=0; while ! [ -e /sys/class/net/eth0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; [ -e /sys/class/net/eth0 ]', { timeoutMs: 60_000 });
  await guest.check(`ip link set eth0 up && ip addr add 10.0.0.2/24 dev eth0 && arp -s 10.0.0.1 ${HOST_MAC}`);
  await guest.check('i=0; while [ "$(cat /sys/class/net/eth0/carrier)" != 1 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; cat /sys/class/net/eth0/carrier', { timeoutMs: 60_000 });
  const out = await guest.run(`ping -c ${count} -i 0.2 -W 1 10.0.0.1`, { timeoutMs: 60_000 });
  const r = /(\d+) packets transmitted, (\d+) packets received/.exec(out.output);
  assert.ok(r, out.output);
  const [rx, tx] = (await guest.check('cat /sys/class/net/eth0/statistics/rx_packets /sys/class/net/eth0/statistics/tx_packets')).split('\n').map(Number);
  return { transmitted: Number(r[1]), received: Number(r[2]), rx, tx };
}

async function netThroughProxy(t: TestContext, peers: PeerSet, qemuListens: boolean): Promise<void> {
  const dir = peers.tmpDir('px-net');
  const peerSock = join(dir, qemuListens ? 'qemu.sock' : 'testpmd.sock');
  const proxySock = join(dir, 'proxy.sock');
  let guest: QemuGuest;
  let events: EngineEvent[];
  let tp;
  if (qemuListens) {
    // QEMU listens (server=on); the proxy connects to it and listens for testpmd (client=1).
    guest = peers.qemu({ name: 'qemu-net-server', net: [{ socket: peerSock, server: true }] });
    await guest.start();
    await guest.waitForServerSockets();
    const p = startProxy(t, { frontend: { mode: 'connect', path: peerSock }, backend: { mode: 'listen', path: proxySock } });
    events = p.events;
    await p.ready;
    tp = peers.testpmd({ name: 'testpmd-vhost-client', vdev: { kind: 'vhost', iface: proxySock, client: true } });
    await tp.start();
  } else {
    tp = peers.testpmd({ name: 'testpmd-vhost', vdev: { kind: 'vhost', iface: peerSock } });
    await tp.start();
    const p = startProxy(t, { frontend: { mode: 'listen', path: proxySock }, backend: { mode: 'connect', path: peerSock } });
    events = p.events;
    await p.ready;
    guest = peers.qemu({ name: 'qemu-net-via-proxy', net: [{ socket: proxySock }] });
    await guest.start();
  }
  await guest.waitReady();
  const r = await ping(guest, 5);
  assert.deepEqual(await guest.poweroff(), { code: 0, signal: null });
  const stats = await tp.stop();
  const port0 = stats.final.find((s) => s.port === 0)!;
  note(t, 'guest ping', r);
  note(t, 'testpmd', port0);
  assert.ok(port0.rxPackets >= r.transmitted, `every ICMP request reached testpmd through the proxied session (rx ${port0.rxPackets})`);
  assert.ok(r.rx > 0 && port0.txPackets > 0, 'frames echoed by testpmd came back to the guest');
  const m = msgs(events);
  const table = m.find((x) => x.name === 'SET_MEM_TABLE' && !x.reply)!;
  assert.equal(table.fdInfo[0]?.kind, 'memfd');
  assert.deepEqual(new Set(m.filter((x) => x.name === 'SET_VRING_KICK').map((x) => (x.payload as { index: number }).index)), new Set([0, 1]));
  assert.equal(m.flatMap((x) => x.problems).filter((p) => p.severity === 'error').length, 0, 'no decode errors');
  assert.equal([...events].reverse().find((e) => e.kind === 'message')?.state.device, 'net');
}

test('(b) QEMU virtio-net <-> proxy <-> dpdk-testpmd net_vhost: guest frames reach testpmd and come back', GUARD, async (t) => {
  requireBinary('qemu-system-x86_64');
  requireTestpmd();
  const peers = usePeers(t);
  await withPeerLogs(peers, () => netThroughProxy(t, peers, false));
});

test('(d) QEMU listens (server=on) <-> proxy (connects to QEMU, listens for the back-end) <-> testpmd client=1', GUARD, async (t) => {
  requireBinary('qemu-system-x86_64');
  requireTestpmd();
  const peers = usePeers(t);
  await withPeerLogs(peers, () => netThroughProxy(t, peers, true));
});

for (const packed of [false, true]) {
  test(`(c) testpmd virtio-user <-> proxy <-> testpmd net_vhost, ${packed ? 'packed' : 'split'} ring: traffic flows`, GUARD, async (t) => {
    requireTestpmd();
    const peers = usePeers(t);
    await withPeerLogs(peers, async () => {
      const dir = peers.tmpDir('px-pmd');
      const vhostSock = join(dir, 'vhost.sock'), proxySock = join(dir, 'proxy.sock');
      const vhost = peers.testpmd({ name: 'testpmd-vhost', vdev: { kind: 'vhost', iface: vhostSock }, mainLcore: 1 });
      await vhost.start();
      const { events, ready } = startProxy(t, { frontend: { mode: 'listen', path: proxySock }, backend: { mode: 'connect', path: vhostSock } });
      await ready;
      const vuser = peers.testpmd({ name: 'testpmd-virtio-user', mainLcore: 0, txFirst: true, vdev: { kind: 'virtio-user', path: proxySock, packedVq: packed } });
      await vuser.start();
      await vhost.waitForText(/virtio is now ready for processing/);
      await vhost.waitForRx(1);
      await vuser.waitForRx(1);
      await vhost.waitForSamples(3);
      const front = await vuser.stop();
      const back = await vhost.stop();
      for (const [who, r] of [['virtio-user', front], ['vhost', back]] as const) {
        const port0 = r.final.find((s) => s.port === 0)!;
        assert.ok(port0.rxPackets > 0 && port0.txPackets > 0, `${who} received and sent packets`);
        note(t, `${who} Rx-pps`, spread(r.samples.filter((s) => s.rxPps > 0).map((s) => s.rxPps)));
      }
      const m = msgs(events);
      const feats = m.filter((x) => x.name === 'SET_FEATURES').pop()!;
      assert.equal(((feats.payload as { features: bigint }).features >> 34n) & 1n, packed ? 1n : 0n, `RING_PACKED ${packed ? '' : 'not '}negotiated`);
      assert.equal(m.find((x) => x.name === 'SET_MEM_TABLE' && !x.reply)?.fds, 1);
      assert.equal(m.filter((x) => x.name === 'SET_VRING_KICK').length, 2);
      assert.equal(m.flatMap((x) => x.problems).filter((p) => p.severity === 'error').length, 0, 'no decode errors');
    });
  });
}

test('(e) back-end killed mid-session: the proxy reports it, stays up, and the session re-forms when it returns', GUARD, async (t) => {
  requireBinary('qemu-system-x86_64');
  requireBinary('qemu-storage-daemon');
  const peers = usePeers(t);
  await withPeerLogs(peers, async () => {
    const dir = peers.tmpDir('px-rc');
    const image = createRawImage(join(dir, 'disk.img'), 16);
    const qsd = peers.qsd({ image, socket: join(dir, 'qsd.sock') });
    await qsd.start();
    const proxySock = join(dir, 'proxy.sock');
    const { events, ready } = startProxy(t, { frontend: { mode: 'listen', path: proxySock }, backend: { mode: 'connect', path: qsd.socket } });
    await ready;
    const guest = peers.qemu({ name: 'qemu-blk-reconnect', blk: [{ socket: proxySock, reconnect: 1 }] });
    await guest.start();
    await guest.waitReady();
    await waitDisk(guest);
    await writeAndReadBack(guest, 10, `before-${randomAlnum(20)}`);
    await qsd.kill();
    const end = await until(() => events.find((e) => e.kind === 'session' && e.event === 'end'), 'session end after the back-end died');
    assert.ok(end.kind === 'session');
    assert.match(end.reason!, /backend closed/);
    await qsd.restart(true);
    await until(() => events.filter((e) => e.kind === 'session' && e.event === 'start').length >= 2, 'a second session through the same proxy');
    const after = `after-${randomAlnum(20)}`;
    await writeAndReadBack(guest, 11, after);
    assert.deepEqual(await guest.poweroff(), { code: 0, signal: null });
    assert.equal(readSectors(image, 11).subarray(0, after.length).toString(), after, 'the write after reconnection reached the image');
    const sessions = events.filter((e) => e.kind === 'session' && e.event === 'start').length;
    note(t, 'sessions through the proxy', sessions);
    note(t, 'reasons', events.flatMap((e) => (e.kind === 'session' && e.event === 'end' ? [e.reason] : [])));
    const second = msgs(events).filter((m) => m.session === 2);
    assert.ok(second.find((m) => m.name === 'ADD_MEM_REG'), 'the re-formed session re-sent the memory table');
  });
});
