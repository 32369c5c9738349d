// Integration: vring decoding and notifier interposition through the proxy (CLI --rings/--notifiers) on real peers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRawImage, readSectors, requireBinary, requireTestpmd, requireVirtiofsd } from '../../core/peers';
import { note, pingingNetGuest, randomAlnum, usePeers, withPeerLogs } from '../helpers/peers';
import { runCli, type CliRun, type JsonLine } from '../helpers/cliProxy';

const GUARD = { timeout: 240_000 };

const chainsOf = (cli: CliRun, vring?: number): JsonLine[] =>
  cli.of('ring').filter((r) => vring === undefined || r.vring === vring).flatMap((r) => r.chains);

async function check<T>(cli: CliRun, f: () => Promise<T>): Promise<T> {
  try { return await f(); } catch (e) { (e as Error).message += `\n${cli.log()}`; throw e; }
}

test('blk (exact capture at kick/call): OUT chains for exactly the written sectors carry the written bytes, then IN chains, status OK', GUARD, async (t) => {
  requireBinary('qemu-system-x86_64');
  requireBinary('qemu-storage-daemon');
  const peers = usePeers(t);
  const dir = peers.tmpDir('rings-blk');
  const image = createRawImage(join(dir, 'disk.img'), 64);
  const qsd = peers.qsd({ image, socket: join(dir, 'qsd.sock') });
  await qsd.start();
  const proxySock = join(dir, 'proxy.sock');
  const cli = runCli(t, ['proxy', '--frontend', proxySock, '--backend', qsd.socket, '--json', '--rings', '--notifiers']);
  await withPeerLogs(peers, () => check(cli, async () => {
    await cli.waitFor((c) => c.of('connection').find((l) => l.event === 'listening'), 'listening');
    const guest = peers.qemu({ name: 'qemu-rings-blk', blk: [{ socket: proxySock }] });
    await guest.start();
    await guest.waitReady();
    await guest.check('i=0; while ! [ -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; [ -b /dev/vda ]', { timeoutMs: 60_000 });
    const writes = [3000, 9000].map((sector) => ({ sector, marker: `VLRING${randomAlnum(10)}` }));
    for (const w of writes) {
      await guest.check(`printf '%s' '${w.marker}' | dd of=/dev/vda bs=512 seek=${w.sector} count=1 conv=sync oflag=direct 2>/dev/null`, { timeoutMs: 60_000 });
    }
    for (const w of writes) {
      const back = await guest.check(`dd if=/dev/vda bs=512 skip=${w.sector} count=1 iflag=direct 2>/dev/null | head -c ${w.marker.length}`, { timeoutMs: 60_000 });
      assert.equal(back, w.marker);
    }
    assert.deepEqual(await guest.poweroff(), { code: 0, signal: null });
    for (const w of writes) assert.equal(readSectors(image, w.sector).subarray(0, w.marker.length).toString(), w.marker);
    await cli.waitFor((c) => c.of('session').find((l) => l.event === 'end'), 'session end');
    await cli.interrupt();
    const rings = cli.of('ring').filter((r) => r.vring === 0);
    assert.ok(rings.length > 0 && rings.every((r) => r.source === 'kick' || r.source === 'call'), 'captured at notifications, not polled');
    const chains = chainsOf(cli, 0).filter((c) => c.device?.kind === 'blk');
    note(t, 'blk chains decoded', chains.length);
    assert.ok(chains.every((c) => !c.error), 'every chain walked while its buffers were valid');
    const outs = chains.filter((c) => c.device.type === 'OUT');
    assert.deepEqual([...new Set(outs.map((c) => Number(BigInt(c.device.sector))))].sort((a, b) => a - b), writes.map((w) => w.sector),
      'OUT requests for exactly the written sectors');
    for (const w of writes) {
      const out = outs.find((c) => BigInt(c.device.sector) === BigInt(w.sector) && c.state === 'used');
      assert.ok(out, `a completed OUT at sector ${w.sector}`);
      assert.equal(out.device.status, 'OK');
      assert.ok(out.device.len >= 512 && out.device.len % 512 === 0, `data length ${out.device.len}`);
      assert.equal(Buffer.from(out.device.preview.replace(/[^0-9a-f]/g, ''), 'hex').toString(), w.marker.slice(0, 16), 'the OUT chain carries the written bytes');
      const desc = out.descriptors;
      assert.equal(desc[0].write, false, 'header is device-readable');
      assert.equal(desc[desc.length - 1].write, true, 'status byte is device-writable');
      const outIdx = chains.indexOf(out);
      const inn = chains.slice(outIdx + 1).find((c) => c.device.type === 'IN' && BigInt(c.device.sector) === BigInt(w.sector) && c.state === 'used');
      assert.ok(inn, `a completed IN at sector ${w.sector} after the write`);
      assert.equal(inn.device.status, 'OK');
      assert.equal(Buffer.from(inn.device.preview.replace(/[^0-9a-f]/g, ''), 'hex').toString(), w.marker.slice(0, 16), 'the IN chain returns the written bytes');
    }
  }));
});

