// The bundled adapter between real peers (QEMU guest, qemu-storage-daemon), driven over DAP: breakpoints hold messages, stepping, variables, guest memory, disconnects, replay of a CLI capture, the built-in back-end.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { join } from 'node:path';
import type { DebugProtocol } from '@vscode/debugprotocol';
import { createRawImage, readSectors, requireBinary, requireTestpmd, type PeerSet, type QemuGuest } from '../../core/peers';
import { note, pingingNetGuest, randomAlnum, usePeers, withPeerLogs } from '../helpers/peers';
import { runCli } from '../helpers/cliProxy';
import { Dap, withAdapterLog } from './dapClient';
import { DEBUG_TYPE, type ChainDto, type TimelineEntry } from '../../common/dap';

const GUARD = { timeout: 420_000 };
const BOOT_MS = 240_000;

const value = (vars: DebugProtocol.Variable[], name: string): string => Dap.find(vars, name).value;

async function waitDisk(guest: QemuGuest): Promise<void> {
  await guest.check('i=0; while ! [ -b /dev/vda ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; [ -b /dev/vda ]', { timeoutMs: 120_000 });
}

async function blkPeers(t: TestContext, label: string, queues = 1): Promise<{ peers: PeerSet; dir: string; image: string; qsdSock: string; proxySock: string }> {
  requireBinary('qemu-system-x86_64');
  requireBinary('qemu-storage-daemon');
  const peers = usePeers(t);
  const dir = peers.tmpDir(label);
  const image = createRawImage(join(dir, 'disk.img'), 64);
  const qsd = peers.qsd({ image, socket: join(dir, 'qsd.sock'), numQueues: queues });
  await qsd.start();
  return { peers, dir, image, qsdSock: qsd.socket, proxySock: join(dir, 'proxy.sock') };
}

const attach = (frontend: string, backend: string, extra: Record<string, unknown> = {}) =>
  ({ type: DEBUG_TYPE, request: 'attach', name: 'attach', frontend: `listen:${frontend}`, backend: `connect:${backend}`, ...extra });

async function messageVars(d: Dap): Promise<DebugProtocol.Variable[]> { return d.scope('Message'); }

/** Both: peer logs and the adapter's console on failure. */
function logs<T>(peers: PeerSet, d: Dap, fn: () => Promise<T>): Promise<T> { return withPeerLogs(peers, () => withAdapterLog(d, fn)); }

