// `vhost-lens demo`: the embedded default session — a real QEMU guest attached through Vhost Lens, decoded, ending by itself.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { extraCommands, runEngine, UsageError, type CliIo, type Parsed } from './main';
import { Proxy } from '../proxy/proxy';
import { PeerSet, createRawImage, readSectors, requireBinary } from '../peers';

const stdio: CliIo = { out: (s) => process.stdout.write(s), err: (s) => process.stderr.write(s) };

export async function runDemo(p: Parsed, io: CliIo = stdio): Promise<number> {
  for (const b of ['qemu-system-x86_64', 'qemu-storage-daemon', 'busybox', 'modinfo']) {
    try { requireBinary(b); } catch (e) { throw new UsageError((e as Error).message); }
  }
  const json = p.flags.has('json');
  const say = (step: string, detail = ''): void => {
    if (json) io.out(`${JSON.stringify({ kind: 'demo', step, ...(detail ? { detail } : {}) })}\n`);
    else io.out(`### ${step}${detail ? `: ${detail}` : ''}\n`);
  };
  const peers = new PeerSet();
  const dir = peers.tmpDir('demo');
  try {
    const image = createRawImage(path.join(dir, 'disk.img'), 64);
    const qsd = peers.qsd({ image, socket: path.join(dir, 'qsd.sock') });
    say('starting qemu-storage-daemon', `vhost-user-blk back-end on ${qsd.socket}`);
    await qsd.start();
    const proxySock = path.join(dir, 'vhost-lens.sock');
    const notifiers = p.flags.has('notifiers');
    const proxy = new Proxy({
      frontend: { mode: 'listen', path: proxySock }, backend: { mode: 'connect', path: qsd.socket }, maxSessions: 1,
      capture: p.flags.get('capture') as string | undefined, notifiers, ringCapture: notifiers && p.flags.has('rings'),
    });
    const done = runEngine(proxy, p, io);
    await proxy.start();
    say('starting QEMU', `TCG guest, vhost-user-blk-pci on ${proxySock} (the proxy), guest RAM shared through a memfd`);
    const guest = peers.qemu({ name: 'demo-guest', blk: [{ socket: proxySock }] });
    await guest.start();
    await guest.waitReady();
    say('guest booted', `${guest.bootMs} ms`);
    await guest.check('i=0; while ! [ -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; [ -b /dev/vda ]', { timeoutMs: 60_000 });
    const marker = `hello from the guest through vhost-lens ${new Date().toISOString()}`;
    say('guest writes sector 2048', marker);
    await guest.check(`printf '%s' '${marker}' | dd of=/dev/vda bs=512 seek=2048 count=1 conv=sync oflag=direct 2>/dev/null`, { timeoutMs: 60_000 });
    const back = await guest.check(`dd if=/dev/vda bs=512 skip=2048 count=1 iflag=direct 2>/dev/null | head -c ${marker.length}`, { timeoutMs: 60_000 });
    say('guest reads it back', back);
    say('powering the guest off');
    await guest.poweroff();
    await done;
    const onDisk = readSectors(image, 2048).subarray(0, marker.length).toString();
    say('image check', onDisk === marker ? 'the host image holds what the guest wrote' : `MISMATCH: ${JSON.stringify(onDisk)}`);
    return onDisk === marker && back === marker ? 0 : 1;
  } finally {
    await peers.cleanup();
    if (fs.existsSync(dir)) fs.rmSync(dir, { recursive: true, force: true });
  }
}

extraCommands.demo = runDemo;