test('net: ARP and ICMP frames decoded on the TX ring, the echoed frames on the RX ring (QEMU <-> proxy <-> testpmd)', GUARD, async (t) => {
  requireBinary('qemu-system-x86_64');
  requireTestpmd();
  const peers = usePeers(t);
  const dir = peers.tmpDir('rings-net');
  const tpSock = join(dir, 'tp.sock'), proxySock = join(dir, 'proxy.sock');
  const tp = peers.testpmd({ name: 'testpmd-vhost', vdev: { kind: 'vhost', iface: tpSock } });
  await tp.start();
  // Polled, so a TX descriptor the guest reuses before the next poll shows the newer frame (marked recycled). The
  // default CPU budget (2% of a core) stretches polls to tens of ms under TCG, long enough for the IPv6 chatter after
  // link-up to overwrite an ARP request; this test is about decoding, so it polls at the full 1000 Hz.
  const cli = runCli(t, ['proxy', '--frontend', proxySock, '--backend', tpSock, '--json', '--rings', '--poll-hz', '1000', '--ring-cpu', '100']);
  await withPeerLogs(peers, () => check(cli, async () => {
    await cli.waitFor((c) => c.of('connection').find((l) => l.event === 'listening'), 'listening');
    const guest = await pingingNetGuest(peers, { name: 'qemu-rings-net', socket: proxySock });
    await cli.waitFor(() => chainsOf(cli, 0).some((c) => /ICMP echo request/.test(c.device?.summary ?? '')), 'echoed ICMP on the RX ring', 20_000);
    assert.deepEqual(await guest.poweroff(), { code: 0, signal: null });
    await tp.stop();
    await cli.interrupt();
    const tx = chainsOf(cli, 1).filter((c) => c.device?.kind === 'net');
    const rx = chainsOf(cli, 0).filter((c) => c.device?.kind === 'net' && c.state === 'used');
    note(t, 'tx summaries', [...new Set(tx.map((c) => c.device.summary))].slice(0, 6));
    note(t, 'rx summaries', [...new Set(rx.map((c) => c.device.summary))].slice(0, 6));
    assert.ok(tx.some((c) => /ARP who-has 10\.0\.0\.1 tell 10\.0\.0\.2/.test(c.device.summary)), 'ARP request decoded on TX');
    assert.ok(tx.some((c) => /10\.0\.0\.2 > 10\.0\.0\.3 ICMP echo request/.test(c.device.summary)), 'ICMP echo request decoded on TX');
    assert.ok(rx.some((c) => /ARP who-has 10\.0\.0\.1 tell 10\.0\.0\.2/.test(c.device.summary)), 'echoed ARP decoded on RX');
    assert.ok(rx.some((c) => /10\.0\.0\.2 > 10\.0\.0\.3 ICMP echo request/.test(c.device.summary)), 'echoed ICMP decoded on RX');
    for (const c of [...tx, ...rx]) assert.ok(c.device.dir === (tx.includes(c) ? 'tx' : 'rx'));
  }));
});