test('attach (QEMU <-> adapter <-> qemu-storage-daemon): SET_VRING_KICK held at a breakpoint, Variables show index and fd, continue releases it, the guest finishes its I/O, readMemory returns the bytes it wrote', GUARD, async (t) => {
  const { peers, image, qsdSock, proxySock } = await blkPeers(t, 'dap-kick');
  const d = await Dap.start(t);
  await logs(peers, d, async () => {
    await d.begin('attach', attach(proxySock, qsdSock, { rings: true, notifiers: true }), { functionBreakpoints: [{ name: 'SET_VRING_KICK' }] });
    assert.equal(fs.statSync(proxySock).mode & 0o777, 0o600, 'listening socket is 0600');
    const guest = peers.qemu({ name: 'qemu-dap-kick', blk: [{ socket: proxySock }] });
    await guest.start();
    const s = await d.stopped(BOOT_MS);
    assert.equal(s.body.reason, 'function breakpoint');
    assert.equal(s.body.description, 'Breakpoint SET_VRING_KICK: SET_VRING_KICK (12) front-end → back-end');
    assert.equal(s.body.threadId, 1);
    const msg = await messageVars(d);
    assert.equal(value(msg, 'index'), '0');
    assert.equal(value(msg, 'fds'), '[eventfd]');
    const fdVars = await d.vars(Dap.find(msg, 'fds').variablesReference);
    assert.equal(fdVars[0].value, 'eventfd');
    assert.match(value(msg, 'status'), /^held: not relayed yet/);
    const heldSeq = Number(value(msg, 'seq'));
    // Held: the message has not crossed, and nothing after it either.
    await new Promise((r) => setTimeout(r, 500));
    const seen = (await d.custom('vhostLens/timeline', { kinds: ['message'], limit: 5000 })).entries.map((e) => e.message!.seq);
    assert.ok(seen.length > 0 && Math.max(...seen) < heldSeq, `no message at or after #${heldSeq} relayed while stopped (last ${Math.max(...seen)})`);
    const st = await d.custom('vhostLens/state', {});
    assert.equal(st.stopped?.held?.name, 'SET_VRING_KICK');
    assert.ok(st.memoryAvailable, 'the guest memory table arrived before the kick');
    const session = await d.scope('Session');
    const regions = await d.vars(Dap.find(session, 'memory regions').variablesReference);
    assert.match(regions[0].value, /^gpa 0x0 \+ 256M memfd/);
    assert.equal(regions[0].memoryReference, 'gpa:0x0');

    // Continue: it is relayed; later kicks run free; the guest boots and does I/O through the session.
    await d.setBreakpoints({ functionBreakpoints: [] });
    await d.dc.continueRequest({ threadId: 1 });
    await d.next('vhostLens/timeline', (e) => (e.body as { entries: TimelineEntry[] }).entries.some((x) => x.kind === 'message' && x.message!.seq === heldSeq));
    await guest.waitReady(BOOT_MS);
    await waitDisk(guest);
    const sector = 4096;
    const marker = `VL-DAP-${randomAlnum(40)}`;
    // Through the page cache: the written page stays in guest memory after the write-back, as long as the block
    // device stays open (its last close drops the cache), hence the holder in the background.
    await guest.check('sleep 100000 </dev/vda >/dev/null 2>&1 &');
    await guest.check(`printf '%s' '${marker}' | dd of=/dev/vda bs=4096 seek=${sector / 8} count=1 conv=sync,fsync 2>/dev/null`, { timeoutMs: 120_000 });
    assert.equal(readSectors(image, sector).subarray(0, marker.length).toString(), marker, 'the image holds what the guest wrote');

    // The OUT chain for that sector, from the ring events (captured at the kick), and its data descriptor's memory.
    const out = await (async () => {
      const end = Date.now() + 60_000;
      for (;;) {
        const chains = d.timeline().filter((e) => e.kind === 'ring').flatMap((e) => e.ring!.chains);
        const c = chains.find((x: ChainDto) => (x.device as { type?: string; sector?: string } | undefined)?.type === 'OUT' && BigInt((x.device as { sector: string }).sector) === BigInt(sector));
        if (c) return c;
        if (Date.now() > end) throw new Error(`no OUT chain for sector ${sector} in ${chains.length} ring chains`);
        await new Promise((r) => setTimeout(r, 50));
      }
    })();
    const data = out.descriptors.find((x) => !x.write && x.len >= 512)!;
    assert.ok(data?.memoryReference, 'the data buffer has a memory reference');
    const rm = await d.dc.customRequest('readMemory', { memoryReference: data.memoryReference, offset: 0, count: data.len }) as DebugProtocol.ReadMemoryResponse;
    const bytes = Buffer.from(rm.body!.data!, 'base64');
    assert.equal(rm.body!.address, data.addr);
    assert.equal(bytes.length, data.len);
    assert.equal(bytes.subarray(0, marker.length).toString(), marker, `readMemory at ${data.addr}: ${bytes.subarray(0, 64).toString('hex')} (chain ${JSON.stringify(out)})`);
    const onDisk = readSectors(image, sector, Math.ceil(data.len / 512)).subarray(0, data.len);
    const diff = bytes.findIndex((b, i) => b !== onDisk[i]);
    assert.equal(diff, -1, `readMemory returns exactly the bytes on the image (first difference at ${diff})`);
    // The same through the Debug Console.
    const mem = await d.evaluate(`mem ${data.addr} 32`);
    assert.ok(mem.result.includes(`|${marker.slice(0, 16)}|`), mem.result);
    assert.equal(mem.memoryReference, `gpa:${data.addr}`);
    // A read running past the end of guest RAM stops there.
    const edge = await d.dc.customRequest('readMemory', { memoryReference: 'gpa:0xfffff00', count: 512 }) as DebugProtocol.ReadMemoryResponse;
    assert.equal(Buffer.from(edge.body!.data!, 'base64').length, 256);
    assert.equal(edge.body!.unreadableBytes, 256);

    // Pause while the session is idle: stops at once; Vrings show the live ring; Notifiers count kicks.
    await d.dc.pauseRequest({ threadId: 1 });
    const p = await d.stopped();
    assert.equal(p.body.reason, 'pause');
    const vrings = await d.scope('Vrings');
    const v0 = await d.vars(Dap.find(vrings, 'vring 0').variablesReference);
    assert.match(value(v0, 'ring'), /^split, avail.idx \d+, used.idx \d+/);
    const notifiers = await d.scope('Notifiers');
    assert.ok(notifiers.some((v) => v.name === 'vring 0 kick' && /[1-9]\d* notification/.test(v.value)), notifiers.map((v) => `${v.name}=${v.value}`).join(', '));
    const snap = await d.custom('vhostLens/ringSnapshot', { vring: 0 });
    assert.equal(snap.layout, 'split');
    await d.dc.continueRequest({ threadId: 1 });

    assert.deepEqual(await guest.poweroff(), { code: 0, signal: null });
    await d.next('terminated', () => true, 120_000);
    assert.match(d.output(), /--- vhost-user session 1 ended: /);
    const groups = d.events.filter((e) => e.event === 'output' && (e as DebugProtocol.OutputEvent).body.group === 'start').map((e) => (e as DebugProtocol.OutputEvent).body.output.trim());
    for (const phase of ['negotiation', 'memory', 'vring setup', 'running', 'stop']) assert.ok(groups.includes(phase), `a "${phase}" group in the Debug Console (${groups.join(', ')})`);
    note(t, 'timeline entries', d.timeline().length);
  });
});

