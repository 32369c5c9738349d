// Integration: proves the real-peer harness over DIRECT connections (QEMU, qemu-storage-daemon, dpdk-testpmd; no proxy).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';
import {
  createRawImage, dpdkRuntimeDir, ensureGuestImage, GUEST_MODULES, isListening, liveProcessGroups, makeTempDir,
  readSectors, requireBinary, requireTestpmd, requireVirtiofsd, type QemuGuest, type Testpmd,
} from '../../core/peers';
import { note, randomAlnum, spread, stopwatch, usePeers, withPeerLogs } from '../helpers/peers';

/** Hang guard for a whole test (a TCG guest needs ~6-12 s to reach its virtio drivers on a quiet machine). */
const GUARD = { timeout: 180_000 };
const HOST_MAC = '52:54:00:00:00:01';
const GUEST_MAC = '52:54:00:12:34:56';

/** Wait in the guest (up to ~20 s) for a path to exist; fails the command otherwise. */
function waitPath(test: string, path: string): string {
  return `i=0; while ! [ ${test} ${path} ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; [ ${test} ${path} ]`;
}

test('guest image: built once per key, then served from the cache', GUARD, () => {
  requireBinary('busybox');
  requireBinary('modinfo');
  const cacheDir = makeTempDir('cache');
  try {
    const first = ensureGuestImage({ cacheDir });
    const second = ensureGuestImage({ cacheDir });
    assert.equal(first.cached, false);
    assert.equal(second.cached, true);
    assert.equal(second.initrd, first.initrd);
    assert.ok(existsSync(first.kernel), first.kernel);
    for (const m of GUEST_MODULES) assert.ok(first.modules.includes(m), `module ${m} packed`);
    assert.deepEqual(readdirSync(cacheDir).filter((f) => f.includes('.tmp-')), [], 'no temp files left behind');
    assert.match(first.initrd, new RegExp(`initramfs-${first.kernelVersion}-[0-9a-f]{16}\\.cpio\\.gz$`));
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test('concurrent guest image builds in separate processes agree and leave one intact image', GUARD, async () => {
  requireBinary('busybox');
  requireBinary('modinfo');
  const cacheDir = makeTempDir('cache');
  try {
    const guestJs = join(__dirname, '..', '..', 'core', 'peers', 'guest.js');
    const script = `process.stdout.write(JSON.stringify(require(${JSON.stringify(guestJs)}).ensureGuestImage({ cacheDir: ${JSON.stringify(cacheDir)} })))`;
    const runs = await Promise.all([1, 2, 3].map(() => promisify(execFile)(process.execPath, ['-e', script])));
    const images = runs.map((r) => JSON.parse(r.stdout) as { initrd: string });
    assert.equal(new Set(images.map((i) => i.initrd)).size, 1, 'all builders chose the same cache key');
    assert.deepEqual(readdirSync(cacheDir), [images[0].initrd.split('/').pop()], 'one image, no temp files');
    const cpio = gunzipSync(readFileSync(images[0].initrd));
    assert.equal(cpio.subarray(0, 6).toString(), '070701', 'newc cpio archive');
    for (const name of ['init', 'bin/busybox', 'dev/console', 'lib/modules/virtio_net.ko', 'TRAILER!!!']) {
      assert.ok(cpio.includes(Buffer.from(name + '\0')), `archive holds ${name}`);
    }
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
  }
});

test('a missing peer binary fails loudly with the setup hint', () => {
  assert.throws(() => requireBinary('vl-no-such-peer'), /^Error: vl-no-such-peer not found: run scripts\/setup\.sh \(Debian package /);
  assert.throws(() => requireBinary('vl-no-such-peer'), (e: Error) => e.message === 'vl-no-such-peer not found: run scripts/setup.sh (Debian package unknown)');
  const saved = process.env.VHOST_LENS_VIRTIOFSD;
  process.env.VHOST_LENS_VIRTIOFSD = '/nonexistent/virtiofsd';
  try {
    assert.throws(() => requireVirtiofsd(), /^Error: virtiofsd not found: run scripts\/setup\.sh \(Debian package qemu-system-common/);
  } finally {
    if (saved === undefined) delete process.env.VHOST_LENS_VIRTIOFSD; else process.env.VHOST_LENS_VIRTIOFSD = saved;
  }
  requireVirtiofsd();
});

test('(a) QEMU vhost-user-blk <-> qemu-storage-daemon: guest writes sectors, reads them back, host sees them in the image', GUARD, async (t) => {
  requireBinary('qemu-system-x86_64');
  requireBinary('qemu-storage-daemon');
  const peers = usePeers(t);
  await withPeerLogs(peers, async () => {
    const dir = peers.tmpDir('blk');
    const image = createRawImage(join(dir, 'disk.img'), 64);
    const qsd = peers.qsd({ image, socket: join(dir, 'blk.sock') });
    await qsd.start();
    const guest = peers.qemu({ name: 'qemu-blk', blk: [{ socket: qsd.socket }] });
    const clock = stopwatch();
    await guest.start();
    await guest.waitReady();
    note(t, 'boot to guest shell (ms)', guest.bootMs);
    assert.deepEqual(guest.moduleFailures, []);
    await guest.check(waitPath('-b', '/dev/vda'));
    note(t, 'spawn to /dev/vda (ms)', clock.lap());
    assert.equal(await guest.check('cat /sys/block/vda/size'), String(64 * 2048), 'guest sees a 64 MiB disk');

    // Two 4 KiB regions at known sectors, each a distinct random pattern.
    const regions = [{ sector: 8 }, { sector: 100_000 }].map((r) => ({ ...r, data: randomAlnum(4096) }));
    const io = stopwatch();
    for (const [i, r] of regions.entries()) {
      await guest.check(`rm -f /tmp/p${i}`);
      for (let off = 0; off < r.data.length; off += 2048) await guest.check(`printf '%s' '${r.data.slice(off, off + 2048)}' >> /tmp/p${i}`);
      assert.equal(await guest.check(`wc -c < /tmp/p${i}`), '4096');
      await guest.check(`dd if=/tmp/p${i} of=/dev/vda bs=4096 seek=${r.sector / 8} count=1 oflag=direct conv=fsync 2>&1`);
    }
    await guest.check('sync; echo 3 > /proc/sys/vm/drop_caches');
    for (const [i, r] of regions.entries()) {
      const back = await guest.run(`dd if=/dev/vda of=/tmp/r${i} bs=4096 skip=${r.sector / 8} count=1 iflag=direct 2>/dev/null && cmp /tmp/p${i} /tmp/r${i}`);
      assert.equal(back.rc, 0, `guest read-back of sector ${r.sector} differs: ${back.output}`);
    }
    note(t, 'guest write + read-back of 2 x 4 KiB, O_DIRECT, over 14 console commands (ms)', io.lap());

    const exit = await guest.poweroff();
    assert.deepEqual(exit, { code: 0, signal: null }, 'QEMU exits cleanly on poweroff -f');
    note(t, 'QEMU wall time, spawn to exit (ms)', clock.lap());

    for (const r of regions) {
      assert.equal(readSectors(image, r.sector, 8).toString('latin1'), r.data, `host image bytes at sector ${r.sector}`);
    }
    assert.ok(readSectors(image, 0, 8).every((b) => b === 0), 'sectors 0-7 untouched');
    assert.ok(readSectors(image, 16, 8).every((b) => b === 0), 'sectors 16-23 untouched');
    assert.ok(qsd.running && isListening(qsd.socket), 'qemu-storage-daemon keeps listening after the front-end leaves');
  });
});

test('qemu-storage-daemon restarts on the same socket after SIGTERM and after SIGKILL', GUARD, async (t) => {
  requireBinary('qemu-storage-daemon');
  const peers = usePeers(t);
  await withPeerLogs(peers, async () => {
    const dir = peers.tmpDir('qsd');
    const qsd = peers.qsd({ image: createRawImage(join(dir, 'disk.img'), 8), socket: join(dir, 'blk.sock') });
    await qsd.start();
    const pid1 = qsd.pid;
    await qsd.restart();
    assert.ok(qsd.running && isListening(qsd.socket));
    assert.notEqual(qsd.pid, pid1);
    const killed = await qsd.kill();
    assert.equal(killed.signal, 'SIGKILL');
    assert.ok(existsSync(qsd.socket), 'a killed daemon leaves its socket file behind');
    assert.ok(!isListening(qsd.socket));
    await qsd.restart(true);
    assert.ok(qsd.running && isListening(qsd.socket));
    assert.equal(qsd.runs.length, 3);
  });
});

test('(e) QEMU vhost-user-blk reconnect=1 survives qemu-storage-daemon restarts (SIGTERM, then SIGKILL)', GUARD, async (t) => {
  requireBinary('qemu-system-x86_64');
  requireBinary('qemu-storage-daemon');
  const peers = usePeers(t);
  await withPeerLogs(peers, async () => {
    const dir = peers.tmpDir('blkrc');
    const image = createRawImage(join(dir, 'disk.img'), 16);
    const qsd = peers.qsd({ image, socket: join(dir, 'blk.sock') });
    await qsd.start();
    const guest = peers.qemu({ name: 'qemu-blk-reconnect', blk: [{ socket: qsd.socket, reconnect: 1 }] });
    await guest.start();
    await guest.waitReady();
    await guest.check(waitPath('-b', '/dev/vda'));
    const marks = ['before', 'after-sigterm', 'after-sigkill'].map((m) => `${m}-${randomAlnum(16)}`);
    const write = (i: number): Promise<string> =>
      guest.check(`printf '%s' '${marks[i]}' > /tmp/m${i} && dd if=/tmp/m${i} of=/dev/vda bs=512 seek=${i} count=1 conv=sync,fsync 2>&1`, { timeoutMs: 60_000 });
    await write(0);
    for (const [i, hard] of [[1, false], [2, true]] as const) {
      await qsd.restart(hard);
      const io = stopwatch();
      await write(i); // blocks in the guest until QEMU has reconnected and restored the ring
      note(t, `guest write after ${hard ? 'SIGKILL' : 'SIGTERM'} restart (ms)`, io.lap());
    }
    const readBack = await guest.check('echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=512 count=3 iflag=direct 2>/dev/null | tr -d "\\000"; echo');
    assert.equal(readBack, marks.join(''));
    assert.deepEqual(await guest.poweroff(), { code: 0, signal: null });
    marks.forEach((m, i) => assert.equal(readSectors(image, i).subarray(0, m.length).toString(), m));
    note(t, 'QEMU messages about the lost back-end', guest.proc.stderr.trim().split('\n'));
  });
});

interface PingReport { transmitted: number; received: number; guestRx: number; guestTx: number }

/** Configure eth0 with a static ARP entry for 10.0.0.1 and ping it; counts what came back. */
async function guestPing(guest: QemuGuest, count: number): Promise<PingReport> {
  await guest.check(waitPath('-e', '/sys/class/net/eth0'));
  await guest.check(`ip link set eth0 up && ip addr add 10.0.0.2/24 dev eth0 && arp -s 10.0.0.1 ${HOST_MAC}`);
  // Carrier comes up once the back-end reports the device ready (VIRTIO_NET_S_LINK_UP).
  await guest.check('i=0; while [ "$(cat /sys/class/net/eth0/carrier)" != 1 ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; cat /sys/class/net/eth0/carrier');
  const ping = await guest.run(`ping -c ${count} -i 0.2 -W 1 10.0.0.1`, { timeoutMs: 60_000 });
  const m = /(\d+) packets transmitted, (\d+) packets received/.exec(ping.output);
  assert.ok(m, `ping summary missing:\n${ping.output}`);
  const counters = (await guest.check('cat /sys/class/net/eth0/statistics/rx_packets /sys/class/net/eth0/statistics/tx_packets')).split('\n').map(Number);
  return { transmitted: Number(m[1]), received: Number(m[2]), guestRx: counters[0], guestTx: counters[1] };
}

async function netScenario(t: import('node:test').TestContext, qemuListens: boolean): Promise<void> {
  requireBinary('qemu-system-x86_64');
  requireTestpmd();
  const peers = usePeers(t);
  await withPeerLogs(peers, async () => {
    const dir = peers.tmpDir('net');
    const socket = join(dir, 'net.sock');
    const clock = stopwatch();
    let guest: QemuGuest;
    let tp: Testpmd;
    if (qemuListens) {
      guest = peers.qemu({ name: 'qemu-net-server', net: [{ socket, server: true, mac: GUEST_MAC }] });
      await guest.start();
      await guest.waitForServerSockets();
      note(t, 'QEMU listening (ms)', clock.lap());
      tp = peers.testpmd({ name: 'testpmd-vhost-client', vdev: { kind: 'vhost', iface: socket, client: true } });
      await tp.start();
    } else {
      tp = peers.testpmd({ name: 'testpmd-vhost', vdev: { kind: 'vhost', iface: socket } });
      await tp.start();
      note(t, 'testpmd listening (ms)', clock.lap());
      guest = peers.qemu({ name: 'qemu-net', net: [{ socket, mac: GUEST_MAC }] });
      await guest.start();
    }
    await guest.waitReady();
    note(t, 'boot to guest shell (ms)', guest.bootMs);
    assert.deepEqual(guest.moduleFailures, []);
    const ping = await guestPing(guest, 5);
    await tp.waitForText(/virtio is now ready for processing/);
    note(t, 'ping done (ms since first spawn)', clock.lap());
    const exit = await guest.poweroff();
    assert.deepEqual(exit, { code: 0, signal: null });
    const r = await tp.stop();
    assert.equal(r.exit.code, 0, 'testpmd exits 0 on SIGINT');
    const port0 = r.final.find((s) => s.port === 0);
    assert.ok(port0, 'testpmd printed its final forward statistics');
    note(t, 'guest ping', ping);
    note(t, 'testpmd final forward stats', port0);
    assert.ok(port0.rxPackets > 0, 'testpmd received frames from the guest');
    assert.ok(port0.rxPackets >= ping.transmitted, `every ICMP request reached testpmd (rx ${port0.rxPackets}, pings ${ping.transmitted})`);
    assert.ok(ping.guestTx >= ping.transmitted);
    assert.ok(!existsSync(dpdkRuntimeDir(tp.filePrefix)), 'DPDK runtime dir removed');
  });
}

test('(b) QEMU virtio-net <-> testpmd net_vhost: guest pings 10.0.0.1, testpmd receives the frames', GUARD, (t) => netScenario(t, false));

test('(d) QEMU listens (server=on) <-> testpmd net_vhost client=1 connects: guest pings, testpmd receives', GUARD, (t) => netScenario(t, true));

interface PairOptions { packed?: boolean; reverse?: boolean }

/** testpmd virtio-user (front-end, --tx-first) <-> testpmd net_vhost (back-end), io forwarding both ways. */
async function pmdPair(t: import('node:test').TestContext, o: PairOptions): Promise<void> {
  requireTestpmd();
  const peers = usePeers(t);
  await withPeerLogs(peers, async () => {
    const socket = join(peers.tmpDir('pmd'), 'vu.sock');
    // The forwarding lcores differ: vhost forwards on CPU 0, virtio-user on CPU 1.
    const vhost = peers.testpmd({ name: 'testpmd-vhost', vdev: { kind: 'vhost', iface: socket, client: o.reverse }, mainLcore: 1 });
    const vuser = peers.testpmd({
      name: 'testpmd-virtio-user', mainLcore: 0, txFirst: true,
      vdev: { kind: 'virtio-user', path: socket, packedVq: o.packed, server: o.reverse },
    });
    const clock = stopwatch();
    const [listener, connector] = o.reverse ? [vuser, vhost] : [vhost, vuser];
    await listener.start();
    await connector.start();
    await vhost.waitForText(/virtio is now ready for processing/);
    note(t, 'spawn to "virtio is now ready" (ms)', clock.lap());
    await vhost.waitForRx(1);
    await vuser.waitForRx(1);
    await vhost.waitForSamples(3);
    const front = await vuser.stop();
    const back = await vhost.stop();
    for (const [who, r] of [['virtio-user', front], ['vhost', back]] as const) {
      const port0 = r.final.find((s) => s.port === 0);
      assert.ok(port0, `${who}: final forward statistics printed`);
      assert.equal(r.exit.code, 0, `${who} exits 0 on SIGINT`);
      assert.ok(port0.rxPackets > 0 && port0.txPackets > 0, `${who} received and sent packets`);
      note(t, `${who} final`, port0);
      note(t, `${who} Rx-pps over busy samples`, spread(r.samples.filter((s) => s.rxPps > 0).map((s) => s.rxPps)));
    }
    for (const tp of [vhost, vuser]) assert.ok(!existsSync(dpdkRuntimeDir(tp.filePrefix)), 'DPDK runtime dir removed');
  });
}

test('(c) testpmd virtio-user <-> testpmd net_vhost, split ring: packets flow both ways', GUARD, (t) => pmdPair(t, {}));

test('(c) testpmd virtio-user <-> testpmd net_vhost, packed ring (packed_vq=1): packets flow both ways', GUARD, (t) => pmdPair(t, { packed: true }));

test('(c) testpmd virtio-user server=1 <-> testpmd net_vhost client=1: packets flow both ways', GUARD, (t) => pmdPair(t, { reverse: true }));

test('no peer process outlives its test', async () => {
  // PeerSet.cleanup() ran in each test's after hook; every process group must be gone.
  assert.deepEqual(liveProcessGroups(), []);
});