test('net behind a virtual IOMMU (ACCESS_PLATFORM): the IOTLB is followed from IOTLB_MSG, and TX frames (ICMP echo requests) are decoded through IOVAs (QEMU intel-iommu <-> proxy <-> testpmd iommu-support=1)', GUARD, async (t) => {
  requireBinary('qemu-system-x86_64');
  requireTestpmd();
  const peers = usePeers(t);
  const dir = peers.tmpDir('rings-iommu');
  const tpSock = join(dir, 'tp.sock'), proxySock = join(dir, 'proxy.sock');
  const tp = peers.testpmd({ name: 'testpmd-vhost-iommu', vdev: { kind: 'vhost', iface: tpSock, extra: 'iommu-support=1' } });
  await tp.start();
  const cli = runCli(t, ['proxy', '--frontend', proxySock, '--backend', tpSock, '--json', '--rings', '--poll-hz', '1000', '--ring-cpu', '100']);
  await withPeerLogs(peers, () => check(cli, async () => {
    await cli.waitFor((c) => c.of('connection').find((l) => l.event === 'listening'), 'listening');
    const guest = await pingingNetGuest(peers, { name: 'qemu-rings-iommu', socket: proxySock, iommu: true, icmp: 5 });
    await cli.waitFor(() => chainsOf(cli, 1).some((c) => /ICMP echo request/.test(c.device?.summary ?? '')), 'ICMP echo request on the TX ring', 20_000);
    assert.deepEqual(await guest.poweroff(), { code: 0, signal: null });
    await tp.stop();
    await cli.interrupt();
    const feats = cli.messages().filter((m) => m.name === 'SET_FEATURES').pop()!;
    assert.ok(feats.payload.featureNames.includes('ACCESS_PLATFORM'), 'the device sits behind the IOMMU');
    const updates = cli.of('state').filter((l) => l.what === 'iotlb' && l.op === 'UPDATE');
    note(t, 'IOTLB updates / invalidations', [updates.length, cli.of('state').filter((l) => l.what === 'iotlb' && l.op === 'INVALIDATE').length]);
    assert.ok(updates.length > 0, 'IOTLB updates tracked');
    assert.ok(cli.messages().some((m) => m.name === 'BACKEND_IOTLB_MSG' && m.payload.typeName === 'MISS'), 'the back-end asked for translations on its channel');
    // SET_VRING_ADDR carries IOVAs: the TX ring's descriptor table is mapped by an UPDATE.
    const addr = cli.messages().filter((m) => m.name === 'SET_VRING_ADDR' && m.payload.index === 1).pop()!;
    assert.ok(updates.some((u) => BigInt(u.iova) <= BigInt(addr.payload.desc) && BigInt(addr.payload.desc) < BigInt(u.iova) + BigInt(u.size)), 'the TX ring address is an IOVA the IOTLB maps');
    const tx = chainsOf(cli, 1).filter((c) => c.device?.kind === 'net');
    note(t, 'tx summaries', [...new Set(tx.map((c) => c.device.summary))].slice(0, 6));
    // Polled: the observer applies an IOTLB change after the relay has passed it on, so a poll in between can read
    // an IOVA the guest has just unmapped and reused through its old page (see the README). Each frame is therefore
    // not guaranteed; the ICMP echo requests (five of them) are.
    note(t, 'ARP request decoded', tx.some((c) => /ARP who-has 10\.0\.0\.1 tell 10\.0\.0\.2/.test(c.device.summary)));
    assert.ok(tx.some((c) => /10\.0\.0\.2 > 10\.0\.0\.3 ICMP echo request/.test(c.device.summary)), 'ICMP echo request decoded through the IOTLB');
    assert.ok(cli.of('ring').every((r) => r.errors.every((e: string) => !/not supported/.test(e))), 'no "IOTLB not supported" errors');
    const state = cli.of('summary')[0].sessions[0].state;
    assert.ok(Array.isArray(state.iotlb), 'the session state lists its IOTLB');
  }));
});