test('attach: a category filter stops on the first memory message; a conditional breakpoint stops only on the vring it names; `next` steps one message at a time; the front-end disconnecting while stopped ends the session cleanly', GUARD, async (t) => {
  const { peers, qsdSock, proxySock } = await blkPeers(t, 'dap-step', 2);
  const d = await Dap.start(t);
  await logs(peers, d, async () => {
    await d.begin('attach', attach(proxySock, qsdSock), { filters: ['memory'] });
    const guest = peers.qemu({ name: 'qemu-dap-step', blk: [{ socket: proxySock, numQueues: 2 }] });
    await guest.start();
    const s = await d.stopped(BOOT_MS);
    assert.equal(s.body.reason, 'exception');
    const first = (await d.custom('vhostLens/state', {})).stopped!.held!;
    assert.equal(first.category, 'memory');
    assert.match(s.body.description!, new RegExp(`^Memory message: ${first.name} \\(${first.code}\\) front-end → back-end`));
    const before = (await d.custom('vhostLens/timeline', { kinds: ['message'], limit: 5000 })).entries.map((e) => e.message!);
    assert.ok(before.length > 0 && before.every((m) => m.category !== 'memory'), 'no memory message crossed before the stop');
    note(t, 'first memory message', `#${first.seq} ${first.name}`);

    // Only vring 1: SET_VRING_* with index == 1.
    await d.setBreakpoints({ filters: [], functionBreakpoints: [{ name: 'SET_VRING_*', condition: 'index == 1' }] });
    const stops: string[] = [];
    for (let i = 0; i < 3; i++) {
      await d.dc.continueRequest({ threadId: 1 });
      const x = await d.stopped(BOOT_MS);
      assert.equal(x.body.reason, 'function breakpoint');
      const vars = await messageVars(d);
      assert.equal(value(vars, 'index'), '1', `stopped on vring 1 only: ${value(vars, 'message')}`);
      stops.push(value(vars, 'message'));
    }
    note(t, 'conditional stops', stops);
    const crossed = (await d.custom('vhostLens/timeline', { kinds: ['message'], limit: 5000 })).entries.map((e) => e.message!);
    assert.ok(crossed.some((m) => m.name.startsWith('SET_VRING_') && !m.reply && (m.payload as { index?: number }).index === 0),
      'vring 0 set-up messages crossed without stopping');

    // Step: one message per `next`, in order, each held.
    await d.setBreakpoints({ functionBreakpoints: [] });
    let seq = Number(value(await messageVars(d), 'seq'));
    for (let i = 0; i < 3; i++) {
      await d.dc.nextRequest({ threadId: 1 });
      const x = await d.stopped(BOOT_MS);
      assert.equal(x.body.reason, 'step');
      const next = Number(value(await messageVars(d), 'seq'));
      assert.equal(next, seq + 1, 'the following message');
      const frames = await d.frames(x.body.threadId);
      assert.match(frames[0].name, new RegExp(`^⏸ #${next} `), 'the held message is the top frame');
      seq = next;
    }

    // The front-end goes away while a message is held.
    await guest.kill();
    const ended = await d.next<DebugProtocol.OutputEvent>('output', (e) => /The vhost-user session ended while/.test(e.body.output), 60_000);
    assert.match(ended.body.output, new RegExp(`ended while \\S+ #${seq} was held: the frontend disconnected while \\S+ was held at a breakpoint\\. The held message was not delivered\\.`));
    await d.next('continued');
    await d.next('terminated', () => true, 60_000);
    const exited = new Promise<number | null>((r) => d.process.once('exit', (code) => r(code)));
    await d.dc.disconnectRequest({});
    assert.equal(await exited, 0, 'the adapter exits cleanly');
    assert.ok(!fs.existsSync(proxySock), 'the listening socket is removed');
  });
});

test('replay of a capture recorded by the CLI (vhost-lens proxy --capture) gives the same timeline', GUARD, async (t) => {
  const { peers, dir, qsdSock, proxySock } = await blkPeers(t, 'dap-cap');
  const capture = join(dir, 'session.vlcap');
  const cli = runCli(t, ['proxy', '--frontend', proxySock, '--backend', qsdSock, '--json', '--capture', capture]);
  await withPeerLogs(peers, async () => {
    try {
      await cli.waitFor((c) => c.of('connection').find((l) => l.event === 'listening'), 'proxy listening');
      const guest = peers.qemu({ name: 'qemu-dap-cap', blk: [{ socket: proxySock }] });
      await guest.start();
      await guest.waitReady(BOOT_MS);
      await waitDisk(guest);
      await guest.check(`printf '%s' 'VL-${randomAlnum(20)}' | dd of=/dev/vda bs=512 seek=100 count=1 conv=sync oflag=direct 2>/dev/null`, { timeoutMs: 120_000 });
      assert.deepEqual(await guest.poweroff(), { code: 0, signal: null });
      await cli.waitFor((c) => c.of('session').find((l) => l.event === 'end'), 'session end');
      assert.equal(await cli.interrupt(), 0);
    } catch (e) { (e as Error).message += `\n${cli.log()}`; throw e; }
  });
  const live = cli.messages();
  const d = await Dap.start(t);
  await withAdapterLog(d, async () => {
    await d.begin('launch', { type: DEBUG_TYPE, request: 'launch', name: 'replay', mode: 'replay', capture });
    await d.next('terminated');
    const page = await d.custom('vhostLens/timeline', { kinds: ['message'], limit: 5000 });
    note(t, 'messages', page.entries.length);
    assert.ok(page.entries.length > 20);
    assert.deepEqual(page.entries.map((e) => e.message), live, 'the same decoded messages as the live CLI session');
    const phases = page.entries.map((e) => e.phase).filter((p, i, a) => i === 0 || p !== a[i - 1]);
    assert.equal(phases[0], 'negotiation');
    assert.equal(phases.at(-1), 'stop');
    assert.ok(phases.includes('running'));
  });
});