test('virtio-fs (exact capture, device recognised from the FUSE headers): INIT, LOOKUP, READ, CREATE, WRITE and an ENOENT decoded with their replies (QEMU <-> proxy <-> virtiofsd)', GUARD, async (t) => {
  requireBinary('qemu-system-x86_64');
  requireVirtiofsd();
  const peers = usePeers(t);
  const dir = peers.tmpDir('rings-fs');
  const shared = join(dir, 'share');
  mkdirSync(shared);
  const content = `VLFSREAD${randomAlnum(12)}\n`;
  writeFileSync(join(shared, 'hello.txt'), content);
  const written = `VLFSWRITE${randomAlnum(12)}`;
  const fsd = peers.virtiofsd({ shared, socket: join(dir, 'fs.sock') });
  await fsd.start();
  const proxySock = join(dir, 'proxy.sock');
  const cli = runCli(t, ['proxy', '--frontend', proxySock, '--backend', fsd.socket, '--json', '--rings', '--notifiers']);
  await withPeerLogs(peers, () => check(cli, async () => {
    await cli.waitFor((c) => c.of('connection').find((l) => l.event === 'listening'), 'listening');
    const guest = peers.qemu({ name: 'qemu-rings-fs', fs: [{ socket: proxySock, tag: 'vlfs' }] });
    await guest.start();
    await guest.waitReady();
    assert.deepEqual(guest.moduleFailures, [], 'the guest kernel has fuse and virtiofs');
    await guest.check('mkdir -p /mnt/vl && mount -t virtiofs vlfs /mnt/vl', { timeoutMs: 60_000 });
    assert.equal(await guest.check('cat /mnt/vl/hello.txt', { timeoutMs: 30_000 }), content.trimEnd());
    const missing = await guest.run('cat /mnt/vl/no-such-file', { timeoutMs: 30_000 });
    assert.notEqual(missing.rc, 0);
    await guest.check(`printf '%s' '${written}' > /mnt/vl/out.txt && sync && umount /mnt/vl`, { timeoutMs: 30_000 });
    assert.deepEqual(await guest.poweroff(), { code: 0, signal: null });
    assert.equal(readFileSync(join(shared, 'out.txt'), 'utf8'), written, 'the guest wrote through the proxy');
    await cli.waitFor((c) => c.of('session').find((l) => l.event === 'end'), 'session end');
    await cli.interrupt();
    const fs = chainsOf(cli).filter((c) => c.device?.kind === 'fs');
    note(t, 'fs chains decoded', fs.length);
    note(t, 'summaries', [...new Set(fs.filter((c) => c.state === 'used').map((c) => c.device.summary))].slice(0, 12));
    assert.ok(cli.of('ring').every((r) => r.source === 'kick' || r.source === 'call'), 'captured at notifications');
    const used = fs.filter((c) => c.state === 'used');
    for (const c of used) assert.equal(c.device.problems, undefined, `${c.device.summary}: ${c.device.problems}`);
    const done = (op: string, f: (c: JsonLine) => boolean = () => true): JsonLine => {
      const c = used.find((x) => x.device.op === op && f(x));
      assert.ok(c, `a completed ${op} (ops seen: ${[...new Set(used.map((x) => x.device.op))].join(' ')})`);
      return c;
    };
    const init = done('INIT');
    assert.equal(Number(init.device.args.major), 7);
    assert.equal(init.device.reply.error, 0);
    assert.equal(Number(init.device.reply.result.major), 7);
    const lookup = done('LOOKUP', (c) => c.device.names?.[0] === 'hello.txt');
    assert.equal(lookup.device.reply.error, 0);
    assert.equal(Number(BigInt(lookup.device.reply.result.size)), content.length, 'LOOKUP returns the file size');
    const nodeid = BigInt(lookup.device.reply.result.nodeid);
    const read = done('READ', (c) => BigInt(c.device.nodeid) === nodeid);
    assert.equal(read.device.reply.dataLen, content.length);
    assert.equal(Buffer.from(read.device.reply.preview.replace(/[^0-9a-f]/g, ''), 'hex').toString(), content.slice(0, 16), 'READ returns the file bytes');
    const enoent = done('LOOKUP', (c) => c.device.names?.[0] === 'no-such-file');
    assert.equal(enoent.device.reply.errno, 'ENOENT');
    assert.match(enoent.device.summary, /LOOKUP unique=\d+ nodeid=1 "no-such-file" → ENOENT/);
    done('CREATE', (c) => c.device.names?.[0] === 'out.txt' && c.device.reply.error === 0);
    const write = done('WRITE');
    assert.equal(Number(write.device.args.size), written.length);
    assert.equal(Number(write.device.reply.result.written), written.length);
    assert.equal(Buffer.from(write.device.preview.replace(/[^0-9a-f]/g, ''), 'hex').toString(), written.slice(0, 16), 'the WRITE chain carries the written bytes');
    for (const c of used) assert.equal(BigInt(c.device.reply?.unique ?? c.device.unique), BigInt(c.device.unique));
    assert.equal(cli.of('summary')[0].sessions[0].state.device, 'fs', 'the session knows it is virtio-fs from its rings');
  }));
});

for (const packed of [false, true]) {
  test(`virtio-user <-> proxy <-> testpmd, ${packed ? 'packed' : 'split'} ring: chains decoded while traffic flows`, GUARD, async (t) => {
    requireTestpmd();
    const peers = usePeers(t);
    const dir = peers.tmpDir('rings-pmd');
    const vhostSock = join(dir, 'vhost.sock'), proxySock = join(dir, 'proxy.sock');
    const vhost = peers.testpmd({ name: 'testpmd-vhost', vdev: { kind: 'vhost', iface: vhostSock }, mainLcore: 1 });
    await vhost.start();
    const cli = runCli(t, ['proxy', '--frontend', proxySock, '--backend', vhostSock, '--json', '--rings', '--poll-hz', '50', '--device', 'net']);
    await withPeerLogs(peers, () => check(cli, async () => {
      await cli.waitFor((c) => c.of('connection').find((l) => l.event === 'listening'), 'listening');
      const vuser = peers.testpmd({ name: 'testpmd-virtio-user', mainLcore: 0, txFirst: true, vdev: { kind: 'virtio-user', path: proxySock, packedVq: packed } });
      await vuser.start();
      await vhost.waitForRx(1);
      await cli.waitFor(() => chainsOf(cli).filter((c) => c.device?.kind === 'net').length > 200 && chainsOf(cli, 1).length > 0 && chainsOf(cli, 0).length > 0, 'chains on both rings', 60_000);
      const back = await vhost.stop();
      await vuser.stop();
      await cli.interrupt();
      assert.ok(back.final.find((s) => s.port === 0)!.rxPackets > 0);
      const net = chainsOf(cli).filter((c) => c.device?.kind === 'net');
      note(t, 'net chains decoded', net.length);
      note(t, 'summaries', [...new Set(net.map((c) => c.device.summary))].slice(0, 4));
      assert.ok(net.every((c) => typeof c.device.summary === 'string' && c.device.summary.length > 0));
      assert.ok(net.some((c) => c.descriptors.length > 0 && c.descriptors.every((d: JsonLine) => /^0x[0-9a-f]+$/.test(d.addr))), 'descriptors with addresses');
      const feats = cli.messages().filter((m) => m.name === 'SET_FEATURES').pop()!;
      assert.equal(feats.payload.featureNames.includes('RING_PACKED'), packed);
    }));
  });
}

test('notifier interposition with a QEMU guest: kicks and calls counted per vring, guest I/O completes', GUARD, async (t) => {
  requireBinary('qemu-system-x86_64');
  requireBinary('qemu-storage-daemon');
  const peers = usePeers(t);
  const dir = peers.tmpDir('rings-notify');
  const image = createRawImage(join(dir, 'disk.img'), 64);
  const qsd = peers.qsd({ image, socket: join(dir, 'qsd.sock') });
  await qsd.start();
  const proxySock = join(dir, 'proxy.sock');
  const cli = runCli(t, ['proxy', '--frontend', proxySock, '--backend', qsd.socket, '--json', '--notifiers', '--notify-interval', '50']);
  await withPeerLogs(peers, () => check(cli, async () => {
    await cli.waitFor((c) => c.of('connection').find((l) => l.event === 'listening'), 'listening');
    const guest = peers.qemu({ name: 'qemu-notify', blk: [{ socket: proxySock }] });
    await guest.start();
    await guest.waitReady();
    await guest.check('i=0; while ! [ -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; [ -b /dev/vda ]', { timeoutMs: 60_000 });
    const marker = `VLNOTIFY${randomAlnum(12)}`;
    await guest.check(`printf '%s' '${marker}' | dd of=/dev/vda bs=512 seek=500 count=1 conv=sync oflag=direct 2>/dev/null`, { timeoutMs: 60_000 });
    await guest.check('dd if=/dev/vda of=/dev/null bs=4096 count=256 iflag=direct 2>/dev/null', { timeoutMs: 60_000 });
    assert.deepEqual(await guest.poweroff(), { code: 0, signal: null });
    assert.equal(readSectors(image, 500).subarray(0, marker.length).toString(), marker, 'guest I/O completed through interposed notifiers');
    await cli.waitFor((c) => c.of('session').find((l) => l.event === 'end'), 'session end');
    await cli.interrupt();
    const n = cli.of('notify');
    const last = (what: string) => n.filter((x) => x.vring === 0 && x.what === what).pop();
    const kicks = last('kick'), calls = last('call');
    note(t, 'kick', kicks);
    note(t, 'call', calls);
    assert.ok(kicks && kicks.count >= 257, `at least one kick per request (${kicks?.count})`);
    assert.ok(calls && calls.count >= 1, 'calls counted');
    assert.ok(kicks.signals <= kicks.count && kicks.coalesced === kicks.count - kicks.signals);
    const subs = cli.messages().filter((m) => m.substituted?.some((s: string) => /eventfd/.test(s)));
    assert.ok(subs.some((m) => m.name === 'SET_VRING_KICK') && subs.some((m) => m.name === 'SET_VRING_CALL'));
  }));
});