test('launch mode backend: the built-in blk back-end serves QEMU through the adapter; a breakpoint holds SET_VRING_KICK; the guest writes the image', GUARD, async (t) => {
  requireBinary('qemu-system-x86_64');
  const peers = usePeers(t);
  const dir = peers.tmpDir('dap-be');
  const image = createRawImage(join(dir, 'disk.img'), 64);
  const sock = join(dir, 'be.sock');
  const d = await Dap.start(t);
  await logs(peers, d, async () => {
    await d.begin('launch', { type: DEBUG_TYPE, request: 'launch', name: 'backend', mode: 'backend', device: 'blk', socket: sock, image },
      { functionBreakpoints: [{ name: 'SET_VRING_KICK' }] });
    const guest = peers.qemu({ name: 'qemu-dap-be', blk: [{ socket: sock }] });
    await guest.start();
    const s = await d.stopped(BOOT_MS);
    assert.equal(s.body.description, 'Breakpoint SET_VRING_KICK: SET_VRING_KICK (12) front-end → back-end');
    assert.equal(value(await messageVars(d), 'fds'), '[eventfd]');
    assert.equal((await d.custom('vhostLens/state', {})).mode, 'backend');
    await d.setBreakpoints({ functionBreakpoints: [] });
    await d.dc.continueRequest({ threadId: 1 });
    await guest.waitReady(BOOT_MS);
    await waitDisk(guest);
    const marker = `VL-BE-${randomAlnum(30)}`;
    await guest.check(`printf '%s' '${marker}' | dd of=/dev/vda bs=512 seek=2048 count=1 conv=sync oflag=direct 2>/dev/null`, { timeoutMs: 120_000 });
    assert.deepEqual(await guest.poweroff(), { code: 0, signal: null });
    assert.equal(readSectors(image, 2048).subarray(0, marker.length).toString(), marker);
    await d.next('terminated', () => true, 120_000);
  });
});

test('attach behind a virtual IOMMU (QEMU intel-iommu <-> adapter <-> testpmd iommu-support=1): the state lists the IOTLB, descriptors carry iova: references, and readMemory on an IOVA returns the bytes of the front-end address it maps', GUARD, async (t) => {
  requireBinary('qemu-system-x86_64');
  requireTestpmd();
  const peers = usePeers(t);
  const dir = peers.tmpDir('dap-iommu');
  const tpSock = join(dir, 'tp.sock'), proxySock = join(dir, 'proxy.sock');
  const tp = peers.testpmd({ name: 'testpmd-vhost-iommu', vdev: { kind: 'vhost', iface: tpSock, extra: 'iommu-support=1' } });
  await tp.start();
  const d = await Dap.start(t);
  await logs(peers, d, async () => {
    await d.begin('attach', attach(proxySock, tpSock, { rings: true, pollHz: 1000, ringCpu: 100 }), {});
    const guest = await pingingNetGuest(peers, { name: 'qemu-dap-iommu', socket: proxySock, iommu: true });
    const ring = await d.next('vhostLens/timeline', (e) => (e.body as { entries: TimelineEntry[] }).entries.some((x) => x.kind === 'ring' && x.ring!.vring === 1 && x.ring!.chains.length > 0), 60_000);
    const tx = (ring.body as { entries: TimelineEntry[] }).entries.find((x) => x.kind === 'ring' && x.ring!.vring === 1 && x.ring!.chains.length > 0)!.ring!;
    assert.match(tx.chains[0].descriptors[0].memoryReference ?? '', /^iova:0x[0-9a-f]+$/, 'descriptor addresses are IOVAs');
    const st = await d.custom('vhostLens/state', {});
    const iotlb = st.state?.iotlb ?? [];
    note(t, 'IOTLB entries', iotlb.length);
    assert.ok(iotlb.length > 0, 'the state lists the IOTLB');
    const e = iotlb[iotlb.length - 1];
    assert.equal(e.memoryReference, `iova:${e.iova}`);
    const viaIova = await d.dc.customRequest('readMemory', { memoryReference: e.memoryReference, count: 64 }) as DebugProtocol.ReadMemoryResponse;
    const viaUva = await d.dc.customRequest('readMemory', { memoryReference: `uva:${e.uaddr}`, count: 64 }) as DebugProtocol.ReadMemoryResponse;
    assert.equal(viaIova.body?.unreadableBytes ?? 0, 0);
    assert.equal(viaIova.body?.data, viaUva.body?.data, 'an IOVA reads the front-end address its IOTLB entry maps');
    const unmapped = await d.dc.customRequest('readMemory', { memoryReference: 'iova:0x10', count: 16 }) as DebugProtocol.ReadMemoryResponse;
    assert.equal(unmapped.body?.unreadableBytes, 16, 'an IOVA the IOTLB does not map reads nothing');
    const session = await d.scope('Session');
    assert.match(Dap.find(session, 'IOTLB').value, /^\d+ entr(y|ies) \(IOVA to front-end address\)$/);
    assert.deepEqual(await guest.poweroff(), { code: 0, signal: null });
    await tp.stop();
    await d.next('terminated', () => true, 120_000).catch(() => undefined);
  });
});
